"""The nodes of the recommendation graph, one small function each.

Each node reads the typed state, does one thing and returns a partial update with its own
latency, so the MLflow run can report where time goes. Settings and expensive resources (the
loaded LLM, the KB snapshot, the meta-learner) come from the run's context, LangGraph's
``runtime.context`` (:class:`~metallmix.graphs.configuration.Context`): built once per run,
shared by every node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, Protocol

from langgraph.runtime import Runtime

from metallmix.agents.judge import hard_checks
from metallmix.agents.judge import judge as run_judge
from metallmix.agents.recommender import evidence_for, fallback_recommendation, recommend_once
from metallmix.agents.runtime.isolated import LLMProcessError
from metallmix.agents.schemas import JudgeVerdict
from metallmix.errors import DatasetError, KnowledgeBaseError, ModelUnavailableError
from metallmix.graphs.configuration import Context, context_of, resources_of
from metallmix.graphs.recording import log_recommendation
from metallmix.graphs.resources import RunKB, space_for
from metallmix.graphs.state import RecommendationState
from metallmix.graphs.tracing import node_span
from metallmix.node_names import NodeName
from metallmix.progress import step_line, waiting
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.snapshot import KBSnapshot
from metallmix.tools.meta.contracts import Shortlist
from metallmix.tools.meta.explain import global_importance, waterfall
from metallmix.tools.meta.landmarks import attach_landmarks
from metallmix.tools.meta.metalearner import MetaLearner, training_rows
from metallmix.tools.meta.retrieval import load_or_build
from metallmix.tools.meta.search_space import SearchSpace
from metallmix.tools.meta.shortlist import (
    Retrieved,
    candidate_rows,
    explain_shortlist,
    regime_shortlist,
)
from metallmix.tools.meta.shortlist import retrieve as retrieve_runs
from metallmix.tools.metafeatures import compute_meta_features
from metallmix.tools.tracking import redact_text


class Node(Protocol):
    """A graph node: LangGraph passes the state and the run's runtime by these names."""

    def __call__(self, state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]: ...


def timed(name: NodeName) -> Callable[[Node], Node]:
    """Record the node's wall time under ``timings`` and give the call its trace span
    (graphs/tracing: under the API's root span or a served run's own)."""

    def decorate(fn: Node) -> Node:
        @wraps(fn)
        def wrapper(state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]:
            # attempts is incremented by the recommender, so both of one attempt share a number
            key = {
                NodeName.RECOMMENDER: f"recommender_{state.attempts + 1}",
                NodeName.JUDGE: f"judge_{state.attempts}",
            }.get(name, str(name))
            started = time.perf_counter()
            with node_span(key, name, state, context_of(runtime)) as trace:
                update = fn(state, runtime)
                if trace.span is not None:
                    trace.span.set_outputs({k: _brief(v) for k, v in update.items()})
                trace.result = update
            update.update(trace.update)
            update["timings"] = {key: time.perf_counter() - started}
            return update

        return wrapper

    return decorate


def _brief(value: Any) -> Any:
    """A small, JSON-friendly view of a state value for a trace span."""
    if hasattr(value, "model_dump"):
        dumped = value.model_dump(mode="json")
        return {k: v for k, v in dumped.items() if k not in {"facts", "meta_features", "shortlist"}}
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_brief(v) for v in value[:10]]
    return value


