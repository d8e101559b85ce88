"""Run-time settings of the graph, read from ``config["configurable"]``.

Studio and the SDK send plain values (``llm``, ``kb``, ``seed``...); the Python API may also
pass live objects (``llm_instance``, ``kb_instance``) so a loaded model is reused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig


@dataclass
class Configuration:
    """Which LLM and KB to use, the seed and the shortlist/judge settings."""

    llm: str | None = None  # registry name, profile ('fast', 'default') or .gguf path
    kb: str | None = None  # .sqlite path; None = METALLMIX_KB or the layered default
    seed: int = 0
    n_candidates: int = 5
    space: str | None = None  # search-space name; None = inferred from the KB's models
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
        values = {k: v for k, v in configurable.items() if k in names}
        if values.get("llm") in (None, "") and os.environ.get("METALLMIX_LLM"):
            values["llm"] = os.environ["METALLMIX_LLM"]
        return cls(**values)
