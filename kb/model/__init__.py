"""Model backends behind one interface (base.Backend), chosen by name (settings.model)."""

from __future__ import annotations

from pathlib import Path

from kb.model.base import Answer, Backend, ContextPage, PageTensors

__all__ = ["Answer", "Backend", "ContextPage", "PageTensors", "load_backend"]

BACKENDS = ("reference", "deepseek-ocr2")


def load_backend(
    name: str, path: Path | None = None, device: str = "cpu", answer_threshold: float | None = None
) -> Backend:
    """Build the named backend once (it loads weights): ``path`` is a weights file or directory,
    None for the backend's default (the shipped weights of the reference model).
    ``answer_threshold``: the reference reader's "no answer" threshold, None for its file's."""
    if name == "reference":
        from kb.model.reference.backend import ReferenceBackend

        return ReferenceBackend(path, device=device, answer_threshold=answer_threshold)
    if name == "deepseek-ocr2":
        from kb.model.deepseek_ocr2 import DeepseekOcr2Backend

        if path is None:
            raise ValueError(
                "KB_MODEL=deepseek-ocr2 needs KB_MODEL_PATH: a local checkpoint directory "
                "(see docs/deepseek-ocr2.md); no weights are ever downloaded"
            )
        return DeepseekOcr2Backend.from_pretrained(path, device=device)
    raise ValueError(f"unknown model backend {name!r}; expected one of {', '.join(BACKENDS)}")