@timed(NodeName.FEATURES)
def features(state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Meta-features of the user's dataset (skipped when given)."""
    if state.meta_features is not None:
        mf = state.meta_features
        if state.modality and mf.modality != state.modality:
            mf = mf.model_copy(update={"modality": state.modality})
        return {
            "meta_features": mf,
            "dataset_name": state.dataset_name or "meta-features",
            "landmarks_note": "given with the meta-features" if mf.landmarks else "",
        }
    if not state.data:
        raise DatasetError(
            "nothing to recommend for: give 'data' (a dataset path or dataset card) "
            "or 'meta_features'"
        )
    path = Path(state.data).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory; check the dataset path")
    # One read of the user's data serves the meta-features and the landmarks (seconds-cheap
    # scores of its own images); a card has no images, so no landmarks.
    images = None if path.suffix.lower() == ".json" else load_dataset(path, modality=state.modality)
    mf = compute_meta_features(images if images is not None else path, modality=state.modality)
    mf, measured, note = attach_landmarks(mf, images)
    step_line(note)
    return {
        "meta_features": mf,
        "dataset_name": state.dataset_name or _name_of(path),
        "landmarks_note": note,
        "landmarks_seconds": measured.seconds if measured is not None else None,
    }


def _name_of(path: Path) -> str:
    if path.suffix.lower() == ".json":
        try:
            name = json.loads(path.read_text()).get("name")
            if isinstance(name, str) and name:
                return name
        except (OSError, ValueError):
            pass
    return path.stem if path.is_file() else path.name


@timed(NodeName.RETRIEVE)
def retrieve(state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Past runs on the most similar KB datasets (FAISS over meta-features): the ones the LLM
    is shown and the ones whose configurations join the shortlist's pool. The KB is read
    here, once for the whole recommendation."""
    if state.shortlist is not None:
        return {"similar_runs": state.shortlist.similar_runs}
    assert state.meta_features is not None
    cfg = context_of(runtime)
    with waiting("reading the knowledge base and its retrieval index"):
        run = resources_of(cfg).run_kb(cfg.compute, cfg.space)
        snapshot = run.snapshot
        index = load_or_build(snapshot, records=snapshot.runs, kb_hash=run.kb_hash)
    found = retrieve_runs(state.meta_features, index)
    return {
        "kb_hash": run.kb_hash,
        "similar_runs": found.shown,
        "candidate_runs": found.neighbours,
    }


@timed(NodeName.SHORTLIST)
def shortlist(state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]:
    """The meta-learner's scored, diverse shortlist (skipped when given)."""
    if state.shortlist is not None:
        return {}
    assert state.meta_features is not None
    cfg = context_of(runtime)
    resources = resources_of(cfg)
    run = resources.run_kb(cfg.compute, cfg.space)
    result = regime_shortlist(
        state.meta_features,
        run.snapshot,
        run.regime,
        n=cfg.n_candidates,
        seed=cfg.seed,
        space=space_for(cfg.space, run.regime),
        learner=resources.learner(run, cfg.seed),
        found=Retrieved(shown=state.similar_runs, neighbours=state.candidate_runs),
    )
    if not result.candidates:
        raise KnowledgeBaseError(
            f"the meta-learner produced no candidate from the knowledge base "
            f"{run.snapshot.location}; import runs first (`metallmix kb import-quicktune` / "
            "`metallmix kb import`)"
        )
    return {"shortlist": result}


@timed(NodeName.EVIDENCE)
def evidence(state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]:
    """The evidence the recommender and the judge both read, built once: the shortlist's
    SHAP facts (skipped when given with them), the numbers of each candidate's waterfall
    and, for the MLflow record, the KB's global SHAP importance; then the id'd evidence."""
    assert state.shortlist is not None
    cfg = context_of(runtime)
    result = state.shortlist
    update: dict[str, Any] = {}
    run = _shortlist_kb(state, cfg)
    learner = resources_of(cfg).learner(run, cfg.seed) if run is not None else None
    if run is not None and learner is not None and learner.version == result.metalearner_version:
        if not result.facts:
            result = result.model_copy(update={"facts": explain_shortlist(learner, result)})
            update["shortlist"] = result
        rows = candidate_rows(result)
        update["waterfalls"] = {
            c.candidate_id: waterfall(learner, rows.iloc[[i]])
            for i, c in enumerate(result.candidates)
        }
        if cfg.track:
            update["global_importance"] = global_importance_of(learner, run.snapshot, cfg.seed)
    update["evidence"] = evidence_for(state.dataset_name, result, cfg.choose)
    return update


def _shortlist_kb(state: RecommendationState, cfg: Context) -> RunKB | None:
    """The KB snapshot the shortlist was scored on: this run's (in memory); for a shortlist
    given as input, read only for the record's plots and only when it is the same content."""
    resources = resources_of(cfg)
    if state.kb_hash is not None:
        return resources.run_kb(cfg.compute, cfg.space)
    shortlist = state.shortlist
    if not cfg.track or shortlist is None or not shortlist.kb_hash:
        return None
    try:
        regime = shortlist.regime  # None: scored on the whole KB (regime_shortlist's None)
        run = resources.run_kb(regime or cfg.compute, cfg.space, whole=regime is None)
    except KnowledgeBaseError:  # e.g. an empty KB: the answer needs no plot
        return None
    return run if run.kb_hash == shortlist.kb_hash else None


def global_importance_of(
    learner: MetaLearner, kb: KBSnapshot, seed: int, rows: int = 300
) -> dict[str, float]:
    """Mean |SHAP| per feature group over (a seeded sample of) the KB's runs, largest first."""
    frame = training_rows(records_to_frame(kb.runs))
    frame = frame.sample(n=min(len(frame), rows), random_state=seed)
    return {str(k): float(v) for k, v in global_importance(learner, frame).items()}


# The LLM's own failures: its process died or hung (LLMProcessError) or the model could not
# be loaded after the run started (ModelUnavailableError). They cost the LLM's part only: the
# graph goes on to the deterministic fallback with the reason in ``llm_error``.
LLM_FAILURES: tuple[type[Exception], ...] = (LLMProcessError, ModelUnavailableError)


def llm_failure(exc: Exception) -> dict[str, Any]:
    """The state update that sends the run to the fallback, saying why."""
    return {"llm_error": str(exc)}


@timed(NodeName.RECOMMENDER)
def recommender(state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]:
    """The LLM picks a candidate and explains; hard fields are copied by code."""
    assert state.evidence is not None
    cfg = context_of(runtime)
    attempt = state.attempts + 1
    try:
        llm = resources_of(cfg).llm(cfg.seed)
        draft = recommend_once(
            llm, state.evidence, attempt=attempt, critique=state.critique, seed=cfg.seed
        )
    except LLM_FAILURES as exc:
        return {"attempts": attempt, **llm_failure(exc)}
    return {
        "attempts": attempt,
        "draft": draft.recommendation,
        "draft_error": draft.error,
        "exchanges": [draft.exchange.to_dict()],
        "llm": llm.name,
        "llm_sha256": llm.sha256,
    }


@timed(NodeName.JUDGE)
def judge(state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Code checks decide; the LLM grades. Passing drafts become the recommendation."""
    assert state.shortlist is not None
    cfg = context_of(runtime)
    try:
        llm = resources_of(cfg).llm(cfg.seed) if cfg.judge_with_llm else None
        result = run_judge(
            llm,
            state.draft,
            state.shortlist,
            attempt=state.attempts,
            draft_error=state.draft_error,
            known_run_ids={r.run_id for r in state.similar_runs},
            space=judged_space(cfg, state.shortlist),
            evidence=state.evidence,
            seed=cfg.seed,
        )
    except LLM_FAILURES as exc:
        return llm_failure(exc)
    update: dict[str, Any] = {"verdicts": [result.verdict], "critique": result.verdict.critique}
    if result.exchanges:
        update["exchanges"] = [e.to_dict() for e in result.exchanges]
    if result.verdict.passed and state.draft is not None:
        update["recommendation"] = state.draft.model_copy(update={"judge": result.verdict})
    return update


def judged_space(cfg: Context, shortlist: Shortlist) -> SearchSpace | None:
    """The space the shortlist was proposed from (:func:`space_for`), checked by the judge."""
    return space_for(cfg.space, shortlist.regime, [c.model for c in shortlist.candidates])


@timed(NodeName.FALLBACK)
def fallback(state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Top candidate with a templated explanation, after the last attempt failed."""
    assert state.shortlist is not None
    cfg = context_of(runtime)
    name, sha = llm_identity(state, cfg)
    rec = fallback_recommendation(
        state.dataset_name,
        state.shortlist,
        attempts=state.attempts,
        llm=name,
        seed=cfg.seed,
        llm_error=state.llm_error,
    )
    checks, failures = hard_checks(
        rec, state.shortlist, space=judged_space(cfg, state.shortlist), evidence=state.evidence
    )
    verdict = JudgeVerdict(
        attempt=state.attempts + 1,
        passed=not failures,
        failures=failures,
        checks={"schema": True, **checks},
        critique="templated fallback; checked by code only",
    )
    return {
        "recommendation": rec.model_copy(update={"judge": verdict}),
        "fallback": True,
        "llm": name,
        "llm_sha256": sha,
    }


def llm_identity(state: RecommendationState, cfg: Context) -> tuple[str, str]:
    """The model's name and sha256 for the record, without loading it (the fallback must not
    wait on, or restart, an LLM that just failed)."""
    if state.llm:
        return state.llm, state.llm_sha256
    if state.llm_error is None:
        try:
            llm = resources_of(cfg).llm(cfg.seed)
            return llm.name, llm.sha256
        except LLM_FAILURES:
            pass
    return str(cfg.llm or "default"), ""


@timed(NodeName.RECORD)
def record(state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Log the decision (params, metrics, artifacts) as one MLflow run, from the state only.

    Tracking never costs the answer: a failure to log (read-only artifacts, a full disk, a
    store gone away) is kept on the recommendation as ``tracking_error`` and the graph ends
    normally; the caller reports it (the CLI exits 3).
    """
    cfg = context_of(runtime)
    if not cfg.track or state.recommendation is None:
        return {}
    # the session's run, or the one graphs/tracing opened for a served run; else a new one
    opened = cfg.resources.mlflow_run_id if cfg.resources is not None else None
    given = opened or state.mlflow_run_id
    try:
        run_id = log_recommendation(state, cfg, run_id=given)
    except Exception as exc:  # MLflow, SQLAlchemy, OS errors alike
        reason = redact_text(f"{type(exc).__name__}: {exc}".splitlines()[0])[:500]
        return {
            "mlflow_run_id": given,
            "recommendation": state.recommendation.model_copy(
                update={"mlflow_run_id": given, "tracking_error": reason}
            ),
        }
    return {
        "mlflow_run_id": run_id,
        "recommendation": state.recommendation.model_copy(update={"mlflow_run_id": run_id}),
    }


def after_recommender(state: RecommendationState) -> str:
    """To the judge, unless the LLM failed outright (then straight to the fallback)."""
    return NodeName.FALLBACK if state.llm_error else NodeName.JUDGE


def after_judge(state: RecommendationState) -> str:
    """Done when the judge passed; one more attempt while under the cap; else fallback."""
    if state.llm_error:
        return NodeName.FALLBACK
    if state.recommendation is not None:
        return NodeName.RECORD
    if state.attempts < state.max_attempts:
        return NodeName.RECOMMENDER
    return NodeName.FALLBACK
