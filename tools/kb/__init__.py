"""The knowledge base of past training runs: records, stores, importers."""

from metallmix.tools.kb.records import (
    KB_SCHEMA_VERSION,
    Hyperparameters,
    Outcomes,
    Provenance,
    RunRecord,
)
from metallmix.tools.kb.store import (
    AddResult,
    KBInfo,
    KnowledgeBase,
    LayeredKnowledgeBase,
    SQLiteKnowledgeBase,
    open_kb,
)

__all__ = [
    "KB_SCHEMA_VERSION",
    "AddResult",
    "Hyperparameters",
    "KBInfo",
    "KnowledgeBase",
    "LayeredKnowledgeBase",
    "Outcomes",
    "Provenance",
    "RunRecord",
    "SQLiteKnowledgeBase",
    "open_kb",
]
