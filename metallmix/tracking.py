"""MLflow records of recommendations: one run per decision, everything needed to audit it.

Params say what was decided on (dataset, meta-features, LLM and its sha256, KB and its
content hash, seed); metrics say how it went (latency per node, judge scores per attempt,
attempts, fallback); artifacts hold the recommendation, its explanation, the shortlist, the
retrieved runs, the prompts and raw LLM outputs, and every judge verdict. A later
validation training run nests under it (``mlflow.parentRunId``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metallmix import config

if TYPE_CHECKING:
    from metallmix.graphs.configuration import Configuration
    from metallmix.graphs.state import RecommendationState

EXPERIMENT = "metallmix-recommendations"
KIND = "recommendation"


def client(tracking_uri: str | None = None) -> Any:
    from metallmix.tools.training.tracking import client as make_client

    return make_client(tracking_uri)


def start_run(
    *, experiment: str = EXPERIMENT, run_name: str | None = None, tracking_uri: str | None = None
) -> str:
    """Create a running recommendation run and return its id (the caller ends it)."""
    from metallmix.tools.training.tracking import KIND_TAG, code_version, experiment_id

    mlflow_client = client(tracking_uri)
    exp_id = experiment_id(mlflow_client, experiment)
    run = mlflow_client.create_run(
        exp_id,
        run_name=run_name,
        tags={KIND_TAG: KIND, "metallmix.code_version": code_version()},
    )
    return str(run.info.run_id)


def end_run(run_id: str, status: str = "FINISHED", tracking_uri: str | None = None) -> None:
    client(tracking_uri).set_terminated(run_id, status=status)


def _params(state: RecommendationState, cfg: Configuration, llm_name: str, sha: str) -> dict:
    shortlist = state.shortlist
    mf = state.meta_features
    params: dict[str, Any] = {
        "dataset": state.dataset_name,
        "data": state.data or "",
        "modality": mf.modality if mf else "",
        "llm": llm_name,
        "llm_sha256": sha,
        "kb": _kb_location(cfg),
        "kb_hash": shortlist.kb_hash if shortlist else "",
        "metalearner_version": shortlist.metalearner_version if shortlist else "",
        "seed": cfg.seed,
        "n_candidates": cfg.n_candidates,
        "judge_with_llm": cfg.judge_with_llm,
        "max_attempts": state.max_attempts,
    }
    if mf is not None:
        params.update({f"mf_{k}": v for k, v in mf.model_dump().items() if k != "modality"})
    return {k: ("" if v is None else str(v)[:6000]) for k, v in params.items()}


def _kb_location(cfg: Configuration) -> str:
    if cfg.kb_instance is not None:
        return str(cfg.kb_instance.location)
    return str(cfg.kb or config.kb_uri() or "default (workspace over bundled KB)")


def _metrics(state: RecommendationState) -> list[tuple[str, float, int]]:
    rec = state.recommendation
    out: list[tuple[str, float, int]] = [
        (f"latency_{node}_s", seconds, 0) for node, seconds in state.timings.items()
    ]
    out.append(("latency_total_s", sum(state.timings.values()), 0))
    out += [("attempts", float(state.attempts), 0), ("fallback", float(state.fallback), 0)]
    if rec is not None:
        out += [
            ("expected_accuracy", rec.expected_accuracy, 0),
            ("accuracy_low", rec.accuracy_low, 0),
            ("accuracy_high", rec.accuracy_high, 0),
        ]
        if rec.expected_train_seconds is not None:
            out.append(("expected_train_seconds", rec.expected_train_seconds, 0))
    for v in state.verdicts:
        out.append(("judge_passed", float(v.passed), v.attempt))
        out.append(("judge_failed_checks", float(len(v.failures)), v.attempt))
        if v.scores is not None:
            for name in ("format", "accuracy", "completeness"):
                out.append((f"judge_{name}", float(getattr(v.scores, name)), v.attempt))
    if state.shortlist is not None:
        out.append(("n_candidates", float(len(state.shortlist.candidates)), 0))
        out.append(("n_similar_runs", float(len(state.shortlist.similar_runs)), 0))
    usage: dict[str, float] = {}
    for ex in state.exchanges:
        for key in ("prompt_tokens", "completion_tokens", "seconds"):
            usage[key] = usage.get(key, 0.0) + float(ex.get("usage", {}).get(key, 0.0))
    out += [(f"llm_{k}", v, 0) for k, v in usage.items()]
    return out


def shortlist_table(state: RecommendationState) -> str:
    """The shortlist as a Markdown table (also readable as plain text in the MLflow UI)."""
    if state.shortlist is None:
        return ""
    from metallmix.tools.meta.search_space import hp_values

    rows = [
        "| id | model | predicted acc | interval | seconds | score | origin | hyperparameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in state.shortlist.candidates:
        hp = ", ".join(f"{k}={v}" for k, v in hp_values(c.hyperparameters).items() if v is not None)
        rows.append(
            f"| {c.candidate_id} | {c.model} | {c.predicted_accuracy:.4f} | "
            f"{c.accuracy_low:.4f}-{c.accuracy_high:.4f} | {c.predicted_seconds} | "
            f"{c.score:.4f} | {c.origin} | {hp} |"
        )
    return "\n".join(rows) + "\n"


def explanation_markdown(state: RecommendationState) -> str:
    rec = state.recommendation
    if rec is None:
        return ""
    lines = [
        f"# Recommendation for {rec.dataset}",
        "",
        f"**{rec.summary()}**",
        "",
        rec.explanation,
        "",
        f"- candidate: {rec.candidate_id}; attempts: {rec.attempts}; fallback: {rec.fallback}",
        f"- cited runs: {', '.join(rec.cited_runs) or 'none'}",
    ]
    return "\n".join(lines) + "\n"


def _write_artifacts(state: RecommendationState, folder: Path) -> None:
    def dump(name: str, payload: Any) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = payload if isinstance(payload, str) else json.dumps(payload, indent=2, default=str)
        path.write_text(text, encoding="utf-8")

    rec = state.recommendation
    if rec is not None:
        dump("recommendation.json", rec.model_dump(mode="json"))
        dump("explanation.md", explanation_markdown(state))
    if state.shortlist is not None:
        dump("shortlist.md", shortlist_table(state))
        dump("shortlist.json", state.shortlist.model_dump(mode="json"))
    dump("retrieved_runs.json", [r.model_dump(mode="json") for r in state.similar_runs])
    dump("evidence.md", state.evidence)
    dump("judge/verdicts.json", [v.model_dump(mode="json") for v in state.verdicts])
    dump("llm/exchanges.json", state.exchanges)
    for ex in state.exchanges:
        stem = f"llm/attempt{ex['attempt']}_{ex['node']}"
        prompt = "\n\n".join(f"## {m['role']}\n\n{m['content']}" for m in ex["messages"])
        dump(f"{stem}_prompt.md", prompt + "\n")
        dump(f"{stem}_raw.txt", str(ex.get("raw", "")))


def shap_plots(state: RecommendationState, cfg: Configuration, folder: Path) -> list[Path]:
    """SHAP waterfall of the recommended candidate, from the same (cached) meta-learner that
    scored the shortlist; nothing when the shortlist came from elsewhere."""
    rec, shortlist = state.recommendation, state.shortlist
    if rec is None or shortlist is None or state.meta_features is None:
        return []
    from metallmix.graphs.resources import get_kb
    from metallmix.tools.meta.encoding import candidates_frame
    from metallmix.tools.meta.explain import plot_waterfall
    from metallmix.tools.meta.metalearner import MetaLearnerConfig, fit_or_load

    kb = get_kb(cfg)
    if not kb.run_ids():
        return []
    learner = fit_or_load(kb, MetaLearnerConfig(seed=cfg.seed))
    if learner.version != shortlist.metalearner_version:
        return []
    row = candidates_frame(
        state.meta_features, [(rec.model, rec.hyperparameters)], pretrained=rec.pretrained
    )
    path = folder / "shap" / f"waterfall_{rec.candidate_id}.png"
    return [plot_waterfall(learner, row, path, title=f"{rec.candidate_id}: {rec.model}")]


def log_recommendation(
    state: RecommendationState, cfg: Configuration, *, run_id: str | None = None
) -> str:
    """Log ``state`` into ``run_id`` (left running) or into a new, finished run."""
    from mlflow.entities import Metric, Param

    from metallmix.graphs.resources import get_llm

    own_run = run_id is None
    if run_id is None:
        run_id = start_run(experiment=cfg.experiment, run_name=state.dataset_name or None)
    mlflow_client = client()
    try:
        llm = get_llm(cfg)
        params = _params(state, cfg, llm.name, llm.sha256)
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v, step in _metrics(state)]
        mlflow_client.log_batch(
            run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()]
        )
        if state.recommendation is not None:
            mlflow_client.set_tag(run_id, "metallmix.model", state.recommendation.model)
        with tempfile.TemporaryDirectory(prefix="metallmix-rec-") as tmp:
            _write_artifacts(state, Path(tmp))
            try:
                shap_plots(state, cfg, Path(tmp))
            except Exception as exc:  # a missing picture must not lose the decision's record
                mlflow_client.set_tag(run_id, "metallmix.shap_plot_error", str(exc)[:500])
            mlflow_client.log_artifacts(run_id, tmp)
    except BaseException:
        if own_run:
            end_run(run_id, "FAILED")
        raise
    if own_run:
        end_run(run_id)
    return run_id
