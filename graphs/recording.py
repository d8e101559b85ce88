"""What the graph's ``record`` node logs: one MLflow run per decision, everything needed to
audit it, written from the graph's state alone (nothing is loaded or recomputed here; the MLflow
plumbing itself is :mod:`metallmix.tools.tracking`).

Params say what was decided on (dataset, meta-features, LLM and its sha256, KB and its
content hash, seed); metrics say how it went (latency per node, judge scores per attempt,
attempts, fallback); artifacts hold the recommendation, its explanation, the shortlist, the
retrieved runs, the prompts and raw LLM outputs, and every judge verdict. A later
validation training run nests under it (``mlflow.parentRunId``).

What a person sees first is made to carry the answer: the run is named after it
(``breastmnist -> convnext_atto 85.9%``), its description (``mlflow.note.content``) is the
summary and the explanation, the model and every hyperparameter are params (``rec.model``,
``rec.hp.lr``...), and ``report.html`` puts answer, baselines, shortlist, SHAP and cited runs
on one page.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from metallmix import config
from metallmix.graphs import report
from metallmix.graphs.configuration import EXPERIMENT, Context
from metallmix.graphs.state import RecommendationState
from metallmix.tools import tracking
from metallmix.tools.meta.explain import draw_waterfall, plot_bar
from metallmix.tools.meta.search_space import hp_values

if TYPE_CHECKING:
    from metallmix.agents.schemas import Recommendation
    from metallmix.tools.kb.records import RunRecord

KIND = "recommendation"


def start_run(
    *, experiment: str = EXPERIMENT, run_name: str | None = None, tracking_uri: str | None = None
) -> str:
    """Create a running recommendation run and return its id (the caller ends it)."""
    return tracking.start_run(experiment, kind=KIND, run_name=run_name, tracking_uri=tracking_uri)


def _params(state: RecommendationState, cfg: Context) -> dict[str, str]:
    shortlist = state.shortlist
    mf = state.meta_features
    params: dict[str, Any] = {
        "dataset": state.dataset_name,
        "data": state.data or "",
        "modality": mf.modality if mf else "",
        "llm": state.llm,
        "llm_sha256": state.llm_sha256,
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
    params["landmarks"] = state.landmarks_note
    params.update(recommendation_params(state))
    return {k: ("" if v is None else str(v)[:6000]) for k, v in params.items()}


def recommendation_params(state: RecommendationState) -> dict[str, Any]:
    """The answer as params, so the runs table can show and filter on it."""
    rec = state.recommendation
    if rec is None:
        return {}
    metric, chance, majority = report.metric_levels(rec, state.meta_features)
    out: dict[str, Any] = {
        "rec.model": rec.model,
        "rec.pretrained": rec.pretrained,
        "rec.candidate_id": rec.candidate_id,
        "rec.metric": metric,
    }
    out.update({f"rec.hp.{k}": v for k, v in hp_values(rec.hyperparameters).items()})
    if chance is not None:
        out["rec.chance_level"] = round(chance, 4)
    if majority is not None:
        out["rec.majority_accuracy"] = round(majority, 4)
    return out


def _kb_location(cfg: Context) -> str:
    if cfg.resources is not None:
        return str(cfg.resources.kb.location)
    return str(cfg.kb or config.kb_uri() or "default (workspace over bundled KB)")


def _metrics(state: RecommendationState) -> list[tuple[str, float, int]]:
    rec = state.recommendation
    out: list[tuple[str, float, int]] = [
        (f"latency_{node}_s", seconds, 0) for node, seconds in state.timings.items()
    ]
    out.append(("latency_total_s", sum(state.timings.values()), 0))
    if state.landmarks_seconds is not None:  # inside the features node's latency
        out.append(("landmarks_seconds", state.landmarks_seconds, 0))
    out += [("attempts", float(state.attempts), 0), ("fallback", float(state.fallback), 0)]
    if rec is not None:
        out += [
            ("expected_accuracy", rec.expected_accuracy, 0),
            ("accuracy_low", rec.accuracy_low, 0),
            ("accuracy_high", rec.accuracy_high, 0),
        ]
        if rec.expected_train_seconds is not None:
            out.append(("expected_train_seconds", rec.expected_train_seconds, 0))
    verdicts = list(state.verdicts)
    if rec is not None and rec.judge is not None and rec.judge not in verdicts:
        verdicts.append(rec.judge)  # the fallback's code-only verdict
    for v in verdicts:
        out += _verdict_metrics(v, f"judge_{v.attempt}_")
    if rec is not None and rec.judge is not None:  # the verdict that decided the answer
        out += _verdict_metrics(rec.judge, "judge_")
        out.append(("judge_final_attempt", float(rec.judge.attempt), 0))
    if state.shortlist is not None:
        out.append(("n_candidates", float(len(state.shortlist.candidates)), 0))
        out.append(("n_similar_runs", float(len(state.shortlist.similar_runs)), 0))
    usage: dict[str, float] = {}
    for ex in state.exchanges:
        for key in ("prompt_tokens", "completion_tokens", "seconds"):
            usage[key] = usage.get(key, 0.0) + float(ex.get("usage", {}).get(key, 0.0))
    out += [(f"llm_{k}", v, 0) for k, v in usage.items()]
    return out


def _verdict_metrics(verdict: Any, prefix: str) -> list[tuple[str, float, int]]:
    out = [
        (f"{prefix}passed", float(verdict.passed), 0),
        (f"{prefix}failed_checks", float(len(verdict.failures)), 0),
    ]
    if verdict.scores is not None:
        for name in ("format", "accuracy", "completeness"):
            out.append((f"{prefix}{name}", float(getattr(verdict.scores, name)), 0))
    return out


def verdict_text(state: RecommendationState) -> str:
    """One line: how the judge ended (shown as a tag beside the run)."""
    rec = state.recommendation
    if rec is None:
        return "no recommendation"
    if rec.fallback and state.llm_error:
        return f"fallback: the LLM failed ({state.llm_error[:200]})"
    if rec.fallback:
        return f"fallback after {rec.attempts} rejected attempt(s)"
    return f"passed on attempt {rec.judge.attempt if rec.judge else rec.attempts}"


def description(state: RecommendationState) -> str:
    """The run description (``mlflow.note.content``, Markdown): summary and explanation."""
    rec = state.recommendation
    if rec is None:
        return ""
    lines = [f"**{rec.summary()}**", "", rec.explanation, "", f"Judge: {verdict_text(state)}."]
    lines.append("Full report: artifact `report.html`.")
    return "\n".join(lines)


def unique_run_name(mlflow_client: Any, experiment_id: str, base: str, run_id: str) -> str:
    """``base``, or ``base #N`` when other runs of the experiment already carry it."""
    quoted = base.replace("'", "\\'")
    try:
        runs = mlflow_client.search_runs(
            [experiment_id], filter_string=f"attributes.run_name LIKE '{quoted}%'", max_results=500
        )
    except Exception:  # an odd name the filter grammar rejects: still a usable name
        return base
    taken = {
        r.info.run_name
        for r in runs
        if r.info.run_id != run_id
        and (r.info.run_name == base or r.info.run_name.startswith(base + " #"))
    }
    if not taken:
        return base
    n = len(taken) + 1
    while f"{base} #{n}" in taken:
        n += 1
    return f"{base} #{n}"


