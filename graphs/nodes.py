"""The nodes of the recommendation graph, one small function each.

Each node reads the typed state, does one thing and returns a partial update with its own
latency, so the MLflow run can report where time goes. Expensive resources (the loaded LLM,
the opened KB) are resolved through :mod:`metallmix.graphs.resources` and cached per process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, Protocol

from langchain_core.runnables import RunnableConfig

from metallmix.errors import DatasetError, KnowledgeBaseError
from metallmix.graphs.configuration import Configuration
from metallmix.graphs.resources import get_kb, get_llm, regime_kb_for, space_for
from metallmix.graphs.state import RecommendationState
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.contracts import Shortlist
from metallmix.tools.meta.search_space import SearchSpace


class Node(Protocol):
    """A graph node: LangGraph passes the state and the run's config by these names."""

    def __call__(self, state: RecommendationState, config: RunnableConfig) -> dict[str, Any]: ...


def timed(name: str) -> Callable[[Node], Node]:
    """Record the node's wall time under ``timings``; inside a trace, add a span for it."""

    def decorate(fn: Node) -> Node:
        @wraps(fn)
        def wrapper(state: RecommendationState, config: RunnableConfig) -> dict[str, Any]:
            import mlflow

            # attempts is incremented by the recommender, so both of one attempt share a number
            key = {
                "recommender": f"recommender_{state.attempts + 1}",
                "judge": f"judge_{state.attempts}",
            }.get(name, name)
            started = time.perf_counter()
            if mlflow.get_current_active_span() is None:
                # Not inside a traced recommend() (an untracked run, Studio): no trace.
                update = fn(state, config)
            else:
                with mlflow.start_span(name=key) as span:
                    update = fn(state, config)
                    span.set_outputs({k: _brief(v) for k, v in update.items()})
            update["timings"] = {key: time.perf_counter() - started}
            return update

        return wrapper

    return decorate


def _brief(value: Any) -> Any:
    """A small, JSON-friendly view of a state value for a trace span."""
    if hasattr(value, "model_dump"):
        dumped = value.model_dump(mode="json")
        return {k: v for k, v in dumped.items() if k not in {"facts", "meta_features"}}
    if isinstance(value, list):
        return [_brief(v) for v in value[:10]]
    return value


@timed("features")
def features(state: RecommendationState, config: RunnableConfig) -> dict[str, Any]:
    """Meta-features of the user's dataset (skipped when given)."""
    if state.meta_features is not None:
        mf = state.meta_features
        if state.modality and mf.modality != state.modality:
            mf = mf.model_copy(update={"modality": state.modality})
        return {"meta_features": mf, "dataset_name": state.dataset_name or "meta-features"}
    if not state.data:
        raise DatasetError(
            "nothing to recommend for: give 'data' (a dataset path or dataset card) "
            "or 'meta_features'"
        )
    from metallmix.tools.metafeatures import compute_meta_features

    path = Path(state.data).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory; check the dataset path")
    mf = compute_meta_features(path, modality=state.modality)
    return {"meta_features": mf, "dataset_name": state.dataset_name or _name_of(path)}


def _name_of(path: Path) -> str:
    if path.suffix.lower() == ".json":
        try:
            import json

            name = json.loads(path.read_text()).get("name")
            if isinstance(name, str) and name:
                return name
        except (OSError, ValueError):
            pass
    return path.stem if path.is_file() else path.name


@timed("retrieve")
def retrieve(state: RecommendationState, config: RunnableConfig) -> dict[str, Any]:
    """Past runs on the most similar KB datasets (FAISS over meta-features)."""
    if state.shortlist is not None:
        return {"similar_runs": state.shortlist.similar_runs}
    from metallmix.tools.meta.retrieval import load_or_build

    assert state.meta_features is not None
    cfg = Configuration.from_runnable_config(config)
    kb = get_kb(cfg)
    require_runs(kb)
    _, kb = regime_kb_for(cfg, kb)
    index = load_or_build(kb)
    return {"similar_runs": index.similar_runs(state.meta_features, k=9)}


def require_runs(kb: KnowledgeBase) -> None:
    if not kb.run_ids():
        raise KnowledgeBaseError(
            f"the knowledge base {kb.location} is empty: nothing to learn from. Import runs "
            "(`metallmix kb import-quicktune PATH`, `metallmix kb import FILE`) or point "
            "METALLMIX_KB / --kb at a filled store"
        )


