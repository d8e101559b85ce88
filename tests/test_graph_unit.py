"""The recommender -> judge graph with a scripted LLM and a hand-built shortlist.

Every path of the graph: accepted first answer, one regeneration after a rejected answer,
fallback after two rejections, malformed JSON, an unknown candidate id. The real-model twins
are in ``test_recommend_real.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metallmix.agents.evidence import Number, grounded, numbers_in, scrub
from metallmix.agents.fake_llm import ScriptedLLM
from metallmix.agents.judge import hard_checks
from metallmix.agents.recommender import fallback_recommendation, from_candidate
from metallmix.agents.schemas import JudgeScores, LLMChoice
from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.meta.contracts import Candidate, ShapFact, Shortlist, SimilarRun
from metallmix.tools.metafeatures import MetaFeatures

MF = MetaFeatures(
    n_images=546,
    n_classes=2,
    imbalance_ratio=2.7,
    resolution_h=28,
    resolution_w=28,
    channels=1,
    class_size_mean=273,
    modality="ultrasound",
    images_per_class=273,
)


def make_shortlist() -> Shortlist:
    def hp(lr: float, bs: int, opt: str, epochs: int) -> Hyperparameters:
        return Hyperparameters(
            lr=lr,
            batch_size=bs,
            optimizer=opt,
            weight_decay=1e-4,
            epochs=epochs,
            scheduler="cosine",
            augmentation="light",
            image_size=32,
            label_smoothing=0.05,
            dropout=0.1,
        )

    candidates = [
        Candidate(
            candidate_id="c1",
            model="resnet18",
            hyperparameters=hp(0.001, 64, "adamw", 8),
            predicted_accuracy=0.8412,
            accuracy_low=0.8005,
            accuracy_high=0.8821,
            predicted_seconds=42.0,
            score=0.912,
            origin="similar-run:own-breast-07",
        ),
        Candidate(
            candidate_id="c2",
            model="efficientnet_b0",
            hyperparameters=hp(0.003, 32, "sgd", 6),
            predicted_accuracy=0.8133,
            accuracy_low=0.7502,
            accuracy_high=0.8701,
            predicted_seconds=95.0,
            score=0.851,
            origin="sampled",
        ),
    ]
    facts = [
        ShapFact(
            candidate_id="c1",
            feature="lr",
            value="0.001",
            reference="0.003",
            effect_points=3.4,
            sentence="learning rate 0.001 instead of the KB median 0.003: +3.4 points",
        ),
        ShapFact(
            candidate_id="c1",
            feature="model",
            value="resnet18",
            reference="efficientnet_b0",
            effect_points=1.9,
            sentence="model resnet18 instead of the most common KB choice: +1.9 points",
        ),
        ShapFact(
            candidate_id="c2",
            feature="optimizer",
            value="sgd",
            reference="adamw",
            effect_points=-1.2,
            sentence="optimizer sgd instead of the most common KB choice adamw: -1.2 points",
        ),
    ]
    similar = [
        SimilarRun(
            run_id="own-breast-07",
            dataset="busi-sub300",
            similarity=0.93,
            model="resnet18",
            hyperparameters=hp(0.001, 64, "adamw", 8),
            val_accuracy=0.856,
            train_seconds=51.0,
        ),
        SimilarRun(
            run_id="own-derma-12",
            dataset="dermamnist",
            similarity=0.71,
            model="efficientnet_b0",
            hyperparameters=hp(0.003, 32, "sgd", 6),
            val_accuracy=0.744,
        ),
    ]
    return Shortlist(
        meta_features=MF,
        candidates=candidates,
        facts=facts,
        similar_runs=similar,
        kb_hash="abc123",
        metalearner_version="test",
    )


GOOD = LLMChoice(
    candidate_id="c1",
    confidence="medium",
    explanation=(
        "resnet18 (c1) is predicted to reach 84.1% validation accuracy (interval 80.1% to "
        "88.2%) in about 42 s. Its learning rate of 0.001 adds +3.4 points over the KB median. "
        "The most similar past run [run own-breast-07] reached 85.6% with the same setup."
    ),
)
INVENTED = LLMChoice(
    candidate_id="c1",
    confidence="high",
    explanation=(
        "resnet18 is predicted to reach 97.5% accuracy, as [run own-breast-07] shows; "
        "it trains in 12 s."
    ),
)
SCORES = JudgeScores(format=4, accuracy=5, completeness=4, critique="Clear and grounded.")
LOW = JudgeScores(format=3, accuracy=1, completeness=2, critique="Numbers are invented.")


# ----------------------------------------------------------------- number grounding
def test_numbers_are_read_with_their_precision() -> None:
    found = numbers_in("84.1% (80.1 to 88.2), lr 1e-3, 10,015 images, 42 s")
    assert [n.value for n in found] == [84.1, 80.1, 88.2, 1e-3, 10015.0, 42.0]
    assert found[0].step == pytest.approx(0.1)
    assert found[3].step == pytest.approx(1e-3)


def test_identifiers_are_not_numbers() -> None:
    text = scrub("resnet18 and efficientnet_b0 like run-12 or c2", ["c2"])
    assert numbers_in(text) == []


def test_grounding_tolerates_rounding_and_percent_only() -> None:
    evidence = [0.8412, 42.0]
    assert grounded(Number("84.1", 84.1, 0.1), evidence)
    assert grounded(Number("84", 84.0, 1.0), evidence)
    assert not grounded(Number("85", 85.0, 1.0), evidence)
    assert not grounded(Number("84.5", 84.5, 0.1), evidence)
    assert grounded(Number("0.7", 0.7, 0.1), evidence)  # 42 s = 0.7 min


# ----------------------------------------------------------------- judge hard checks
def _rec(choice: LLMChoice, shortlist: Shortlist):  # type: ignore[no-untyped-def]
    cand = shortlist.candidate(choice.candidate_id)
    assert cand is not None
    return from_candidate(
        cand,
        dataset="breast",
        shortlist=shortlist,
        confidence=choice.confidence,
        explanation=choice.explanation,
        attempts=1,
        llm="scripted",
        seed=0,
    )


def test_grounded_explanation_passes_every_check() -> None:
    shortlist = make_shortlist()
    checks, failures = hard_checks(_rec(GOOD, shortlist), shortlist)
    assert failures == []
    assert all(checks.values())
    assert "numbers_grounded" in checks and "in_search_space" not in checks


def test_invented_numbers_fail_and_are_named() -> None:
    shortlist = make_shortlist()
    checks, failures = hard_checks(_rec(INVENTED, shortlist), shortlist)
    assert not checks["numbers_grounded"]
    assert any("97.5" in f and "12" in f for f in failures)
    assert not checks["states_expected_accuracy"]


def test_bare_numbers_without_fact_or_run_fail_completeness() -> None:
    shortlist = make_shortlist()
    bare = GOOD.model_copy(
        update={"explanation": "Predicted accuracy: 84.1%, interval 80.1% to 88.2%."}
    )
    checks, _ = hard_checks(_rec(bare, shortlist), shortlist)
    assert checks["numbers_grounded"] and checks["states_expected_accuracy"]
    assert not checks["cites_shap_fact"] and not checks["cites_similar_run"]
    with_effect = bare.model_copy(
        update={"explanation": bare.explanation + " The model adds +1.9 points."}
    )
    checks, _ = hard_checks(_rec(with_effect, shortlist), shortlist)
    assert checks["cites_shap_fact"]


def test_unknown_citation_fails() -> None:
    shortlist = make_shortlist()
    choice = GOOD.model_copy(
        update={"explanation": GOOD.explanation.replace("own-breast-07", "own-ghost-99")}
    )
    checks, failures = hard_checks(_rec(choice, shortlist), shortlist)
    assert not checks["citations_exist"]
    assert any("own-ghost-99" in f for f in failures)


def test_out_of_space_hyperparameters_fail() -> None:
    from metallmix.tools.meta.search_space import CPU_ZOO_SPACE

    shortlist = make_shortlist()
    rec = _rec(GOOD, shortlist)
    bad = rec.model_copy(
        update={"hyperparameters": rec.hyperparameters.model_copy(update={"lr": 0.5})}
    )
    checks, failures = hard_checks(bad, shortlist, space=CPU_ZOO_SPACE)
    assert not checks["in_search_space"] and not checks["matches_candidate"]
    assert any("lr" in f for f in failures)


def test_fallback_is_grounded_and_flagged() -> None:
    shortlist = make_shortlist()
    rec = fallback_recommendation("breast", shortlist, attempts=2, llm="scripted", seed=0)
    assert rec.fallback and rec.candidate_id == "c1"
    assert rec.cited_runs == ["own-breast-07"]
    _, failures = hard_checks(rec, shortlist)
    assert failures == []


# ----------------------------------------------------------------- graph paths
def _run(llm: ScriptedLLM, **kw):  # type: ignore[no-untyped-def]
    import metallmix

    kw.setdefault("track", False)  # MLflow is checked once, below: a fresh store costs seconds
    return metallmix.recommend(
        None, llm=llm, kb=kw.pop("kb", None), shortlist=make_shortlist(), name="breast", **kw
    )


def test_first_answer_accepted(tmp_path: Path) -> None:
    llm = ScriptedLLM([GOOD, SCORES])
    rec = _run(llm)
    assert rec.candidate_id == "c1" and rec.model == "resnet18"
    assert rec.expected_accuracy == 0.8412 and rec.hyperparameters.lr == 0.001
    assert rec.attempts == 1 and not rec.fallback
    assert rec.judge is not None and rec.judge.passed and rec.judge.scores == SCORES
    assert rec.cited_runs == ["own-breast-07"]
    assert llm.remaining == 0 and len(llm.calls) == 2
    prompt = llm.calls[0].messages[1]["content"]
    assert "c1: resnet18" in prompt and "own-breast-07" in prompt and "84.1%" in prompt


def test_rejected_answer_is_regenerated_with_the_critique() -> None:
    llm = ScriptedLLM([INVENTED, LOW, GOOD, SCORES])
    rec = _run(llm)
    assert rec.attempts == 2 and not rec.fallback and rec.judge is not None
    retry_prompt = llm.calls[2].messages[1]["content"]
    assert "rejected" in retry_prompt and "97.5" in retry_prompt
    assert "Numbers are invented." in retry_prompt


def test_two_rejections_fall_back_to_the_top_candidate() -> None:
    llm = ScriptedLLM([INVENTED, LOW, INVENTED, LOW])
    rec = _run(llm)
    assert rec.fallback and rec.attempts == 2 and rec.candidate_id == "c1"
    assert "templated" in rec.explanation
    assert rec.judge is not None and rec.judge.passed


def test_malformed_json_and_unknown_candidate_count_as_failed_attempts() -> None:
    llm = ScriptedLLM(
        [
            '{"candidate_id": "c1"',
            LLMChoice(candidate_id="c9", confidence="low", explanation="x" * 50),
        ]
    )
    rec = _run(llm)
    assert rec.fallback and rec.attempts == 2
    # No judge LLM call for an attempt that produced no recommendation.
    assert [c.schema.__name__ for c in llm.calls if c.schema] == ["LLMChoice", "LLMChoice"]
    # The retry is told what to fix without echoing the broken answer back.
    retry = llm.calls[1].messages[1]["content"]
    assert "not valid JSON" in retry and '{"candidate_id": "c1"' not in retry


def test_max_attempts_one_skips_regeneration() -> None:
    llm = ScriptedLLM([INVENTED, LOW])
    rec = _run(llm, max_attempts=1)
    assert rec.fallback and rec.attempts == 1


def test_mlflow_run_holds_params_metrics_and_artifacts() -> None:
    from metallmix import tracking

    llm = ScriptedLLM([INVENTED, LOW, GOOD, SCORES])
    rec = _run(llm, seed=7, track=True)
    assert rec.mlflow_run_id
    client = tracking.client()
    run = client.get_run(rec.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["llm"] == "scripted" and run.data.params["seed"] == "7"
    assert run.data.params["kb_hash"] == "abc123" and run.data.params["mf_n_images"] == "546"
    m = run.data.metrics
    assert m["attempts"] == 2 and m["fallback"] == 0 and m["expected_accuracy"] == 0.8412
    assert m["latency_recommender_1_s"] >= 0 and m["latency_judge_2_s"] >= 0
    history = client.get_metric_history(rec.mlflow_run_id, "judge_accuracy")
    assert sorted((h.step, h.value) for h in history) == [(1, 1.0), (2, 5.0)]
    names = {a.path for a in client.list_artifacts(rec.mlflow_run_id)}
    assert {"recommendation.json", "explanation.md", "shortlist.md", "retrieved_runs.json"} <= names
    local = Path(client.download_artifacts(rec.mlflow_run_id, "recommendation.json"))
    assert json.loads(local.read_text())["candidate_id"] == "c1"
    judge = {a.path for a in client.list_artifacts(rec.mlflow_run_id, "judge")}
    assert judge == {"judge/verdicts.json"}
    llm_files = {a.path for a in client.list_artifacts(rec.mlflow_run_id, "llm")}
    assert "llm/attempt1_recommender_prompt.md" in llm_files
    assert "llm/attempt2_judge_raw.txt" in llm_files
    traces = client.search_traces(locations=[run.info.experiment_id], run_id=rec.mlflow_run_id)
    assert traces, "the graph run left no MLflow trace"
    spans = {s.name for s in traces[0].data.spans}
    assert {"recommend", "recommender_1", "judge_1", "recommender_2", "record"} <= spans


def test_untracked_run_logs_nothing() -> None:
    from metallmix import config

    rec = _run(ScriptedLLM([GOOD, SCORES]), track=False)
    assert rec.mlflow_run_id is None
    store = Path(config.tracking_uri().removeprefix("sqlite:///"))
    assert not store.exists(), "an untracked recommendation touched the MLflow store"


def test_empty_kb_is_a_clear_error(tmp_path: Path) -> None:
    import metallmix
    from metallmix.errors import KnowledgeBaseError

    with pytest.raises(KnowledgeBaseError, match="empty"):
        metallmix.recommend(MF, llm=ScriptedLLM([]), kb=tmp_path / "empty.sqlite", track=False)


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    import metallmix
    from metallmix.errors import DatasetError

    with pytest.raises(DatasetError, match="no such file"):
        metallmix.recommend(tmp_path / "nope.npz", llm=ScriptedLLM([]), track=False)