def shortlist_table(state: RecommendationState) -> str:
    """The shortlist as a Markdown table (also readable as plain text in the MLflow UI)."""
    if state.shortlist is None:
        return ""
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
    dump("evidence.md", state.evidence.text if state.evidence is not None else "")
    dump("judge/verdicts.json", [v.model_dump(mode="json") for v in state.verdicts])
    dump("llm/exchanges.json", state.exchanges)
    for ex in state.exchanges:
        stem = f"llm/attempt{ex['attempt']}_{ex['node']}"
        prompt = "\n\n".join(f"## {m['role']}\n\n{m['content']}" for m in ex["messages"])
        dump(f"{stem}_prompt.md", prompt + "\n")
        dump(f"{stem}_raw.txt", str(ex.get("raw", "")))


def shap_plots(state: RecommendationState, folder: Path) -> list[Path]:
    """The SHAP waterfall of the recommended candidate and the KB's global importance, drawn
    from what the ``evidence`` node computed; nothing when it computed none."""
    rec = state.recommendation
    if rec is None:
        return []
    paths: list[Path] = []
    data = state.waterfalls.get(rec.candidate_id)
    if data is not None:
        path = folder / "shap" / f"waterfall_{rec.candidate_id}.png"
        paths.append(draw_waterfall(data, path, title=f"{rec.candidate_id}: {rec.model}"))
    if state.global_importance:
        importance = pd.Series(state.global_importance)  # largest first, as computed
        paths.append(plot_bar(importance, folder / "shap" / "global_bar.png"))
    return paths


