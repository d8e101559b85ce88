"""Shared fixtures: every test runs with its own workspace, KB and MLflow store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cases import BAD_CHOICE

from metallmix import config
from metallmix.agents.runtime.fake import ScriptedLLM


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


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    """A small synthetic KB (4 datasets x 20 runs, seed 2) on disk."""
    from metallmix.benchmarks.synthetic import synthetic_records
    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    path = tmp_path / "kb.sqlite"
    SQLiteKnowledgeBase(path).add(synthetic_records(4, 20, seed=2))
    return path


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> ScriptedLLM:
    """Every model load returns one scripted LLM whose two answers the code checks reject,
    so a recommendation ends in the deterministic fallback on a real shortlist."""
    llm = ScriptedLLM([BAD_CHOICE, BAD_CHOICE])

    def fake_load(name: Any = None, **_: Any) -> ScriptedLLM:
        return llm

    monkeypatch.setattr("metallmix.agents.runtime.llm.load_llm", fake_load)
    return llm
