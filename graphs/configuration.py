"""Run-time settings of the graph: the run's context (LangGraph 1.x) and ``configurable``.

:class:`Context` is the graph's ``context_schema``: the form LangGraph Studio shows (``llm``,
``kb``, ``seed``, ``n_candidates``, ``compute``...), sent by Studio and the SDK as plain values. The
Python API passes the same names, plus live objects (``llm_instance``, ``kb_instance``) so a
loaded model is reused, in ``config["configurable"]``; both are read, ``configurable`` wins.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Annotated, Any, Literal

from langchain_core.runnables import RunnableConfig
from pydantic import Field


@dataclass
class Context:
    """What a user may set per run (Studio's configuration form)."""

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
    choose: Annotated[
        Literal["llm", "top1"],
        Field(description="'top1': the LLM explains the top candidate; 'llm': it chooses"),
    ] = "top1"
    track: Annotated[bool, Field(description="record the decision as an MLflow run")] = True


@dataclass
class Configuration:
    """Which LLM and KB to use, the seed and the shortlist/judge settings."""

    llm: str | None = None  # registry name, profile ('fast', 'default') or .gguf path
    kb: str | None = None  # .sqlite path; None = METALLMIX_KB or the layered default
    seed: int = 0
    n_candidates: int = 5
    space: str | None = None  # search-space name; None = the compute regime's space
    compute: str | None = None  # 'cpu' | 'gpu'; None = torch.cuda.is_available()
    judge_with_llm: bool = True
    # "top1": the LLM explains the meta-learner's top candidate; "llm": it chooses among the
    # top 3. top1 is the default: on bench/judge_quality.py's runs the 0.5B model picked c2
    # in 5 of 5 inputs whatever the evidence, and on the LODO folds measured so far its pick
    # was not better than the top-1 (bench/results/judge_quality_*.md).
    choose: Literal["llm", "top1"] = "top1"
    track: bool = True  # record the decision as an MLflow run
    experiment: str = "metallmix-recommendations"
    llm_instance: Any = None
    kb_instance: Any = None

    @classmethod
    def from_runnable_config(cls, config: RunnableConfig | None = None) -> Configuration:
        configurable = dict((config or {}).get("configurable") or {})
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in _run_context().items() if k in names}
        values.update({k: v for k, v in configurable.items() if k in names})
        if values.get("llm") in (None, "") and os.environ.get("METALLMIX_LLM"):
            values["llm"] = os.environ["METALLMIX_LLM"]
        return cls(**values)


def _run_context() -> dict[str, Any]:
    """The context the current graph run was started with (empty outside a run)."""
    try:
        from langgraph.runtime import get_runtime

        context = get_runtime().context
    except Exception:  # not inside a graph run, or no context given
        return {}
    if context is None:
        return {}
    if is_dataclass(context) and not isinstance(context, type):
        values = asdict(context)
    elif isinstance(context, dict):
        values = dict(context)
    else:
        return {}
    return {k: (None if v == "" else v) for k, v in values.items()}  # Studio's empty fields
