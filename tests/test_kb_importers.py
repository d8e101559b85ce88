"""KB importers: a new source is one Importer class, reached by the CLI's import path.

Why: adding a source (e.g. OpenML) used to touch about nine files, two of them hidden
behind the closed ``Source`` Literal of ``records.py``. Here a toy importer, one class in
this module, is registered, and its runs go into a KB through ``kb import-from`` (the same
``run_import`` every ``kb import-*`` verb takes); records of an unregistered source are
refused, and the built-in importers are found without being imported by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cases import BREAST_MF
from pydantic import ValidationError

from metallmix.cli import main
from metallmix.tools.kb.importers import (
    Imported,
    Importer,
    get_importer,
    register_importer,
    run_import,
    unregister_importer,
)
from metallmix.tools.kb.records import Hyperparameters, Outcomes, RunRecord
from metallmix.tools.kb.sources import source_names
from metallmix.tools.kb.store import SQLiteKnowledgeBase


class ToyImporter(Importer):
    """Runs from a JSON list of ``{"model", "lr", "accuracy"}``, scaled by ``percent``."""

    name = "toy"
    description = "a JSON list of toy runs"

    def __init__(self, percent: str = "false") -> None:
        self.scale = 0.01 if percent == "true" else 1.0

    def check(self, location: str) -> None:
        if not Path(location).is_file():
            raise FileNotFoundError(location)

    def read(self, location: str, on_record: Callable[[int], None]) -> Imported:
        rows = json.loads(Path(location).read_text())
        records = [
            RunRecord(
                run_id=f"toy:{i}",
                source=self.name,
                dataset="breast",
                meta_features=BREAST_MF,
                model=row["model"],
                hyperparameters=Hyperparameters(lr=row["lr"]),
                outcomes=Outcomes(val_accuracy=row["accuracy"] * self.scale),
            )
            for i, row in enumerate(rows)
        ]
        on_record(len(records))
        return Imported(records, f"toy {Path(location).name}", {"rows": len(rows)})


@pytest.fixture()
def toy() -> Iterator[type[Importer]]:
    register_importer(ToyImporter)
    yield ToyImporter
    unregister_importer(ToyImporter.name)


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    path = tmp_path / "toy.json"
    rows = [
        {"model": "resnet18", "lr": 0.001, "accuracy": 81},
        {"model": "mobilenetv3_small_100", "lr": 0.01, "accuracy": 77},
    ]
    path.write_text(json.dumps(rows))
    return path


def make(source: str) -> RunRecord:
    return RunRecord(run_id="x", source=source, dataset="d", meta_features=BREAST_MF, model="m")


def test_builtin_sources_are_found_without_importing_them() -> None:
    assert set(source_names()) >= {"own", "quicktune", "mlflow", "csv"}
    assert get_importer("quicktune").name == "quicktune"
    assert make("quicktune").source == "quicktune"


def test_a_record_of_an_unregistered_source_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown source 'toy'"):
        make("toy")


def test_a_toy_importer_imports_through_the_cli(
    toy: type[Importer], runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "toy" in source_names() and make("toy").source == "toy"
    kb = tmp_path / "kb.sqlite"
    argv = ["kb", "import-from", "toy", str(runs), "--option", "percent=true", "--kb", str(kb)]
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["inserted"], summary["skipped"], summary["rows"]) == (2, 0, 2)
    assert summary["kb"] == str(kb)
    stored = SQLiteKnowledgeBase(kb).records(source="toy")
    assert sorted(r.outcomes.val_accuracy or 0 for r in stored) == [0.77, 0.81]
    assert main([*argv, "--json"]) == 0  # idempotent, like every import
    assert json.loads(capsys.readouterr().out)["skipped"] == 2


def test_a_bad_location_or_option_creates_no_kb(
    toy: type[Importer], runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb = tmp_path / "new" / "kb.sqlite"
    with pytest.raises(FileNotFoundError):
        run_import(ToyImporter(), str(tmp_path / "missing.json"), lambda: SQLiteKnowledgeBase(kb))
    assert not kb.exists()
    argv = ["kb", "import-from", "toy", str(runs), "--option", "colour=red", "--kb", str(kb)]
    assert main(argv) == 2
    assert "importer 'toy'" in capsys.readouterr().err and not kb.exists()
    assert main(["kb", "import-from", "nosuch", str(runs), "--kb", str(kb)]) == 2
    assert "no importer for source 'nosuch'" in capsys.readouterr().err
