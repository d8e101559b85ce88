"""MetaLLMiX: zero-shot model and hyperparameter recommendation for image classification.

The public Python API is re-exported here lazily so that ``import metallmix`` stays fast
and does not pull in torch, llama.cpp or LangGraph until they are used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"  # the one version: pyproject.toml reads it (dynamic), CHANGELOG.md names it

_LAZY = {
    "MetaFeatures": ("metallmix.tools.metafeatures", "MetaFeatures"),
    "RunRecord": ("metallmix.tools.kb.records", "RunRecord"),
    "open_kb": ("metallmix.tools.kb.store", "open_kb"),
    "recommend": ("metallmix.api", "recommend"),
    "validate": ("metallmix.api", "validate"),
    "Session": ("metallmix.session", "Session"),
    "build_graph": ("metallmix.api", "build_graph"),
    "Recommendation": ("metallmix.agents.schemas", "Recommendation"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'metallmix' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
