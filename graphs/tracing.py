"""Trace spans for every graph run, whoever started it (the API, LangGraph Studio, a script).

One function opens a recommendation's MLflow run and its root span ``recommend``
(:func:`open_run`), made *without* a context (a span cannot stay open across LangGraph's node
calls, which may run on other threads); every node adds a child of that root. A session
(:class:`metallmix.Session`) opens it before it invokes the graph and hands it to the nodes in
the run's resources; a run started by the LangGraph server (Studio) or by anyone invoking the
compiled graph directly has none, so its first node opens it and the final ``record`` node
ends both. The trace names the run as
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
from metallmix.node_names import NodeName
from metallmix.tools import tracking
from metallmix.tools.tracking import TracedRun

ROOT_SPAN = "recommend"
FINAL_NODE = NodeName.RECORD
SOURCE_RUN = tracking.SOURCE_RUN  # trace metadata key MLflow links a trace to its run by


@dataclass
class NodeTrace:
    """The span of one node call (None when the run is not traced) and the state keys the
    first node of a served run must add (its trace and MLflow run ids)."""

    span: Any | None = None
    update: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)  # the node's own update, once it ran


_OPEN: dict[str, TracedRun] = {}  # served runs' root spans, by trace id
_LOCK = threading.Lock()


def open_run(
    cfg: Context, run_name: str | None, inputs: dict[str, Any], tracking_uri: str | None = None
) -> TracedRun:
    """A recommendation's MLflow run and root span ``recommend`` (the one opener: a
    session's runs and served runs alike; :func:`~metallmix.tools.tracking.open_traced_run`)."""
    return tracking.open_traced_run(
        cfg.experiment,
        kind=recording.KIND,
        root_span=ROOT_SPAN,
        inputs=inputs,
        run_name=run_name,
        tracking_uri=tracking_uri or settings.tracking_uri(),
    )


def _served_root(
    state: RecommendationState, cfg: Context
) -> tuple[TracedRun | None, dict[str, Any]]:
    """This served run's open root (made on its first node), or None when it is untracked."""
    if not cfg.track:
        return None, {}
    if state.trace_id:
        with _LOCK:
            return _OPEN.get(state.trace_id), {}
    inputs = {
        "data": state.data,
        "dataset_name": state.dataset_name,
        "modality": state.modality,
        "served": True,
    }
    opened = open_run(cfg, state.dataset_name or None, inputs)
    with _LOCK:
        _OPEN[opened.root.trace_id] = opened
    return opened, {"trace_id": opened.root.trace_id, "mlflow_run_id": opened.run_id}


def _finish(opened: TracedRun, *, failed: bool, outputs: Any = None) -> None:
    with _LOCK:
        _OPEN.pop(opened.root.trace_id, None)
    tracking.close_traced_run(opened, "FAILED" if failed else "FINISHED", outputs=outputs)


@contextmanager
def node_span(key: str, node: str, state: RecommendationState, cfg: Context) -> Iterator[NodeTrace]:
    """The span of one node call: a child of the root the session opened, or of the
    caller's own active span, or of this served run's root (opened on its first node, closed
    after ``record``), or none when untracked."""
    import mlflow  # slow to import: loaded at the first node, not at graph import

    given = cfg.resources.trace if cfg.resources is not None else None
    if given is not None:  # the session's run: it closes the root
        span = mlflow.start_span_no_context(name=key, parent_span=given.root)
        try:
            yield NodeTrace(span=span)
        except BaseException:
            with contextlib.suppress(Exception):  # never replace the node's own error
                span.end(status="ERROR")
            raise
        span.end()
        return
    if mlflow.get_current_active_span() is not None:  # inside the caller's own span
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
