"""Trace spans for every graph run, whoever started it (the API, LangGraph Studio, a script).

The Python API opens the root span ``recommend`` inside an active MLflow run before it invokes
the graph, and each node adds a child span. A run started by the LangGraph server (Studio) or
by anyone invoking the compiled graph directly has neither, and used to leave no trace. For
such runs the first node starts the MLflow run and a root span *without* a context (a span
cannot stay open across LangGraph's node calls, which may run on other threads), every node
adds a child of that root, and the final ``record`` node ends both. The trace names the run as
its source, so the MLflow UI shows it on the run's page exactly as for an API call: same span
names (``recommend``, ``features`` ... ``recommender_1``, ``judge_1`` ... ``record``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from metallmix import config as settings
from metallmix.graphs import recording
from metallmix.graphs.configuration import Context
from metallmix.graphs.state import RecommendationState
from metallmix.tools import tracking

ROOT_SPAN = "recommend"
FINAL_NODE = "record"
SOURCE_RUN = "mlflow.sourceRun"  # trace metadata key MLflow links a trace to its run by


@dataclass
class _OpenRun:
    root: Any  # mlflow LiveSpan
    run_id: str


@dataclass
class NodeTrace:
    """The span of one node call (None when the run is not traced) and the state keys the
    first node of a served run must add (its trace and MLflow run ids)."""

    span: Any | None = None
    update: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)  # the node's own update, once it ran


_OPEN: dict[str, _OpenRun] = {}  # served runs' root spans, by trace id
_LOCK = threading.Lock()


def _served_root(
    state: RecommendationState, cfg: Context
) -> tuple[_OpenRun | None, dict[str, Any]]:
    """This served run's open root (made on its first node), or None when it is untracked."""
    import mlflow  # slow to import: only for a tracked run

    if not cfg.track or (cfg.resources is not None and cfg.resources.mlflow_run_id):
        return None, {}  # untracked, or the session opened the run
    if state.trace_id:
        with _LOCK:
            return _OPEN.get(state.trace_id), {}
    uri = settings.tracking_uri()
    exp_id = tracking.experiment_id(tracking.client(uri), cfg.experiment)  # as api._tracked
    run_id = recording.start_run(
        experiment=cfg.experiment, run_name=state.dataset_name or None, tracking_uri=uri
    )
    mlflow.set_tracking_uri(uri)
    root = mlflow.start_span_no_context(
        name=ROOT_SPAN,
        inputs={
            "data": state.data,
            "dataset_name": state.dataset_name,
            "modality": state.modality,
            "served": True,
        },
        metadata={SOURCE_RUN: run_id},
        experiment_id=exp_id,
    )
    opened = _OpenRun(root=root, run_id=run_id)
    with _LOCK:
        _OPEN[root.trace_id] = opened
    return opened, {"trace_id": root.trace_id, "mlflow_run_id": run_id}


def _finish(opened: _OpenRun, *, failed: bool, outputs: Any = None) -> None:
    import mlflow  # already imported by the run that opened the root

    with _LOCK:
        _OPEN.pop(opened.root.trace_id, None)
    try:
        opened.root.end(outputs=outputs, status="ERROR" if failed else "OK")
        mlflow.flush_trace_async_logging()
    finally:
        tracking.end_run(opened.run_id, "FAILED" if failed else "FINISHED")


@contextmanager
def node_span(key: str, node: str, state: RecommendationState, cfg: Context) -> Iterator[NodeTrace]:
    """The span of one node call: a child of the API's active root span, or of this served
    run's root (opened on its first node, closed after ``record``), or none when untracked."""
    import mlflow  # slow to import: loaded at the first node, not at graph import

    if mlflow.get_current_active_span() is not None:  # inside recommend()'s root span
        with mlflow.start_span(name=key) as span:
            yield NodeTrace(span=span)
        return
    opened, update = _served_root(state, cfg)
    if opened is None:
        yield NodeTrace()
        return
    span = mlflow.start_span_no_context(name=key, parent_span=opened.root)
    trace = NodeTrace(span=span, update=update)
    try:
        yield trace
    except BaseException:
        # closing the trace and run must never replace the node's own error
        with contextlib.suppress(Exception):
            span.end(status="ERROR")
        with contextlib.suppress(Exception):
            _finish(opened, failed=True)
        raise
    span.end()
    if node == FINAL_NODE:
        rec = trace.result.get("recommendation") or state.recommendation
        outputs = rec.model_dump(mode="json", exclude={"meta_features"}) if rec else None
        _finish(opened, failed=False, outputs=outputs)


def open_runs() -> int:
    """How many served runs have an open root span (0 between runs; for tests)."""
    with _LOCK:
        return len(_OPEN)
