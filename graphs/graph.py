"""The recommendation graph: features -> retrieve -> shortlist -> explain -> recommender ->
judge -> (record | one more recommender attempt | fallback -> record).

``graph`` is the compiled graph LangGraph Studio loads (see ``langgraph.json``);
:func:`build_graph` builds a fresh one for the Python API.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from metallmix.graphs import nodes
from metallmix.graphs.state import RecommendationState

NODE_ORDER = (
    "features",
    "retrieve",
    "shortlist",
    "explain",
    "recommender",
    "judge",
    "fallback",
    "record",
)


def build_graph() -> Any:
    """Compile the recommender -> judge graph (no checkpointer: each run stands alone)."""
    builder = StateGraph(RecommendationState)
    builder.add_node("features", nodes.features)
    builder.add_node("retrieve", nodes.retrieve)
    builder.add_node("shortlist", nodes.shortlist)
    builder.add_node("explain", nodes.explain)
    builder.add_node("recommender", nodes.recommender)
    builder.add_node("judge", nodes.judge)
    builder.add_node("fallback", nodes.fallback)
    builder.add_node("record", nodes.record)
    builder.add_edge(START, "features")
    builder.add_edge("features", "retrieve")
    builder.add_edge("retrieve", "shortlist")
    builder.add_edge("shortlist", "explain")
    builder.add_edge("explain", "recommender")
    builder.add_edge("recommender", "judge")
    builder.add_conditional_edges("judge", nodes.after_judge, ["record", "recommender", "fallback"])
    builder.add_edge("fallback", "record")
    builder.add_edge("record", END)
    return builder.compile(name="metallmix-recommender")


graph = build_graph()
