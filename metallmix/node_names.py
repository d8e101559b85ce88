"""The recommendation graph's node names, written once.

A node's name is its LangGraph node, its trace span (``recommender_1`` ... for the attempts),
its ``latency_<name>_s`` MLflow metric, its progress line and what ``recommend(on_node=...)``
receives. They were string literals in three places (``graphs/graph.py``, ``@timed`` in
``graphs/nodes.py``, ``progress.NODE_TEXT``); a typo in one of them silently lost a progress
line or a span. This is a core module (it imports nothing of the project) so that
``progress.py``, which sits below the graph, can key its lines by it too.
"""

from __future__ import annotations

from enum import StrEnum


class NodeName(StrEnum):
    """One member per graph node, in the order a run visits them. A ``StrEnum``: each
    member *is* its string, so ``NodeName.JUDGE == "judge"`` and LangGraph, MLflow and user
    hooks see plain names."""

    FEATURES = "features"
    RETRIEVE = "retrieve"
    SHORTLIST = "shortlist"
    # the SHAP facts, waterfall numbers and the id'd evidence the LLM and judge read
    EVIDENCE = "evidence"
    RECOMMENDER = "recommender"
    JUDGE = "judge"
    FALLBACK = "fallback"
    RECORD = "record"
