"""regime_shortlist: the contract the agent relies on, on a small KB the test builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from metallmix.benchmarks.synthetic import LR_OPTIMUM, synthetic_records
from metallmix.errors import KnowledgeBaseError
from metallmix.tools.kb.snapshot import KBSnapshot
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.contracts import Shortlist
from metallmix.tools.meta.metalearner import MetaLearnerConfig, fit_or_load
from metallmix.tools.meta.retrieval import load_or_build
from metallmix.tools.meta.search_space import CPU_ZOO_SPACE
from metallmix.tools.meta.shortlist import (
    FACTS_PER_CANDIDATE,
    ShortlistOptions,
    diverse_top,
    kb_coverage,
    regime_shortlist,
    retrieve,
)

FAST = MetaLearnerConfig(n_estimators=60, max_depth=4)
SMALL = ShortlistOptions(n_samples=60, learner_config=FAST)


@pytest.fixture
def kb(tmp_path: Path) -> SQLiteKnowledgeBase:
    store = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    store.add(synthetic_records(5, 24, seed=7))
    return store


def test_shortlist_contract(kb: SQLiteKnowledgeBase) -> None:
    records = list(kb.iter_records())
    mf = records[0].meta_features
    options = ShortlistOptions(
        exclude_datasets=frozenset({"synth00"}),
        n_samples=120,
        learner_config=FAST,
        facts_per_candidate=FACTS_PER_CANDIDATE,
    )
    result = regime_shortlist(mf, kb, None, n=4, seed=1, options=options)
    assert isinstance(result, Shortlist)
    Shortlist.model_validate_json(result.model_dump_json())
    assert [c.candidate_id for c in result.candidates] == ["c1", "c2", "c3", "c4"]
    assert len({c.model for c in result.candidates}) == 4  # diverse: one per model first
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True)
    for c in result.candidates:
        assert CPU_ZOO_SPACE.contains(c.model, c.hyperparameters)
        assert 0 <= c.accuracy_low <= c.predicted_accuracy <= c.accuracy_high <= 1
        assert c.predicted_seconds is not None and c.predicted_seconds > 0
        assert c.origin == "sampled" or c.origin.startswith(("similar-run:", "portfolio:"))
        assert result.facts_for(c.candidate_id), f"no SHAP facts for {c.candidate_id}"
    assert all(f.candidate_id in {"c1", "c2", "c3", "c4"} for f in result.facts)
    # the held-out dataset is invisible to retrieval and to the candidates' origins
    assert result.similar_runs and all(r.dataset != "synth00" for r in result.similar_runs)
    assert not any("synth00" in c.origin for c in result.candidates)
    assert result.kb_hash and result.metalearner_version.startswith("xgb-")
    # planted effect: the top candidate's lr is near the optimum
    top_lr = result.candidates[0].hyperparameters.lr
    assert top_lr is not None and LR_OPTIMUM / 4 < top_lr < LR_OPTIMUM * 4


def test_shortlist_is_deterministic(kb: SQLiteKnowledgeBase) -> None:
    mf = next(kb.iter_records()).meta_features
    a = regime_shortlist(mf, kb, None, n=3, seed=2, options=SMALL)
    b = regime_shortlist(mf, kb, None, n=3, seed=2, options=SMALL)
    assert a.model_dump() == b.model_dump()


def test_empty_kb_is_a_clear_error(tmp_path: Path) -> None:
    kb = SQLiteKnowledgeBase(tmp_path / "empty.sqlite")
    mf = synthetic_records(1, 1)[0].meta_features
    with pytest.raises(KnowledgeBaseError, match="at least"):
        regime_shortlist(mf, kb, None, options=ShortlistOptions(learner_config=FAST))


def test_one_shortlist_whether_learner_and_runs_are_given_or_not(kb: SQLiteKnowledgeBase) -> None:
    """The graph hands in its session's learner and its retrieve node's runs; the CLI, the
    regime preview and ``verify`` let the function fit and retrieve: one content, one
    shortlist, carrying the regime's metric. A regime the KB lacks is the regime error."""
    mf = next(kb.iter_records()).meta_features
    alone = regime_shortlist(mf, kb, "cpu", n=3, seed=2, options=SMALL)
    assert alone.regime == "cpu" and alone.metric == "accuracy" and not alone.facts
    snapshot = KBSnapshot.of(kb)
    digest = snapshot.content_hash()
    learner = fit_or_load(snapshot, FAST, records=snapshot.runs, kb_hash=digest)
    found = retrieve(mf, load_or_build(snapshot, records=snapshot.runs, kb_hash=digest))
    given = regime_shortlist(
        mf, snapshot, "cpu", n=3, seed=2, learner=learner, found=found, options=SMALL
    )
    assert given.model_dump() == alone.model_dump()
    with pytest.raises(KnowledgeBaseError, match="holds no gpu run"):
        regime_shortlist(mf, kb, "gpu", options=SMALL)


def test_diverse_top_prefers_distinct_models() -> None:
    import numpy as np

    models = ["a", "a", "b", "a", "c"]
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    assert diverse_top(models, scores, 3) == [0, 2, 4]
    assert diverse_top(models, scores, 4) == [0, 2, 4, 1]


def test_ood_flag_on_a_far_away_card(kb: SQLiteKnowledgeBase) -> None:
    """1,000 classes x 10 images is nothing like the KB: flagged, wider interval, low
    confidence, and the reason is in the JSON and in the evidence the LLM reads."""
    from metallmix.agents.evidence import render_evidence
    from metallmix.agents.recommender import AnswerOrigin, from_candidate

    records = list(kb.iter_records())
    near = records[0].meta_features
    assert kb_coverage(near, records) == (False, [])
    far = near.model_copy(
        update={
            "n_classes": 1000,
            "n_images": 10_000,
            "images_per_class": 10.0,
            "class_size_mean": 10.0,
            "class_size_min": 10,
            "class_size_max": 10,
        }
    )
    ood, reasons = kb_coverage(far, records, train_sizes=CPU_ZOO_SPACE.image_sizes())
    assert ood and any(r.startswith("n_classes 1,000 is outside") for r in reasons)
    assert any("x the KB's largest" in r for r in reasons)  # says how far
    inside = regime_shortlist(near, kb, None, n=3, seed=2, options=SMALL)
    outside = regime_shortlist(far, kb, None, n=3, seed=2, options=SMALL)
    assert not inside.ood and outside.ood and outside.ood_reasons == reasons
    width = [c.accuracy_high - c.accuracy_low for c in inside.candidates]
    wide = [c.accuracy_high - c.accuracy_low for c in outside.candidates]
    assert min(wide) >= 0.1 and sum(wide) > sum(width)
    rec = from_candidate(
        outside.candidates[0],
        dataset="far",
        shortlist=outside,
        facts=[],
        runs=[],
        rationale="the best score of the shortlist",
        origin=AnswerOrigin(llm="test", seed=0, attempts=1),
    )
    assert rec.ood and rec.confidence == "low" and rec.ood_reasons == reasons
    assert '"ood":true' in rec.model_dump_json() and "OUT OF THE KB" in rec.summary()
    assert "Out of the knowledge base's range (outside the KB's range of " in rec.explanation
    assert "n_classes" in rec.explanation and "1000" not in rec.explanation  # judge-safe prose
    evidence = render_evidence("far", outside).text
    assert "OUT OF RANGE (ood): outside the KB's range of " in evidence
    assert "n_classes" in evidence
