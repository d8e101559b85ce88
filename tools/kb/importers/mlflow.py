"""The MLflow importer: training runs of an MLflow tracking store (``mlflow_import.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from metallmix.tools.kb.importers import Imported, Importer, register_importer
from metallmix.tools.kb.mlflow_import import _check_uri, scan_mlflow


@register_importer
class MlflowImporter(Importer):
    name = "mlflow"
    description = "training runs of an MLflow tracking store (its tracking URI)"

    def __init__(self, experiments: str | Sequence[str] | None = None) -> None:
        if isinstance(experiments, str):
            experiments = experiments.split(",")
        self.experiments = list(experiments) if experiments else None

    def check(self, location: str) -> None:
        _check_uri(location)  # a missing store must not be created, nor the KB

    def reading(self, location: str) -> tuple[str, int | None]:
        return f"reading MLflow runs from {location}", None

    def read(self, location: str, on_record: Callable[[int], None]) -> Imported:
        scan = scan_mlflow(location, self.experiments, on_run=on_record)
        details: dict[str, object] = {
            "tracking_uri": location,
            "experiments": scan.experiments,
            "not_importable": len(scan.skipped),
            "not_importable_runs": [{"run_id": r, "reason": why} for r, why in scan.skipped],
        }
        notes = [f"skipped MLflow run {run_id}: {reason}" for run_id, reason in scan.skipped]
        return Imported(scan.records, f"MLflow {location}", details, notes)
