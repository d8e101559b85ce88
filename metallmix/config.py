"""Where MetaLLMiX keeps its state, resolved from environment variables.

Centralised so that the CLI, the Python API, tests and benchmarks agree on the same
locations: the knowledge base (``METALLMIX_KB``), the MLflow tracking store
(``MLFLOW_TRACKING_URI``) and the cache for derived artefacts (``METALLMIX_HOME``).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACT_ROOT = "mlruns/artifacts"


def home_dir() -> Path:
    """The user's workspace for mutable state (workspace KB, caches, fitted models)."""
    env = os.environ.get("METALLMIX_HOME")
    path = Path(env).expanduser() if env else Path.home() / ".metallmix"
    return path


def cache_dir() -> Path:
    """Cache for reproducible derived artefacts (assembled GGUF files, fitted meta-learners)."""
    env = os.environ.get("METALLMIX_CACHE")
    return Path(env).expanduser() if env else home_dir() / "cache"


def workspace_kb_path() -> Path:
    """The user's own KB store, layered over the shipped one by default."""
    return home_dir() / "kb.sqlite"


def bundled_kb_path() -> Path:
    """The read-only knowledge base shipped inside the package."""
    return Path(str(resources.files("metallmix") / "data" / "kb.sqlite"))


def kb_uri() -> str | None:
    """The explicit KB selection from ``METALLMIX_KB``, or None for the layered default."""
    value = os.environ.get("METALLMIX_KB")
    return value or None


def tracking_uri() -> str:
    """The MLflow tracking URI: ``MLFLOW_TRACKING_URI`` or the local SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository, used by tests and benchmarks when present."""
    env = os.environ.get("METALLMIX_SHARED")
    if env:
        return Path(env)
    candidates = [
        Path(__file__).resolve().parent.parent.parent / "shared" / "data",
        Path.cwd().resolve().parent / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[-1]
