"""The public Python API: recommend a configuration, then optionally validate it.

>>> data = "../shared/data/medical/breastmnist.npz"
>>> rec = metallmix.recommend(data, llm="fast")  # doctest: +SKIP
>>> record = metallmix.validate(rec, data)  # doctest: +SKIP

Every ``recommend`` is one MLflow run (experiment ``metallmix-recommendations``) with a
trace of the graph; ``validate`` trains the recommendation and nests its run under it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from metallmix import config
from metallmix.agents.schemas import Recommendation
from metallmix.errors import ConfigError, DatasetError, MetaLLMiXError
from metallmix.graphs import recording
from metallmix.graphs.configuration import Configuration
from metallmix.graphs.graph import build_graph as build
from metallmix.graphs.resources import (
    KbSpec,
    LlmSpec,
    last_read,
    load_llm_in_background,
    require_runs,
    resolve_kb,
)
from metallmix.node_names import NodeName
from metallmix.progress import epoch_printer, node_printer, wait_lines
from metallmix.tools import tracking
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.regime import check_regime
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.contracts import Shortlist
from metallmix.tools.metafeatures import MetaFeatures
from metallmix.tools.training.runner import RunSpec, run_trial
from metallmix.tools.training.settings import TrialSettings
from metallmix.verify import VerifyOptions, recommend_verified

if TYPE_CHECKING:
    from metallmix.tools.kb.records import RunRecord

__all__ = ["Recommendation", "build_graph", "recommend", "validate"]


def build_graph() -> Any:
    """A freshly compiled recommendation graph (a LangChain runnable), as ``recommend``
    runs it: it also takes a precomputed ``shortlist`` and ``max_attempts`` as input."""
    return build(internal_inputs=True)


_GRAPH: Any = None


def _graph() -> Any:
    global _GRAPH
    if _GRAPH is None:
        _GRAPH = build_graph()
    return _GRAPH


def _configurable(llm: LlmSpec, kb: KbSpec, seed: int, **extra: Any) -> dict[str, Any]:
    """The graph's live objects: the KB first (an empty or unreadable KB fails before any
    model is touched), then the LLM, loading in the background while features and shortlist
    run."""
    out: dict[str, Any] = {"seed": seed, **extra}
    out["kb_instance"] = resolve_kb(kb, read_only=True)
    require_runs(out["kb_instance"])
    out["llm_instance"] = load_llm_in_background(llm, seed)
    return out


def recommend(
    data: str | os.PathLike[str] | MetaFeatures | None,
    modality: str | None = None,
    llm: LlmSpec = None,
    kb: KbSpec = None,
    seed: int = 0,
    *,
    shortlist: Shortlist | None = None,
    name: str | None = None,
    space: str | None = None,
    compute: str | None = None,
    n_candidates: int = 5,
    judge_with_llm: bool = True,
    max_attempts: int = 2,
    choose: Literal["llm", "top1"] | None = None,
    track: bool = True,
    on_node: Callable[[str], None] | None = None,
    verify: int | None = None,
    budget_minutes: float | None = None,
    backend: Any | None = None,
    verify_options: dict[str, Any] | None = None,
    on_shortlist: Callable[[Shortlist], None] | None = None,
    progress: bool = True,
) -> Recommendation:
    """Recommend a model and hyperparameters for ``data``.

    ``data`` is a dataset path (``.npz``, ImageFolder, CSV manifest), a dataset-card JSON,
    or precomputed :class:`MetaFeatures`. ``llm`` is a registry name, a profile (``fast``,
    ``default``), a ``.gguf`` path or a loaded model; ``kb`` a ``.sqlite`` path or an open
    store (default: ``METALLMIX_KB`` or the layered default). ``track`` logs the decision to
    MLflow (``MLFLOW_TRACKING_URI``); the run id is on the result. ``choose`` is ``"llm"``
    (the LLM picks among the shortlist) or ``"top1"`` (it explains the meta-learner's top
    candidate); None keeps the graph's default. ``on_shortlist`` is called with the scored
    shortlist as soon as it exists, before the LLM has answered.

    ``progress`` prints one line per finished graph node on stderr, and lines every 2 s
    while the meta-learner is fitted for new KB content (``progress=False``: silent).
    ``on_node(name)`` is your own hook, called with each node's name as it finishes
    (``features``, ``retrieve``, ``shortlist``, ``evidence``, ``recommender``, ``judge``,
    ``fallback``, ``record``; the recommender and judge once per attempt), e.g. to drive a
    progress bar.
    ``compute`` (``cpu`` or ``gpu``; default: ``gpu`` when torch sees CUDA) picks the
    regime: which KB runs the meta-learner learns from and which search space it proposes from.

    ``verify=K`` then trains the top-K shortlisted configurations with successive halving
    within ``budget_minutes`` on ``backend`` (``"local"``, ``"ray"`` or an execution
    backend) and returns a :class:`~metallmix.verify.VerifiedRecommendation`; re-running
    the same call resumes it. ``verify_options`` go to
    :func:`metallmix.verify.recommend_verified` (``max_train_images``, ``threads``, ...).
    """
    if verify is None and budget_minutes is not None:
        raise ConfigError(
            "budget_minutes only applies with verify=K (training the top K candidates); "
            "pass verify or drop budget_minutes"
        )
    if verify is not None:
        if data is None or isinstance(data, MetaFeatures):
            raise ConfigError("verify needs a dataset path to train on, not only meta-features")

        def zero_shot(found: Shortlist, store: KnowledgeBase, dataset_name: str) -> Recommendation:
            return recommend(
                data,
                modality=modality,
                llm=llm,
                kb=store,
                seed=seed,
                shortlist=found,
                name=name or dataset_name,
                space=space,
                n_candidates=max(n_candidates, verify),
                judge_with_llm=judge_with_llm,
                max_attempts=max_attempts,
                track=track,
                on_node=on_node,
                progress=progress,
            )

        return recommend_verified(
            data,
            zero_shot,
            VerifyOptions(
                k=verify, budget_minutes=budget_minutes, backend=backend, **(verify_options or {})
            ),
            modality=modality,
            llm=llm,
            kb=kb,
            seed=seed,
            shortlist=shortlist,
            space=space,
            n_candidates=n_candidates,
        )

    if max_attempts < 1:
        raise ConfigError(f"max_attempts must be at least 1, got {max_attempts}")
    if compute is not None:
        compute = check_regime(compute)
    inputs: dict[str, Any] = {"modality": modality, "max_attempts": max_attempts}
    if isinstance(data, MetaFeatures):
        inputs["meta_features"] = data
        inputs["dataset_name"] = name or "meta-features"
    elif data is not None:
        path = Path(data).expanduser()
        if not path.exists():  # before the KB is read or the LLM loaded
            raise DatasetError(f"{path}: no such file or directory; check the dataset path")
        inputs["data"] = str(path)
        if name:
            inputs["dataset_name"] = name
    elif shortlist is None:
        raise ConfigError("recommend() needs data: a dataset path, a card or MetaFeatures")
    if shortlist is not None:
        inputs["shortlist"] = shortlist
        inputs.setdefault("meta_features", shortlist.meta_features)
        inputs.setdefault("dataset_name", name or "meta-features")
    if progress:
        on_node = node_printer(on_node)
    configurable = _configurable(
        llm,
        kb,
        seed,
        space=space,
        compute=compute,
        n_candidates=n_candidates,
        judge_with_llm=judge_with_llm,
        track=track,
        **({"choose": choose} if choose else {}),
    )
    hooks = _Hooks(on_node, on_shortlist)
    with wait_lines(progress):  # the meta-learner fit's lines follow ``progress`` too
        if not track:
            rec = _result(_invoke(inputs, configurable, hooks))
        else:
            rec = _tracked(inputs, configurable, hooks)
    return with_kb_change(rec, kb)


def with_kb_change(rec: Recommendation, kb: KbSpec) -> Recommendation:
    """``rec`` with :attr:`Recommendation.kb_change` set when the KB changed since the last
    answer (see :mod:`metallmix.kb_changes`); the workspace remembers this answer. The
    notice never costs the answer: a KB or workspace that cannot be read leaves it out."""
    from metallmix.kb_changes import answer_of, note_answer

    try:
        store = resolve_kb(kb)
        seen = last_read(store.location)  # what the answer saw: no second read of the store
        records = seen.runs if seen is not None else list(store.iter_records())
        notice = note_answer(records, store.location, answer_of(rec))
    except (MetaLLMiXError, OSError, ValueError):
        return rec
    return rec.model_copy(update={"kb_change": notice}) if notice else rec


class _Hooks:
    """The caller's progress callbacks, fed from the graph's stream of node updates."""

    def __init__(
        self,
        on_node: Callable[[str], None] | None,
        on_shortlist: Callable[[Shortlist], None] | None,
    ) -> None:
        self.on_node, self.on_shortlist = on_node, on_shortlist

    def __bool__(self) -> bool:
        return self.on_node is not None or self.on_shortlist is not None

    def __call__(self, node: str, update: Any) -> None:
        scored = node == NodeName.SHORTLIST and isinstance(update, dict) and update.get("shortlist")
        if self.on_shortlist is not None and scored:  # not again when evidence adds its facts
            self.on_shortlist(update["shortlist"])
        if self.on_node is not None:
            self.on_node(node)


def _invoke(
    inputs: dict[str, Any],
    configurable: dict[str, Any],
    hooks: Any = None,
) -> Any:
    """Run the graph; stream node updates only when someone listens."""
    config: Any = {"configurable": configurable}
    if not hooks:
        return _graph().invoke(inputs, config=config)
    final: Any = None
    for mode, chunk in _graph().stream(inputs, config=config, stream_mode=["updates", "values"]):
        if mode == "updates":
            for node, update in chunk.items():
                hooks(str(node), update)
        else:
            final = chunk
    return final


def _tracked(
    inputs: dict[str, Any],
    configurable: dict[str, Any],
    hooks: Any = None,
) -> Recommendation:
    """Run the graph inside an active MLflow run and a root trace span.

    The store must be writable before any work starts (a read-only ``mlflow.db`` is a
    one-line :class:`~metallmix.errors.TrackingError` here, not after the LLM answered).
    From then on tracking never costs the answer: a failure to log or to close the run is
    put on the result as ``tracking_error``. Ctrl-C or SIGTERM close the run as KILLED (and
    its trace with an error), any other error as FAILED.
    """
    import mlflow  # slow to import: only for a tracked run

    experiment = Configuration.from_runnable_config({"configurable": configurable}).experiment
    uri = config.tracking_uri()
    tracking.check_writable_store(uri)
    exp_id = tracking.experiment_id(tracking.client(uri), experiment)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=exp_id)
    run_id = recording.start_run(
        experiment=experiment, run_name=inputs.get("dataset_name") or _stem(inputs.get("data"))
    )
    configurable = {**configurable, "mlflow_run_id": run_id}
    # Resuming the run makes it "active", which is what links the trace to it.
    mlflow.start_run(run_id=run_id)
    try:
        with mlflow.start_span(name="recommend") as span:
            span.set_inputs({k: str(v)[:200] for k, v in inputs.items() if k != "shortlist"})
            try:
                final = _invoke(inputs, configurable, hooks)
            except KeyboardInterrupt:  # not an Exception: the span would otherwise end "OK"
                span.set_status("ERROR")
                raise
            result = _result(final)
            span.set_outputs(result.model_dump(mode="json", exclude={"meta_features"}))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through the CLI's handler
        _close(mlflow, "KILLED")
        raise
    except BaseException:
        _close(mlflow, "FAILED")
        raise
    status = "FAILED" if result.tracking_error else "FINISHED"
    problem = _close(mlflow, status, run_id=run_id, note=result.tracking_error)
    if problem and not result.tracking_error:
        result = result.model_copy(update={"tracking_error": problem})
    return result


def _close(
    mlflow: Any, status: str, *, run_id: str | None = None, note: str | None = None
) -> str | None:
    """End the active run with ``status``; never raises (returns the reason it failed)."""
    reason: str | None = None
    with contextlib.suppress(Exception):  # a lost trace must not cost the answer
        mlflow.flush_trace_async_logging()
    if run_id is not None and note:
        with contextlib.suppress(Exception):  # the store that failed the record may fail too
            tracking.client().set_tag(run_id, "metallmix.tracking_error", note)
    try:
        mlflow.end_run(status)
    except Exception as exc:
        reason = tracking.redact_text(f"{type(exc).__name__}: {exc}".splitlines()[0])[:500]
        with contextlib.suppress(Exception):  # leave no active run behind in this process
            mlflow.tracking.fluent._active_run_stack.get().clear()
    return reason


def _stem(data: Any) -> str | None:
    return Path(str(data)).stem if data else None


def _result(final: Any) -> Recommendation:
    rec = final["recommendation"] if isinstance(final, dict) else final.recommendation
    if rec is None:  # pragma: no cover - the graph always ends with one (or raises)
        raise MetaLLMiXError("the recommendation graph ended without a recommendation")
    if isinstance(rec, dict):
        rec = Recommendation.model_validate(rec)
    run_id = final.get("mlflow_run_id") if isinstance(final, dict) else None
    if run_id and rec.mlflow_run_id != run_id:
        rec = rec.model_copy(update={"mlflow_run_id": run_id})
    return rec


def validate(
    recommendation: Recommendation,
    data: str | os.PathLike[str],
    seed: int = 0,
    *,
    kb: KbSpec = None,
    modality: str | None = None,
    max_train_images: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    track: bool = True,
) -> RunRecord:
    """Train the recommended configuration on ``data``; the MLflow run nests under the
    recommendation's run (same experiment, ``mlflow.parentRunId``, a link back in its
    description) and the outcome joins the KB (the KB grows with every validation).
    ``progress`` prints one line per epoch on stderr (``progress=False``: silent).

    ``track=False`` records nothing in MLflow. With tracking, a store that fails once
    training has started never costs the result: it is returned, with the reason in
    ``record.provenance.notes["mlflow_logging_error"]``.
    """
    store = resolve_kb(kb, read_only=False)  # the validated run joins the KB
    dataset = load_dataset(Path(data), modality=modality, seed=seed)
    if track:
        nest = recording.validation_nesting(recommendation)
    else:
        nest = recording.Nesting("metallmix-validation", f"validate {recommendation.model}", {})
    hook = None
    if progress:
        hook = epoch_printer(recommendation.hyperparameters.epochs)
    record = run_trial(
        dataset,
        RunSpec(
            model=recommendation.model,
            hp=recommendation.hyperparameters,
            seed=seed,
            parent_run_id=recommendation.mlflow_run_id if track else None,
            pretrained=recommendation.pretrained,
            tags={"metallmix.recommendation": recommendation.candidate_id, **nest.tags},
            experiment=nest.experiment,
            run_name=nest.run_name,
        ),
        kb=store,
        settings=TrialSettings(
            max_train_images=max_train_images, threads=threads, progress=hook, track=track
        ),
    )
    if not track:
        return record
    try:
        recording.link_validation(recommendation, record)
    except Exception as exc:  # the training result is known: tracking must not cost it
        problem = tracking.redact_text(f"linking to the recommendation's run failed: {exc}")
        notes = {**record.provenance.notes}
        notes.setdefault("mlflow_logging_error", problem[:500])
        record = record.model_copy(
            update={"provenance": record.provenance.model_copy(update={"notes": notes})}
        )
    return record
