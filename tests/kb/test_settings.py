from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kb.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_env_example() -> None:
    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.startswith("KB_")
    }
    fields = {f"KB_{name.upper()}" for name in Settings.model_fields}
    assert fields == documented


def test_defaults_are_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    s = Settings(data_dir=tmp_path / "d")
    assert s.port == 8000 and s.model == "reference" and not s.uses_s3
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'd' / 'catalog.sqlite3')}"


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KB_API_KEY", "")
    monkeypatch.setenv("KB_DATABASE_URL", "")
    s = Settings(data_dir=tmp_path)
    assert s.api_key is None and s.database_url is None


def test_generated_keys_are_kept_and_shared(tmp_path: Path) -> None:
    keys: list[str] = []
    threads = [
        threading.Thread(target=lambda: keys.append(Settings(data_dir=tmp_path).key("api")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) >= 24
    assert Settings(data_dir=tmp_path).key("api") == keys[0]
    assert Settings(data_dir=tmp_path).key("admin") != keys[0]
    assert (tmp_path / "api_key").stat().st_mode & 0o077 == 0


def test_production_refuses_placeholder_keys(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, env="production", api_key="changeme")
    with pytest.raises(ValueError, match="placeholder"):
        s.key("api")
