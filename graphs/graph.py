"""The recommendation graph: features -> retrieve -> shortlist -> evidence -> recommender ->
judge -> (record | one more recommender attempt | fallback -> record); a recommender or
judge whose LLM died, hung or could not load goes straight to the fallback.

``graph`` is the compiled graph LangGraph Studio loads (``langgraph.json`` names the module
``metallmix.graphs.graph``, so it loads from any folder once the package is installed);
:func:`build_graph` builds a fresh one. What Studio shows comes from the schemas: the input
form is :class:`RecommendationInput` (4 fields, not the 18 of the internal state), the output
:class:`RecommendationOutput`, the configuration form :class:`Context`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from metallmix.errors import MetaLLMiXError
from metallmix.graphs import nodes
from metallmix.graphs.configuration import Context
from metallmix.graphs.state import (
    RecommendationInput,
    RecommendationOutput,
    RecommendationState,
)
from metallmix.node_names import NodeName


class UserInputError(ValueError):
    """A :class:`MetaLLMiXError` raised inside a served graph, re-raised as a ``ValueError``.

    The LangGraph server streams the message of a ``ValueError`` but replaces that of any
    other exception type with "An internal error occurred", which hides what the user must
    fix (a mistyped dataset path, an empty KB). The original error is the ``__cause__``.
    """


def _surface_errors(fn: nodes.Node) -> nodes.Node:
    @wraps(fn)
    def wrapper(state: RecommendationState, runtime: Runtime[Context]) -> dict[str, Any]:
        try:
            return fn(state, runtime)
        except MetaLLMiXError as exc:
            raise UserInputError(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


def build_graph(*, internal_inputs: bool = False, surface_errors: bool | None = None) -> Any:
    """Compile the recommender -> judge graph (no checkpointer: each run stands alone).

    ``internal_inputs=True`` (the Python API) accepts the whole state as input, e.g. a
    precomputed ``shortlist`` and ``max_attempts``; otherwise only :class:`RecommendationInput`.
    ``surface_errors`` (default: for the served graph, not the API's) re-raises user errors as
    :class:`UserInputError` so the server streams their message.
    """
    wrap: Callable[[nodes.Node], nodes.Node] = (
        _surface_errors
        if (surface_errors if surface_errors is not None else not internal_inputs)
        else (lambda fn: fn)
    )
    builder = StateGraph(
        RecommendationState,
        context_schema=Context,
        input_schema=RecommendationState if internal_inputs else RecommendationInput,
        output_schema=RecommendationOutput,
    )
    N = NodeName
    builder.add_node(N.FEATURES, wrap(nodes.features))
    builder.add_node(N.RETRIEVE, wrap(nodes.retrieve))
    builder.add_node(N.SHORTLIST, wrap(nodes.shortlist))
    builder.add_node(N.EVIDENCE, wrap(nodes.evidence))
    builder.add_node(N.RECOMMENDER, wrap(nodes.recommender))
    builder.add_node(N.JUDGE, wrap(nodes.judge))
    builder.add_node(N.FALLBACK, wrap(nodes.fallback))
    builder.add_node(N.RECORD, wrap(nodes.record))
    builder.add_edge(START, N.FEATURES)
    builder.add_edge(N.FEATURES, N.RETRIEVE)
    builder.add_edge(N.RETRIEVE, N.SHORTLIST)
    builder.add_edge(N.SHORTLIST, N.EVIDENCE)
    builder.add_edge(N.EVIDENCE, N.RECOMMENDER)
    builder.add_conditional_edges(N.RECOMMENDER, nodes.after_recommender, [N.JUDGE, N.FALLBACK])
    builder.add_conditional_edges(N.JUDGE, nodes.after_judge, [N.RECORD, N.RECOMMENDER, N.FALLBACK])
    builder.add_edge(N.FALLBACK, N.RECORD)
    builder.add_edge(N.RECORD, END)
    return builder.compile(name="metallmix-recommender")


graph = build_graph()
