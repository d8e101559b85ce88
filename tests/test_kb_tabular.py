"""CSV/Parquet export and import: lossless round trips, strict errors, the CLI verbs."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from metallmix.cli import main
from metallmix.errors import ImportFormatError, KnowledgeBaseError
from metallmix.tools.kb.records import Hyperparameters, Outcomes, Provenance, RunRecord
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.kb.tabular import columns, export_records, import_csv, read_records
from metallmix.tools.metafeatures import MetaFeatures


def make_record(run_id: str, **changes: object) -> RunRecord:
    base = RunRecord(
        run_id=run_id,
        source="own",
        provenance=Provenance(
            mlflow_run_id="abc123",
            tracking_uri="sqlite:///x.db",
            file='runs, "quoted".csv',
            row=7,
            notes={"epoch_budget": 50, "note": "line1\nline2", "ok": True, "none": None},
        ),
        dataset="breastmnist/sub200",
        dataset_group="breastmnist",
        meta_features=MetaFeatures(
            n_images=200,
            n_classes=2,
            imbalance_ratio=2.5,
            class_entropy=0.863,
            normalized_entropy=0.863,
            resolution_h=28,
            resolution_w=28,
            channels=1,
            class_size_mean=100.0,
            class_size_std=30.0,
            class_size_min=57,
            class_size_max=143,
            modality="breast ultrasound",
            images_per_class=100.0,
            min_class_fraction=0.285,
            pixel_mean=0.1 + 0.2,  # not representable exactly: checks float fidelity
            pixel_std=1e-17,
        ),
        model="resnet18",
        pretrained=True,
        weights_tag="a1_in1k",
        hyperparameters=Hyperparameters(
            lr=3e-4,
            batch_size=32,
            optimizer="adamw",
            weight_decay=0.05,
            epochs=10,
            scheduler="cosine",
            augmentation="",  # empty string, distinct from None
            label_smoothing=0.1,
            extra={"mixup": 0.2, "warmup_epochs": 3, "amp": False, "betas": "[0.9, 0.999]"},
        ),
        outcomes=Outcomes(
            val_accuracy=0.8125,
            test_accuracy=0.79,
            train_seconds=12.5,
            seconds_per_epoch=1.25,
            epochs_run=10,
            learning_curve=[0.5, 0.6, 0.7, 0.8125],
        ),
        status="ok",
        seed=0,
        created_at=datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC),
    )
    return base.model_copy(update=changes)


RECORDS = [
    make_record("own:1"),
    make_record("own:2", provenance=Provenance(row="row-b"), seed=None, weights_tag=None),
    make_record(
        "qt:3",
        source="quicktune",
        hyperparameters=Hyperparameters(),
        outcomes=Outcomes(),
        status="diverged",
    ),
]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_is_lossless(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"kb{suffix}"
    assert export_records(RECORDS, path) == 3
    back = read_records(path)
    assert [r.model_dump_json() for r in back] == [r.model_dump_json() for r in RECORDS]
    assert back[0].provenance.row == 7 and back[1].provenance.row == "row-b"
    assert back[0].hyperparameters.augmentation == ""
    assert back[1].hyperparameters.augmentation == ""
    assert back[2].hyperparameters.augmentation is None
    assert isinstance(back[0].hyperparameters.extra["warmup_epochs"], int)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_parquet_records_schema_version(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from metallmix.tools.kb.records import KB_SCHEMA_VERSION
    from metallmix.tools.kb.tabular import SCHEMA_KEY

    path = tmp_path / "kb.parquet"
    export_records(RECORDS, path)
    table = pq.read_table(path)
    assert table.schema.metadata[SCHEMA_KEY.encode()] == str(KB_SCHEMA_VERSION).encode()
    newer = table.replace_schema_metadata({SCHEMA_KEY: str(KB_SCHEMA_VERSION + 1)})
    pq.write_table(newer, tmp_path / "newer.parquet")
    with pytest.raises(ImportFormatError, match=r"schema version \d+.*upgrade metallmix"):
        read_records(tmp_path / "newer.parquet")


def test_empty_export_round_trips(tmp_path: Path) -> None:
    for suffix in (".csv", ".parquet"):
        path = tmp_path / f"empty{suffix}"
        assert export_records([], path) == 0
        assert read_records(path) == []


def test_columns_cover_the_schema() -> None:
    names = [c.name for c in columns()]
    assert len(names) == len(set(names))
    for required in ("run_id", "hp_extra", "out_learning_curve", "prov_notes", "mf_n_images"):
        assert required in names


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


MINIMAL_HEADER = [
    "dataset",
    "model",
    "mf_n_images",
    "mf_n_classes",
    "mf_resolution_h",
    "mf_resolution_w",
    "mf_channels",
    "mf_class_size_mean",
    "mf_images_per_class",
    "hp_lr",
    "out_val_accuracy",
]


def test_import_csv_minimal_and_idempotent(tmp_path: Path) -> None:
    rows = [
        ["cifar-like", "resnet18", "5000", "10", "32", "32", "3", "500", "500", "0.001", "0.91"],
        ["cifar-like", "vit_tiny", "5000", "10", "32", "32", "3", "500", "500", "", "0.88"],
    ]
    path = write_csv(tmp_path / "mine.csv", MINIMAL_HEADER, rows)
    records = import_csv(path)
    assert [r.source for r in records] == ["csv", "csv"]
    assert records[0].hyperparameters.lr == 0.001 and records[1].hyperparameters.lr is None
    assert records[0].provenance.file == "mine.csv" and records[0].provenance.row == 2
    assert all(r.run_id.startswith("csv:") for r in records)
    # Same rows reordered: same ids, so a second import inserts nothing.
    again = import_csv(write_csv(tmp_path / "again.csv", MINIMAL_HEADER, rows[::-1]))
    assert {r.run_id for r in again} == {r.run_id for r in records}
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    assert kb.add(records).inserted == 2
    assert kb.add(again).inserted == 0


def test_csv_errors_name_file_row_and_column(tmp_path: Path) -> None:
    good = ["d", "m", "10", "2", "8", "8", "1", "5", "5", "0.1", "0.5"]
    with pytest.raises(ImportFormatError, match=r"unknown column\(s\) 'learning_rate'"):
        import_csv(write_csv(tmp_path / "a.csv", [*MINIMAL_HEADER, "learning_rate"], [good]))
    with pytest.raises(ImportFormatError, match=r"'hp_lrr' \(did you mean 'hp_lr'\?\)"):
        import_csv(write_csv(tmp_path / "b.csv", [*MINIMAL_HEADER, "hp_lrr"], [[*good, "1"]]))
    bad_int = good.copy()
    bad_int[2] = "ten"
    with pytest.raises(ImportFormatError, match=r"c\.csv line 3, column 'mf_n_images': 'ten'"):
        import_csv(write_csv(tmp_path / "c.csv", MINIMAL_HEADER, [good, bad_int]))
    out_of_range = good.copy()
    out_of_range[-1] = "91.0"  # a percentage where a fraction is expected
    with pytest.raises(ImportFormatError, match=r"d\.csv line 2: invalid run \(out_val_accuracy"):
        import_csv(write_csv(tmp_path / "d.csv", MINIMAL_HEADER, [out_of_range]))
    with pytest.raises(ImportFormatError, match=r"required column\(s\) model missing"):
        import_csv(write_csv(tmp_path / "e.csv", ["dataset"], [["d"]]))
    with pytest.raises(ImportFormatError, match="does not exist"):
        import_csv(tmp_path / "missing.csv")
    with pytest.raises(ImportFormatError, match="line 2: 2 cells, the header has 11"):
        import_csv(write_csv(tmp_path / "f.csv", MINIMAL_HEADER, [["a", "b"]]))


def test_read_records_errors(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    export_records([RECORDS[0], RECORDS[0]], path)
    with pytest.raises(ImportFormatError, match=r"line 3: run_id own:1 repeats line 2"):
        read_records(path)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ImportFormatError, match="not a readable Parquet file"):
        read_records(tmp_path / "junk.parquet")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(KnowledgeBaseError, match=r"unsupported format \.json"):
        read_records(tmp_path / "x.json")
    with pytest.raises(KnowledgeBaseError, match=r"unsupported format \.txt"):
        export_records(RECORDS, tmp_path / "out.txt")
    lines = (tmp_path / "dup.csv").read_text().splitlines()
    broken = lines[1].replace("[0.5, 0.6, 0.7, 0.8125]", "[0.5, 0.6")
    (tmp_path / "bad_json.csv").write_text("\n".join([lines[0], broken]) + "\n")
    with pytest.raises(ImportFormatError, match=r"line 2, column 'out_learning_curve'"):
        read_records(tmp_path / "bad_json.csv")


def test_cli_export_import(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src.sqlite"
    SQLiteKnowledgeBase(src).add(RECORDS)
    for suffix in (".csv", ".parquet"):
        out = tmp_path / f"export{suffix}"
        assert main(["kb", "export", str(out), "--kb", str(src), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["rows"] == 3
        dst = tmp_path / f"dst{suffix}.sqlite"
        assert main(["kb", "import", str(out), "--kb", str(dst), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert (summary["inserted"], summary["skipped"]) == (3, 0)
        assert SQLiteKnowledgeBase(dst).content_hash() == SQLiteKnowledgeBase(src).content_hash()
        assert main(["kb", "import", str(out), "--kb", str(dst), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["skipped"] == 3

    assert main(["kb", "export", str(tmp_path / "q.csv"), "--kb", str(src), "--source", "quicktune",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["rows"] == 1

    # A file with one bad row imports nothing.
    lines = (tmp_path / "export.csv").read_text().splitlines()
    bad = lines[2].replace(",own,", ",nonsense,", 1)
    (tmp_path / "bad.csv").write_text("\n".join([lines[0], lines[1], bad]) + "\n")
    dst = tmp_path / "untouched.sqlite"
    assert main(["kb", "import", str(tmp_path / "bad.csv"), "--kb", str(dst)]) == 2
    assert "line 3: invalid run (source" in capsys.readouterr().err
    assert len(SQLiteKnowledgeBase(dst)) == 0

    assert main(["kb", "import-csv", str(tmp_path / "export.csv"), "--kb", str(dst), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inserted"] == 3
