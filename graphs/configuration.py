"""Run-time settings of the graph: the run's context (LangGraph 1.x ``context_schema``).

:class:`Context` is the one settings object of a graph run. Its form fields (``llm``,
``kb``, ``seed``, ``n_candidates``, ``compute``...) are what LangGraph Studio shows and what
Studio and the SDK send as plain values; :func:`metallmix.Session.recommend` sends the same
fields plus ``resources``, the live objects of the run (the KB snapshot, the session's
meta-learners, the LLM handle; :class:`~metallmix.graphs.resources.RunResources`), hidden
from the form. Nodes take the context from their ``runtime`` argument, built once per run
by LangGraph; a run given plain values only resolves its resources from them on the first
node that needs them (:func:`resources_of`) and keeps them on the context for the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Annotated, Literal

from langgraph.runtime import Runtime
from pydantic import ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from metallmix.graphs.resources import RunResources

EXPERIMENT = "metallmix-recommendations"  # the MLflow experiment of recommendation runs


@dataclass
class Context:
    """What a user may set per run (Studio's configuration form), and the run's live
    resources when a session passes them."""

    __pydantic_config__ = ConfigDict(arbitrary_types_allowed=True)  # ``resources``

    llm: Annotated[
        str | None,
        Field(description="LLM: 'fast' (0.5B), 'default' (1.5B), a registry name or a .gguf path"),
    ] = None
    kb: Annotated[
        str | None,
        Field(description="knowledge-base .sqlite path (empty: METALLMIX_KB or the default KB)"),
    ] = None
    seed: Annotated[int, Field(description="seed of the shortlist sampler and the LLM")] = 0
    n_candidates: Annotated[int, Field(ge=1, description="shortlist size")] = 5
    space: Annotated[
        str | None,
        Field(description="search space: 'cpu-zoo' or 'quicktune' (empty: from the KB)"),
    ] = None
    compute: Annotated[
        Literal["cpu", "gpu"] | None,
        Field(
            description="your compute: 'cpu' (small models trained on a CPU) or 'gpu' "
            "(fine-tune a pretrained model); empty: gpu when torch sees CUDA, else cpu"
        ),
    ] = None
    judge_with_llm: Annotated[
        bool, Field(description="let the LLM grade the answer after the code checks")
    ] = True
    # "top1": the LLM explains the meta-learner's top candidate; "llm": it chooses among the
    # top 3. top1 is the default: on bench/judge_quality.py's runs the 0.5B model picked c2
    # in 5 of 5 inputs whatever the evidence, and on the LODO folds measured so far its pick
    # was not better than the top-1 (bench/results/judge_quality_*.md).
    choose: Annotated[
        Literal["llm", "top1"],
        Field(description="'top1': the LLM explains the top candidate; 'llm': it chooses"),
    ] = "top1"
    track: Annotated[bool, Field(description="record the decision as an MLflow run")] = True
    experiment: SkipJsonSchema[str] = EXPERIMENT
    resources: SkipJsonSchema[RunResources | None] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):  # Studio sends an empty form field as ""
            if getattr(self, f.name) == "":
                setattr(self, f.name, None)
        if self.llm is None and os.environ.get("METALLMIX_LLM"):
            self.llm = os.environ["METALLMIX_LLM"]
        if self.experiment is None:
            self.experiment = EXPERIMENT


def context_of(runtime: Runtime[Context] | None) -> Context:
    """The run's context; the defaults (with the environment's LLM) when none was given."""
    context = runtime.context if runtime is not None else None
    if isinstance(context, Context):
        return context
    if isinstance(context, dict):  # a context LangGraph did not coerce (no schema)
        return Context(**context)
    return Context()


def resources_of(context: Context) -> RunResources:
    """The run's live resources: the session's, else resolved from the plain ``kb`` and
    ``llm`` fields on first use and kept on the context, so every node of the run shares
    them (one KB read, one model load)."""
    if context.resources is None:
        context.resources = RunResources.named(context.kb, context.llm)
    return context.resources
