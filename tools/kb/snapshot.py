"""A knowledge base's records read once and held in memory, with their content hash.

One recommendation consults the KB in several graph nodes (retrieval, the shortlist, the
SHAP facts) and every fitted model is cached by the KB's content hash. Reading and hashing
the store once, into a snapshot, gives every node the same content at the cost of one read
(the store itself may grow meanwhile, e.g. a validation run being added).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from metallmix.errors import KnowledgeBaseError
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.store import AddResult, KnowledgeBase


class KBSnapshot(KnowledgeBase):
    """Read-only records in run-id order (the store's order), hashed at most once."""

    def __init__(
        self, records: Iterable[RunRecord], location: str, layers: list[str] | None = None
    ) -> None:
        self._records = sorted(records, key=lambda r: r.run_id)
        self._location = location
        self._layers = list(layers) if layers is not None else [location]
        self._hash: str | None = None

    @classmethod
    def of(cls, kb: KnowledgeBase) -> KBSnapshot:
        """``kb``'s content now (one read)."""
        if isinstance(kb, KBSnapshot):
            return kb
        return cls(kb.iter_records(), kb.location, kb.layers())

    @property
    def location(self) -> str:
        return self._location

    def layers(self) -> list[str]:
        return list(self._layers)

    @property
    def runs(self) -> list[RunRecord]:
        """Every record (a list: the snapshot is already in memory)."""
        return self._records

    def add(self, records: Iterable[RunRecord]) -> AddResult:
        raise KnowledgeBaseError(
            f"{self.location} is a read-only snapshot; add runs to the store it was read from"
        )

    def iter_records(self) -> Iterator[RunRecord]:
        return iter(self._records)

    def run_ids(self) -> set[str]:
        return {r.run_id for r in self._records}

    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = super().content_hash()
        return self._hash