@timed("shortlist")
def shortlist(state: RecommendationState, config: RunnableConfig) -> dict[str, Any]:
    """The meta-learner's scored, diverse shortlist with SHAP facts (skipped when given)."""
    if state.shortlist is not None:
        return {}
    from metallmix.tools.meta.shortlist import build_shortlist

    assert state.meta_features is not None
    from metallmix.tools.meta.metric import metric_of_runs

    cfg = Configuration.from_runnable_config(config)
    kb = get_kb(cfg)
    require_runs(kb)
    regime, kb = regime_kb_for(cfg, kb)
    result = build_shortlist(
        state.meta_features,
        kb,
        n=cfg.n_candidates,
        space=space_for(cfg, regime),
        seed=cfg.seed,
    )
    metric, note = metric_of_runs(kb.iter_records())
    result = result.model_copy(update={"metric": metric, "metric_note": note, "regime": regime})
    if not result.candidates:
        raise KnowledgeBaseError(
            f"the meta-learner produced no candidate from the knowledge base {kb.location}; "
            "import runs first (`metallmix kb import-quicktune` / `metallmix kb import`)"
        )
    return {"shortlist": result}


@timed("explain")
def explain(state: RecommendationState, config: RunnableConfig) -> dict[str, Any]:
    """Turn the shortlist's SHAP facts and similar runs into the evidence both LLMs see."""
    from metallmix.agents.evidence import render_evidence

    assert state.shortlist is not None
    return {"evidence": render_evidence(state.dataset_name, state.shortlist).text}


@timed("recommender")
def recommender(state: RecommendationState, config: RunnableConfig) -> dict[str, Any]:
    """The LLM picks a candidate and explains; hard fields are copied by code."""
    from metallmix.agents.recommender import recommend_once

    assert state.shortlist is not None
    cfg = Configuration.from_runnable_config(config)
    attempt = state.attempts + 1
    draft = recommend_once(
        get_llm(cfg),
        state.dataset_name,
        state.shortlist,
        attempt=attempt,
        critique=state.critique,
        seed=cfg.seed,
        choose=cfg.choose,
    )
    return {
        "attempts": attempt,
        "draft": draft.recommendation,
        "draft_error": draft.error,
        "exchanges": [draft.exchange.to_dict()],
    }


@timed("judge")
def judge(state: RecommendationState, config: RunnableConfig) -> dict[str, Any]:
    """Code checks decide; the LLM grades. Passing drafts become the recommendation."""
    from metallmix.agents.judge import judge as run_judge

    assert state.shortlist is not None
    cfg = Configuration.from_runnable_config(config)
    llm = get_llm(cfg) if cfg.judge_with_llm else None
    result = run_judge(
        llm,
        state.draft,
        state.shortlist,
        attempt=state.attempts,
        draft_error=state.draft_error,
        known_run_ids={r.run_id for r in state.similar_runs},
        space=judged_space(cfg, state.shortlist),
        seed=cfg.seed,
    )
    update: dict[str, Any] = {"verdicts": [result.verdict], "critique": result.verdict.critique}
    if result.exchanges:
        update["exchanges"] = [e.to_dict() for e in result.exchanges]
    if result.verdict.passed and state.draft is not None:
        update["recommendation"] = state.draft.model_copy(update={"judge": result.verdict})
    return update


def judged_space(cfg: Configuration, shortlist: Shortlist) -> SearchSpace | None:
    """The space the shortlist was proposed from (:func:`space_for`), checked by the judge."""
    return space_for(cfg, shortlist.regime, [c.model for c in shortlist.candidates])


@timed("fallback")
def fallback(state: RecommendationState, config: RunnableConfig) -> dict[str, Any]:
    """Top candidate with a templated explanation, after the last attempt failed."""
    from metallmix.agents.judge import hard_checks
    from metallmix.agents.recommender import fallback_recommendation
    from metallmix.agents.schemas import JudgeVerdict

    assert state.shortlist is not None
    cfg = Configuration.from_runnable_config(config)
    llm = get_llm(cfg)
    rec = fallback_recommendation(
        state.dataset_name, state.shortlist, attempts=state.attempts, llm=llm.name, seed=cfg.seed
    )
    checks, failures = hard_checks(rec, state.shortlist, space=judged_space(cfg, state.shortlist))
    verdict = JudgeVerdict(
        attempt=state.attempts + 1,
        passed=not failures,
        failures=failures,
        checks={"schema": True, **checks},
        critique="templated fallback; checked by code only",
    )
    return {"recommendation": rec.model_copy(update={"judge": verdict}), "fallback": True}


@timed("record")
def record(state: RecommendationState, config: RunnableConfig) -> dict[str, Any]:
    """Log the decision (params, metrics, artifacts) as one MLflow run."""
    cfg = Configuration.from_runnable_config(config)
    if not cfg.track or state.recommendation is None:
        return {}
    from metallmix.tracking import log_recommendation

    run_id = log_recommendation(
        state, cfg, run_id=(config.get("configurable") or {}).get("mlflow_run_id")
    )
    return {
        "mlflow_run_id": run_id,
        "recommendation": state.recommendation.model_copy(update={"mlflow_run_id": run_id}),
    }


def after_judge(state: RecommendationState) -> str:
    """Done when the judge passed; one more attempt while under the cap; else fallback."""
    if state.recommendation is not None:
        return "record"
    if state.attempts < state.max_attempts:
        return "recommender"
    return "fallback"
