"""The CSV importer: a hand-made table in the column layout of ``kb export``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from metallmix.tools.kb.importers import Imported, Importer, register_importer
from metallmix.tools.kb.tabular import import_csv


@register_importer
class CsvImporter(Importer):
    name = "csv"
    description = "a CSV in the column layout of `kb export` (source 'csv' unless a column says)"

    def read(self, location: str, on_record: Callable[[int], None]) -> Imported:
        records = import_csv(Path(location))
        details: dict[str, object] = {"file": location, "rows": len(records)}
        return Imported(records, location, details)
