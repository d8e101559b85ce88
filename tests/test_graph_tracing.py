"""A graph run not started by the API (LangGraph Studio, a script invoking the compiled graph)
leaves the same trace as an API run: root span ``recommend`` with one child per node, linked
to its MLflow run (graphs/tracing.py). Scripted LLM, real LangGraph and MLflow; the real
server twin is ``test_studio.py::test_studio_streams_every_node_of_a_real_run``."""

from __future__ import annotations

from typing import Any

import pytest
from test_graph_unit import GOOD, SCORES, make_shortlist

from metallmix import api
from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.graphs import tracing
from metallmix.graphs.configuration import Context
from metallmix.graphs.graph import build_graph
from metallmix.graphs.resources import RunResources, resolve_kb
from metallmix.tools import tracking

NODE_SPANS = {"recommend", "features", "retrieve", "shortlist", "evidence", "recommender_1"}


def _served_run(llm: ScriptedLLM, **inputs: Any) -> dict[str, Any]:
    """The compiled graph invoked directly, as the LangGraph server does: no API wrapper,
    no active MLflow run or span."""
    shortlist = make_shortlist()
    state = {
        "shortlist": shortlist,
        "meta_features": shortlist.meta_features,
        "dataset_name": "breast",
        **inputs,
    }
    # live resources, as a session passes them, but no run opened: the graph opens its own
    context = Context(track=True, resources=RunResources(resolve_kb(None), llm))
    out: dict[str, Any] = build_graph(internal_inputs=True).invoke(state, context=context)
    return out


def _spans(run_id: str) -> tuple[Any, list[Any]]:
    client = tracking.client()
    run = client.get_run(run_id)
    traces = client.search_traces(locations=[run.info.experiment_id], run_id=run_id)
    assert len(traces) == 1, f"expected one trace linked to run {run_id}, got {len(traces)}"
    return run, traces[0].data.spans


def test_a_served_run_has_the_api_runs_spans() -> None:
    final = _served_run(ScriptedLLM([GOOD, SCORES]))
    run_id = final["mlflow_run_id"]
    assert run_id and final["recommendation"].mlflow_run_id == run_id
    run, spans = _spans(run_id)
    assert run.info.status == "FINISHED"
    names = {s.name for s in spans}
    assert NODE_SPANS | {"judge_1", "record"} <= names
    root = next(s for s in spans if s.name == "recommend")
    assert root.parent_id is None
    assert all(s.parent_id == root.span_id for s in spans if s is not root)
    assert root.outputs["model"] == final["recommendation"].model
    assert tracing.open_runs() == 0
    # the API's own trace of the same answer has the same span names
    rec = api.recommend(
        None, llm=ScriptedLLM([GOOD, SCORES]), shortlist=make_shortlist(), name="breast"
    )
    assert rec.mlflow_run_id
    assert {s.name for s in _spans(rec.mlflow_run_id)[1]} == names


def test_a_failing_served_run_closes_its_trace_and_run() -> None:
    llm = ScriptedLLM([GOOD])  # the judge's grading finds the script empty: the node raises
    with pytest.raises(Exception, match=r"(?i)script|scripted|no more"):
        _served_run(llm)
    assert tracing.open_runs() == 0
    client = tracking.client()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], order_by=["start_time DESC"]
    )
    assert runs and runs[0].info.status == "FAILED"
    _, spans = _spans(runs[0].info.run_id)
    root = next(s for s in spans if s.name == "recommend")
    assert str(root.status.status_code).endswith("ERROR")


def test_an_untracked_served_run_opens_nothing() -> None:
    shortlist = make_shortlist()
    context = Context(
        track=False, resources=RunResources(resolve_kb(None), ScriptedLLM([GOOD, SCORES]))
    )
    final = build_graph(internal_inputs=True).invoke(
        {"shortlist": shortlist, "meta_features": shortlist.meta_features},
        context=context,
    )
    assert final.get("mlflow_run_id") is None and final.get("trace_id") is None
    assert tracing.open_runs() == 0