def log_recommendation(
    state: RecommendationState, cfg: Context, *, run_id: str | None = None
) -> str:
    """Log ``state`` into ``run_id`` (left running) or into a new, finished run of
    ``cfg.experiment``."""
    from mlflow.entities import Metric, Param  # slow to import: only when a run is logged

    own_run = run_id is None
    if run_id is None:
        run_id = start_run(experiment=cfg.experiment, run_name=state.dataset_name or None)
    mlflow_client = tracking.client()
    try:
        params = _params(state, cfg)
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v, step in _metrics(state)]
        mlflow_client.log_batch(
            run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()]
        )
        rec = state.recommendation
        if rec is not None:
            exp = mlflow_client.get_run(run_id).info.experiment_id
            name = unique_run_name(mlflow_client, exp, report.run_name(rec), run_id)
            mlflow_client.update_run(run_id, name=name)
            mlflow_client.set_tag(run_id, "metallmix.model", rec.model)
            mlflow_client.set_tag(run_id, "metallmix.verdict", verdict_text(state))
            if state.llm_error:  # the LLM died, hung or did not load: the answer is templated
                mlflow_client.set_tag(run_id, "metallmix.llm_error", state.llm_error[:5000])
            mlflow_client.set_tag(run_id, "mlflow.note.content", description(state))
        with tempfile.TemporaryDirectory(prefix="metallmix-rec-") as tmp:
            _write_artifacts(state, Path(tmp))
            plots: list[Path] = []
            try:
                plots = shap_plots(state, Path(tmp))
            except Exception as exc:  # a missing picture must not lose the decision's record
                mlflow_client.set_tag(run_id, "metallmix.shap_plot_error", str(exc)[:500])
            if rec is not None:
                waterfall = next((p for p in plots if p.name.startswith("waterfall_")), None)
                bar = next((p for p in plots if p.name == "global_bar.png"), None)
                page = report.render(state, run_id=run_id, waterfall=waterfall, global_bar=bar)
                (Path(tmp) / "report.html").write_text(page, encoding="utf-8")
            mlflow_client.log_artifacts(run_id, tmp)
    except BaseException:
        if own_run:
            tracking.end_run(run_id, "FAILED")
        raise
    if own_run:
        tracking.end_run(run_id)
    return run_id


@dataclass(frozen=True)
class Nesting:
    """Where a validation training run goes: under its recommendation when there is one."""

    experiment: str
    run_name: str | None
    tags: dict[str, str]


def validation_nesting(rec: Recommendation, tracking_uri: str | None = None) -> Nesting:
    """Same experiment as the recommendation's run, a readable name and a link back.

    MLflow nests a run under its parent only inside one experiment; logged elsewhere it is
    shown top-level, so the validation goes to the recommendation's experiment.
    """
    name = f"validate {rec.model} on {rec.dataset}"
    if not rec.mlflow_run_id:
        return Nesting("metallmix-validation", name, {})
    mlflow_client = tracking.client(tracking_uri)
    try:
        parent = mlflow_client.get_run(rec.mlflow_run_id)
    except Exception:  # recorded in another store: train anyway, say where it came from
        return Nesting(
            "metallmix-validation", name, {"metallmix.recommendation_run_id": rec.mlflow_run_id}
        )
    exp_id = parent.info.experiment_id
    experiment = mlflow_client.get_experiment(exp_id).name
    link = tracking.run_link(exp_id, rec.mlflow_run_id)
    note = (
        f"Validation training of the recommendation "
        f"[{parent.info.run_name or rec.mlflow_run_id}]({link}): "
        f"{rec.summary()}"
    )
    return Nesting(
        experiment,
        name,
        {"mlflow.parentRunId": rec.mlflow_run_id, "mlflow.note.content": note},
    )


def link_validation(
    rec: Recommendation, record: RunRecord, tracking_uri: str | None = None
) -> None:
    """On the recommendation's run: the validated score and a link to the training run.

    ``validated_score`` is in the recommendation's own metric (:attr:`RunRecord.score`:
    validation balanced accuracy where the run recorded it), so it sits next to the
    predicted score like for like; the tag ``metallmix.validated_metric`` names it, and
    ``metallmix.validated_fidelity`` says whether the run trained on a capped subsample.
    """
    child = record.provenance.mlflow_run_id
    if not rec.mlflow_run_id or not child:
        return
    mlflow_client = tracking.client(tracking_uri)
    if record.score is not None:
        mlflow_client.log_metric(rec.mlflow_run_id, "validated_score", record.score)
    test = record.outcomes.test_balanced_accuracy
    if test is None and record.score_metric != "balanced_accuracy":
        test = record.outcomes.test_accuracy  # the same metric as the validation score
    if test is not None:
        mlflow_client.log_metric(rec.mlflow_run_id, "validated_test_score", test)
    mlflow_client.set_tag(rec.mlflow_run_id, "metallmix.validated_metric", record.score_metric)
    mlflow_client.set_tag(
        rec.mlflow_run_id, "metallmix.validated_fidelity", record.fidelity.describe()
    )
    exp_id = mlflow_client.get_run(child).info.experiment_id
    mlflow_client.set_tag(rec.mlflow_run_id, "metallmix.validation_run_id", child)
    link = tracking.run_link(exp_id, child)
    mlflow_client.set_tag(rec.mlflow_run_id, "metallmix.validation_run", link)
