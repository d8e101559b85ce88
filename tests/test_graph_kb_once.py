"""One recommendation reads its knowledge base once (issue 16).

Retrieval, the shortlist and the SHAP facts all need the KB's runs and every fitted model is
cached by their content hash; reading (and hashing) the store once, in ``retrieve``, gives all
nodes one content and keeps a large KB's cost to one read. ``record`` reads nothing: it logs
what the state holds (the SHAP plots come from the numbers the ``evidence`` node computed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import metallmix
from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.tools import tracking
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.store import SQLiteKnowledgeBase


class CountingKB(SQLiteKnowledgeBase):
    """A store that counts how often its records are read."""

    reads = 0

    def iter_records(self) -> Iterator[RunRecord]:
        CountingKB.reads += 1
        return super().iter_records()


def test_a_recommendation_reads_the_kb_once(tmp_path: Path) -> None:
    kb = CountingKB(tmp_path / "kb.sqlite")
    kb.add(synthetic_records(5, 24, seed=7))
    mf = next(SQLiteKnowledgeBase(tmp_path / "kb.sqlite").iter_records()).meta_features
    CountingKB.reads = 0
    rec = metallmix.recommend(
        mf,
        llm=ScriptedLLM(["not json"]),  # rejected: the templated fallback answers
        kb=kb,
        compute="cpu",
        judge_with_llm=False,
        max_attempts=1,
        progress=False,
    )
    assert CountingKB.reads == 1
    assert rec.fallback and rec.mlflow_run_id
    # the record still holds the SHAP plots, drawn from the state without the KB
    client = tracking.client()
    shap = {a.path for a in client.list_artifacts(rec.mlflow_run_id, "shap")}
    assert shap == {f"shap/waterfall_{rec.candidate_id}.png", "shap/global_bar.png"}
    params = client.get_run(rec.mlflow_run_id).data.params
    assert params["llm"] == "scripted" and params["kb_hash"]


def test_a_served_run_given_plain_values_reads_the_kb_once(
    tmp_path: Path, scripted: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Studio sends the context as plain values: the first node that needs the KB opens and
    reads it from the ``kb`` path, and the later nodes find it on the run's context."""
    from metallmix.graphs import resources
    from metallmix.graphs.graph import build_graph

    path = tmp_path / "kb.sqlite"
    SQLiteKnowledgeBase(path).add(synthetic_records(5, 24, seed=7))
    mf = next(SQLiteKnowledgeBase(path).iter_records()).meta_features
    reads: list[str] = []
    real_of = resources.KBSnapshot.of

    def counting_of(kb: object) -> object:
        if not isinstance(kb, resources.KBSnapshot):  # a snapshot is returned as it is
            reads.append(str(getattr(kb, "location", kb)))
        return real_of(kb)  # type: ignore[arg-type]

    monkeypatch.setattr(resources.KBSnapshot, "of", counting_of)
    context = {"kb": str(path), "compute": "cpu", "track": False, "judge_with_llm": False}
    final = build_graph(internal_inputs=True).invoke(
        {"meta_features": mf, "max_attempts": 1}, context=context
    )
    assert final["recommendation"].model  # answered (the scripted model, or the fallback)
    assert reads == [str(path)]
