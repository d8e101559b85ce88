"""The recommender -> judge graph with a scripted LLM and a hand-built shortlist.

Every path of the graph: accepted first answer, one regeneration after a rejected answer,
fallback after two rejections, malformed JSON, an unknown candidate id. The real-model twins
are in ``test_recommend_real.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cases import BREAST_MF

from metallmix.agents.evidence import Number, grounded, numbers_in, scrub
from metallmix.agents.judge import hard_checks
from metallmix.agents.recommender import evidence_for, fallback_recommendation, from_choice
from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.agents.schemas import JudgeScores, LLMChoice, Recommendation
from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.meta.contracts import Candidate, ShapFact, Shortlist, SimilarRun

MF = BREAST_MF.model_copy(update={"modality": "ultrasound"})


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
    facts=["f1"],
    runs=["r1"],
    rationale="resnet18 is the most accurate choice, mostly thanks to its learning rate, and "
    "the same setup did well on a similar ultrasound set",
)
# What a small model writes without the grammar and the code-rendered numbers.
INVENTED_TEXT = (
    "resnet18 is predicted to reach 97.5% accuracy, as [run own-breast-07] shows; "
    "it trains in 12 s."
)
# Grammar-valid, but its words put a number next to the wrong thing (lr's +3.4 to the model).
MISATTRIBUTED = LLMChoice(
    candidate_id="c1",
    facts=["f1"],
    runs=["r1"],
    rationale="the model choice alone adds +3.4 points over the alternatives",
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
def _rec(choice: LLMChoice, shortlist: Shortlist) -> Recommendation:
    ev = evidence_for("breast", shortlist)
    rec = from_choice(ev, choice, attempts=1, llm="scripted", seed=0)
    assert isinstance(rec, Recommendation), rec
    return rec


def test_grounded_explanation_passes_every_check() -> None:
    shortlist = make_shortlist()
    rec = _rec(GOOD, shortlist)
    checks, failures = hard_checks(rec, shortlist)
    assert failures == []
    assert all(checks.values())
    assert "numbers_grounded" in checks and "in_search_space" not in checks
    # the numbers are the code's: accuracy, interval, the cited fact and run
    assert "84.1%" in rec.explanation and "+3.4" in rec.explanation
    assert "[run own-breast-07]" in rec.explanation and "85.6%" in rec.explanation
    assert rec.explanation.startswith(GOOD.rationale)
    assert rec.cited_facts == [make_shortlist().facts[0].sentence]
    assert rec.confidence == "high"  # 8.2-point interval and a past run within 10 points


def test_invented_numbers_fail_and_are_named() -> None:
    shortlist = make_shortlist()
    rec = _rec(GOOD, shortlist).model_copy(update={"explanation": INVENTED_TEXT})
    checks, failures = hard_checks(rec, shortlist)
    assert not checks["numbers_grounded"]
    assert any("97.5" in f and "12" in f for f in failures)
    assert not checks["states_expected_accuracy"]


def test_misattributed_words_fail() -> None:
    shortlist = make_shortlist()
    checks, failures = hard_checks(_rec(MISATTRIBUTED, shortlist), shortlist)
    assert not checks["numbers_attributed"]
    assert any("3.4" in f and "lr" in f for f in failures)


def test_uncited_fact_and_run_fail_completeness() -> None:
    shortlist = make_shortlist()
    rec = _rec(GOOD, shortlist).model_copy(
        update={
            "explanation": "Predicted accuracy: 84.1%, interval 80.1% to 88.2%.",
            "cited_facts": [],
            "cited_runs": [],
        }
    )
    checks, _ = hard_checks(rec, shortlist)
    assert checks["numbers_grounded"] and checks["states_expected_accuracy"]
    assert not checks["cites_shap_fact"] and not checks["cites_similar_run"]
    other = rec.model_copy(update={"cited_facts": [shortlist.facts[2].sentence]})  # c2's fact
    checks, failures = hard_checks(other, shortlist)
    assert not checks["cites_shap_fact"] and any("another candidate" in f for f in failures)


def test_grammar_allows_only_this_requests_ids() -> None:
    from metallmix.agents.evidence import answer_schema
    from metallmix.agents.runtime.llm import LLMOutputError

    ev = evidence_for("breast", make_shortlist())
    schema = answer_schema(ev).model_json_schema()
    branches = {d["properties"]["candidate_id"]["const"]: d for d in schema["$defs"].values()}
    assert set(branches) == {"c1", "c2"}

    def allowed(branch: str, prop: str) -> list[str]:
        items = branches[branch]["properties"][prop]["items"]
        return list(items.get("enum") or [items["const"]])

    assert allowed("c1", "facts") == ["f1", "f2"] and allowed("c2", "facts") == ["f3"]
    assert allowed("c1", "runs") == allowed("c2", "runs") == ["r1", "r2"]
    bad = [
        GOOD.model_copy(update={"facts": ["f3"]}),  # c2's fact cited for c1
        GOOD.model_copy(update={"runs": ["r9"]}),
        GOOD.model_copy(update={"candidate_id": "c9"}),
    ]
    llm = ScriptedLLM(list(bad))
    for _ in bad:
        with pytest.raises(LLMOutputError):
            llm.chat_json([{"role": "user", "content": "x"}], answer_schema(ev))


def test_unknown_citation_fails() -> None:
    shortlist = make_shortlist()
    rec = _rec(GOOD, shortlist)
    rec = rec.model_copy(
        update={"explanation": rec.explanation.replace("own-breast-07", "own-ghost-99")}
    )
    checks, failures = hard_checks(rec, shortlist)
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
    assert "c1: resnet18" in prompt and "r1: resnet18 on busi-sub300" in prompt
    assert "84.1%" in prompt and "own-breast-07" not in prompt  # short ids, not KB run ids


def test_rejected_answer_is_regenerated_with_the_critique() -> None:
    llm = ScriptedLLM([MISATTRIBUTED, GOOD, SCORES])  # a code-rejected answer is not graded
    rec = _run(llm)
    assert rec.attempts == 2 and not rec.fallback and rec.judge is not None
    retry_prompt = llm.calls[1].messages[1]["content"]
    assert "rejected" in retry_prompt and "wrong thing" in retry_prompt and "3.4" in retry_prompt


def test_llm_scores_are_recorded_not_gating() -> None:
    llm = ScriptedLLM([GOOD, LOW])
    rec = _run(llm)
    assert rec.attempts == 1 and not rec.fallback
    assert rec.judge is not None and rec.judge.passed and rec.judge.scores == LOW


def test_failed_grading_is_retried_once_then_fails_the_check() -> None:
    # grading garbage once, then a grade: passes, with both grading calls recorded
    rec = _run(ScriptedLLM([GOOD, "not json", SCORES]))
    assert rec.attempts == 1 and rec.judge is not None and rec.judge.passed
    assert rec.judge.llm_graded is True and rec.judge.llm_attempts == 2
    # grading garbage twice: a failed check, never a silent pass
    llm = ScriptedLLM([GOOD, "not json", '{"format": 9}', GOOD, SCORES])
    rec = _run(llm)
    assert rec.attempts == 2 and not rec.fallback and llm.remaining == 0
    rec = _run(ScriptedLLM([GOOD, "x", "x", GOOD, "x", "x"]))
    assert rec.fallback, "an answer the LLM never graded must not pass"


def test_grading_that_fails_twice_is_recorded_as_a_failed_check() -> None:
    from metallmix.agents.judge import judge

    shortlist = make_shortlist()
    result = judge(ScriptedLLM(["x", "y"]), _rec(GOOD, shortlist), shortlist, attempt=1)
    v = result.verdict
    assert not v.passed and v.llm_graded is False and v.checks["llm_graded"] is False
    assert v.scores is None and v.llm_error and len(result.exchanges) == 2
    assert any("grading failed twice" in f for f in v.failures)


def test_two_rejections_fall_back_to_the_top_candidate() -> None:
    llm = ScriptedLLM([MISATTRIBUTED, MISATTRIBUTED])
    rec = _run(llm)
    assert rec.fallback and rec.attempts == 2 and rec.candidate_id == "c1"
    assert "templated" in rec.explanation
    assert rec.judge is not None and rec.judge.passed


def test_malformed_json_and_unknown_candidate_count_as_failed_attempts() -> None:
    llm = ScriptedLLM(
        [
            '{"candidate_id": "c1"',
            GOOD.model_copy(update={"candidate_id": "c9"}),
        ]
    )
    rec = _run(llm)
    assert rec.fallback and rec.attempts == 2
    # No judge LLM call for an attempt that produced no recommendation.
    assert all(c.schema is not JudgeScores for c in llm.calls) and len(llm.calls) == 2
    # The retry is told what to fix without echoing the broken answer back.
    retry = llm.calls[1].messages[1]["content"]
    assert "not valid JSON" in retry and '{"candidate_id": "c1"' not in retry


def test_top1_mode_offers_only_the_top_candidate() -> None:
    llm = ScriptedLLM([GOOD, SCORES])
    rec = _run(llm, choose="top1")
    assert rec.candidate_id == "c1" and not rec.fallback
    prompt = llm.calls[0].messages[1]["content"]
    assert "c1: resnet18" in prompt and "c2:" not in prompt


def test_max_attempts_one_skips_regeneration() -> None:
    llm = ScriptedLLM([MISATTRIBUTED])
    rec = _run(llm, max_attempts=1)
    assert rec.fallback and rec.attempts == 1


def test_mlflow_run_holds_params_metrics_and_artifacts() -> None:
    from metallmix.tools import tracking

    llm = ScriptedLLM([MISATTRIBUTED, GOOD, SCORES])
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
    # per attempt under its own name; the plain name is the verdict that decided the answer
    # attempt 1 failed the code checks, so the LLM never graded it
    assert "judge_1_accuracy" not in m and m["judge_2_accuracy"] == 5.0
    assert m["judge_1_passed"] == 0 and m["judge_2_passed"] == 1
    assert m["judge_accuracy"] == 5.0 and m["judge_passed"] == 1 and m["judge_final_attempt"] == 2
    assert run.data.tags["metallmix.verdict"] == "passed on attempt 2"
    # the answer is what a person sees first: name, params, description
    assert run.info.run_name.startswith(f"{rec.dataset} -> {rec.model} 84.1%")
    assert run.data.params["rec.model"] == rec.model
    assert run.data.params["rec.hp.lr"] == str(rec.hyperparameters.lr)
    assert rec.explanation in run.data.tags["mlflow.note.content"]
    names = {a.path for a in client.list_artifacts(rec.mlflow_run_id)}
    assert {"recommendation.json", "explanation.md", "shortlist.md", "retrieved_runs.json"} <= names
    assert "report.html" in names
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


def test_node_names_are_written_once() -> None:
    """The wiring, the progress lines and the enum name the same nodes (a node added to one
    but not the others would lose its progress line or never run)."""
    from metallmix.graphs.graph import build_graph
    from metallmix.node_names import NodeName
    from metallmix.progress import NODE_TEXT

    wired = set(build_graph().get_graph().nodes) - {"__start__", "__end__"}
    assert wired == {n.value for n in NodeName} == set(NODE_TEXT)
