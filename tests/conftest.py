"""Shared fixtures: every test runs with its own workspace, KB and MLflow store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from metallmix import config


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Keep tests away from the user's ~/.metallmix and the repository's mlruns/."""
    home = tmp_path / "metallmix-home"
    monkeypatch.setenv("METALLMIX_HOME", str(home))
    monkeypatch.delenv("METALLMIX_KB", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield home


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with the reason when it is absent."""
    path = config.shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set METALLMIX_SHARED to its location)")
    return path
