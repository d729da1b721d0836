"""The trainers' command lines, after nanoGPT's configurator: module-level defaults, then a
preset (``--config NAME``), then explicit flags (``--lr 3e-4``), each overriding the last."""

from __future__ import annotations

import argparse
from typing import Any


def parse_config(
    defaults: dict[str, Any],
    presets: dict[str, dict[str, Any]],
    argv: list[str] | None,
    description: str,
) -> dict[str, Any]:
    """Defaults, then the preset, then explicit flags; ``cfg["config"]`` names the preset."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="", help=f"preset: {', '.join(presets)}")
    for key, value in defaults.items():
        if key == "config":
            continue
        if isinstance(value, bool):
            parser.add_argument(f"--{key}", nargs="?", const=True, default=None,
                                type=lambda s: s.lower() in ("1", "true", "yes"))  # fmt: skip
        else:
            parser.add_argument(f"--{key}", type=type(value), default=None)
    args = parser.parse_args(argv)
    if args.config and args.config not in presets:
        parser.error(f"unknown --config {args.config!r}; expected one of {', '.join(presets)}")
    cfg = dict(defaults)
    cfg.update(presets.get(args.config, {}))
    cfg.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    cfg["config"] = args.config
    return cfg


def target_range(text: str, flag: str = "--target_chars") -> tuple[int, int] | None:
    """A "lo,hi" page-length flag (characters) -> (lo, hi); "" -> None (the data's own mix)."""
    if not text:
        return None
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"{flag}: 'lo,hi' in characters, not {text!r}") from None
    if not 50 <= lo <= hi:
        raise SystemExit(f"{flag}: need 50 <= lo <= hi, not {text!r}")
    return lo, hi
