"""The Quick-Tune importer: the public meta-dataset's version folder (``table.csv``, curves)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from metallmix.tools.kb.importers import Imported, Importer, register_importer
from metallmix.tools.kb.quicktune import QuickTuneSource, read_quicktune


@register_importer
class QuickTuneImporter(Importer):
    name = "quicktune"
    description = "the public Quick-Tune meta-dataset (a version folder holding table.csv)"

    def __init__(self, datasets: str | Sequence[str] | None = None) -> None:
        if isinstance(datasets, str):  # "BRD,AWA" from --datasets or --option datasets=...
            datasets = datasets.split(",")
        self.datasets = list(datasets) if datasets is not None else None
        self._source: QuickTuneSource | None = None
        self._chosen: list[str] = []

    def check(self, location: str) -> None:
        """Read and validate the folder and the chosen datasets (fast: no records yet)."""
        self._source = read_quicktune(Path(location))
        self._chosen = self._source.select(self.datasets)

    def _checked(self, location: str) -> QuickTuneSource:
        if self._source is None:
            self.check(location)
        assert self._source is not None
        return self._source

    def reading(self, location: str) -> tuple[str, int | None]:
        source = self._checked(location)
        return f"reading Quick-Tune {source.version}", source.count(self._chosen)

    def read(self, location: str, on_record: Callable[[int], None]) -> Imported:
        source = self._checked(location)
        records = source.records(self._chosen, on_record=on_record)
        details: dict[str, object] = {
            "datasets": self._chosen,
            "version": source.version,
            "completed_runs": source.completed_count(self._chosen),
            "clipped_values": source.clipped,
        }
        return Imported(records, f"Quick-Tune {source.version}", details)
