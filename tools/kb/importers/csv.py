"""The CSV importer: a hand-made table in the column layout of ``kb export``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from metallmix.tools.kb.importers import Imported, Importer, register_importer
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.tabular import import_csv


@register_importer
class CsvImporter(Importer):
    name = "csv"
    description = "a CSV in the column layout of `kb export` (source 'csv' unless a column says)"

    def __init__(self) -> None:
        self._parsed: tuple[str, list[RunRecord]] | None = None

    def check(self, location: str) -> None:
        """Parse the whole file before the KB is opened: a bad header or row must not leave
        a new, empty KB behind. A hand-made table is small; ``read`` reuses the parse."""
        self._parsed = (location, import_csv(Path(location)))

    def read(self, location: str, on_record: Callable[[int], None]) -> Imported:
        if self._parsed is None or self._parsed[0] != location:
            self.check(location)
        assert self._parsed is not None
        records = self._parsed[1]
        details: dict[str, object] = {"file": location, "rows": len(records)}
        return Imported(records, location, details)
