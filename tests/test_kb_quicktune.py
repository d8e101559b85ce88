"""Quick-Tune importer: decoding, validation errors, CLI idempotency, the real meta-dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metallmix.cli import main
from metallmix.errors import ImportFormatError
from metallmix.tools.kb.quicktune import (
    QUICKTUNE_MODALITY,
    QUICKTUNE_PUBLIC_SOURCE,
    import_quicktune,
    read_quicktune,
)
from metallmix.tools.kb.store import SQLiteKnowledgeBase

HEADER = [
    "",
    "amp",
    "batch_size",
    "cat:model:resnet18",
    "cat:model:vit_tiny",
    "cat:opt:adamw",
    "cat:opt:sgd",
    "cat:opt_betas:None",
    "cat:opt_betas:[0.9, 0.999]",
    "cat:data_augmentation:None",
    "cat:data_augmentation:trivial_augment",
    "drop",
    "lr",
    "mixup",
    "smoothing",
    "warmup_epochs",
    "weight_decay",
]
ROWS = {
    "101": [1, 32, 1, 0, 1, 0, 1, 0, 1, 0, 0.1, 0.001, 0.4, 0.1, 5, 0.01],
    "202": [0, 8, 0, 1, 0, 1, 0, 1, 0, 1, 0.0, 0.0001, 0.0, 0.0, 0, 0.0],
    "303": [1, 64, 0, 1, 1, 0, 1, 0, 1, 0, 0.2, 0.01, 2.0, 0.05, 10, 0.1],
}
PERF = {
    "My Birds": {"101": [40.0, 55.5, 61.25], "202": [10.0]},
    "x-ray/2": {"303": [70.0, 90.0]},
    "info": {"version": "tiny", "metric": "Top1 Accuracy in %"},
}
COST = {"My Birds": {"101": [10.0, 12.0, 14.0], "202": [3.0]}, "x-ray/2": {"303": [5.0, 7.0]}}
DESCRIPTORS = {"My Birds": [1000, 10, 128, 3], "x-ray/2": [300, 2, 64, 1]}


def write_layout(root: Path, rows: dict[str, list[float]] | None = None) -> Path:
    """A small Quick-Tune version folder with awkward dataset names."""
    (root / "curves").mkdir(parents=True)
    (root / "meta").mkdir()
    lines = [",".join(f'"{h}"' if "," in h else h for h in HEADER)]
    for run_id, values in (rows or ROWS).items():
        lines.append(",".join([run_id, *(str(v) for v in values)]))
    (root / "table.csv").write_text("\n".join(lines) + "\n")
    (root / "curves" / "perf.json").write_text(json.dumps(PERF))
    (root / "curves" / "cost.json").write_text(json.dumps(COST))
    (root / "meta" / "descriptors.json").write_text(json.dumps(DESCRIPTORS))
    return root


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return write_layout(tmp_path / "qt" / "tiny")


def test_decodes_runs(layout: Path) -> None:
    records = {r.run_id: r for r in import_quicktune(layout)}
    assert sorted(records) == [
        "quicktune:tiny:My Birds:101",
        "quicktune:tiny:My Birds:202",
        "quicktune:tiny:x-ray/2:303",
    ]
    r = records["quicktune:tiny:My Birds:101"]
    assert r.source == "quicktune" and r.dataset == "My Birds" and r.dataset_group == "My Birds"
    assert r.model == "resnet18" and r.pretrained is True
    hp = r.hyperparameters
    assert (hp.lr, hp.batch_size, hp.optimizer, hp.weight_decay) == (0.001, 32, "adamw", 0.01)
    assert (hp.label_smoothing, hp.dropout, hp.augmentation, hp.epochs) == (0.1, 0.1, "none", None)
    assert hp.extra == {
        "amp": True,
        "mixup": 0.4,
        "warmup_epochs": 5,
        "opt_betas": None,
    }
    assert isinstance(hp.extra["warmup_epochs"], int)
    out = r.outcomes
    assert out.val_accuracy == pytest.approx(0.6125)
    assert out.learning_curve == pytest.approx([0.40, 0.555, 0.6125])
    assert out.epochs_run == 3
    assert out.train_seconds == pytest.approx(36.0)
    assert out.seconds_per_epoch == pytest.approx(12.0)
    mf = r.meta_features
    assert (mf.n_images, mf.n_classes, mf.resolution_h, mf.resolution_w) == (1000, 10, 128, 128)
    assert mf.channels == 3 and mf.class_size_mean == 100.0 and mf.images_per_class == 100.0
    assert mf.imbalance_ratio is None and mf.class_entropy is None  # unknown, not invented
    assert mf.modality == QUICKTUNE_MODALITY
    assert r.provenance.public_source == QUICKTUNE_PUBLIC_SOURCE
    assert r.provenance.file == "table.csv" and r.provenance.row == "101"
    other = records["quicktune:tiny:My Birds:202"].hyperparameters
    assert other.extra["opt_betas"] == "[0.9, 0.999]" and other.extra["amp"] is False
    assert other.augmentation == "trivial_augment" and other.optimizer == "sgd"


def test_fidelity_is_recorded(layout: Path) -> None:
    """Budget = the dataset's longest curve; a run below it is a low-fidelity snapshot."""
    records = {r.run_id: r for r in import_quicktune(layout)}
    full = records["quicktune:tiny:My Birds:101"].outcomes
    partial = records["quicktune:tiny:My Birds:202"].outcomes
    assert (full.epochs_run, full.epoch_budget, full.completed) == (3, 3, True)
    assert (partial.epochs_run, partial.epoch_budget, partial.completed) == (1, 3, False)
    other = records["quicktune:tiny:x-ray/2:303"].outcomes
    assert (other.epoch_budget, other.completed) == (2, True)  # budgets are per dataset
    source = read_quicktune(layout)
    assert source.completed_count() == 2 and source.count() == 3


def test_noise_at_a_bound_is_clipped_and_counted(layout: Path) -> None:
    noisy = {**PERF, "x-ray/2": {"303": [-3e-7, 100.00000035874896]}}
    (layout / "curves" / "perf.json").write_text(json.dumps(noisy))
    source = read_quicktune(layout)
    assert source.clipped == 2 and "epoch 1: -3e-07 -> 0" in str(source.clipped_example)
    run = {r.run_id: r for r in source.records()}["quicktune:tiny:x-ray/2:303"]
    assert run.outcomes.learning_curve == [0.0, 1.0] and run.outcomes.val_accuracy == 1.0
    # beyond the tolerance it is still the specific error
    (layout / "curves" / "perf.json").write_text(
        json.dumps({**PERF, "x-ray/2": {"303": [70.0, 100.00001]}})
    )
    with pytest.raises(ImportFormatError, match=r"run 303, epoch 2: top-1 % 100\.00001 is outside"):
        import_quicktune(layout)


def test_subset_and_parent_folder(layout: Path) -> None:
    subset = import_quicktune(layout, datasets=["x-ray/2"])
    assert [r.run_id for r in subset] == ["quicktune:tiny:x-ray/2:303"]
    # The folder above a single version is accepted; provenance stays relative to it.
    records = import_quicktune(layout.parent)
    assert len(records) == 3 and records[0].provenance.file == "tiny/table.csv"
    with pytest.raises(ImportFormatError, match=r"NOPE.*available: My Birds, x-ray/2"):
        import_quicktune(layout, datasets=["NOPE"])


def test_deterministic(layout: Path) -> None:
    first = [r.model_dump_json() for r in import_quicktune(layout)]
    assert first == [r.model_dump_json() for r in import_quicktune(layout)]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: (root / "curves" / "cost.json").unlink(), r"cost\.json is missing"),
        (
            lambda root: (root / "meta" / "descriptors.json").unlink(),
            r"descriptors\.json is missing",
        ),
        (
            lambda root: (root / "curves" / "perf.json").write_text('{"My Birds": {"101": [1,'),
            r"perf\.json is not valid JSON \(line 1",
        ),
        (
            lambda root: (root / "curves" / "perf.json").write_text(
                json.dumps(
                    {"My Birds": {"101": [40.0, 55.5, 61.25]}, "x-ray/2": {"303": [7.0, 9.0]}}
                )
            ),
            r"table\.csv line 3: run 202 has no curve",
        ),
        (
            lambda root: (root / "curves" / "perf.json").write_text(
                json.dumps({**PERF, "My Birds": {**PERF["My Birds"], "999": [1.0]}})
            ),
            r"run 999 of dataset 'My Birds' has no row",
        ),
        (
            lambda root: (root / "curves" / "perf.json").write_text(
                json.dumps({**PERF, "x-ray/2": {"303": [70.0, 190.0]}})
            ),
            r"run 303, epoch 2: top-1 % 190\.0 is outside \[0, 100\]",
        ),
        (
            lambda root: (root / "curves" / "cost.json").write_text(
                json.dumps({**COST, "x-ray/2": {"303": [5.0]}})
            ),
            r"1 epochs of cost but 2 of accuracy",
        ),
        (
            lambda root: (root / "meta" / "descriptors.json").write_text(
                json.dumps({"My Birds": [1000, 10, 128, 3]})
            ),
            r"dataset 'x-ray/2' has curves .* but no entry",
        ),
        (
            lambda root: (root / "meta" / "descriptors.json").write_text(
                json.dumps({**DESCRIPTORS, "My Birds": [1000, 10]})
            ),
            r"dataset 'My Birds': expected \[n_samples",
        ),
    ],
)
def test_layout_errors(layout: Path, breakage, message: str) -> None:  # type: ignore[no-untyped-def]
    breakage(layout)
    with pytest.raises(ImportFormatError, match=message):
        import_quicktune(layout)


def test_table_errors(tmp_path: Path) -> None:
    bad_hot = {**ROWS, "202": [0, 8, 1, 1, 0, 1, 0, 1, 0, 1, 0.0, 0.0001, 0.0, 0.0, 0, 0.0]}
    with pytest.raises(ImportFormatError, match=r"line 3: 2 of the cat:model:\* columns are 1"):
        import_quicktune(write_layout(tmp_path / "a", bad_hot))
    bad_lr = {**ROWS, "303": [1, 64, 0, 1, 1, 0, 1, 0, 1, 0, 0.2, -1.0, 2.0, 0.05, 10, 0.1]}
    with pytest.raises(ImportFormatError, match=r"line 4: invalid hyperparameters \(lr"):
        import_quicktune(write_layout(tmp_path / "b", bad_lr))
    text = {**ROWS, "101": [1, "many", 1, 0, 1, 0, 1, 0, 1, 0, 0.1, 0.001, 0.4, 0.1, 5, 0.01]}
    with pytest.raises(ImportFormatError, match=r"line 2, column 'batch_size': 'many'"):
        import_quicktune(write_layout(tmp_path / "c", text))  # type: ignore[arg-type]
    with pytest.raises(ImportFormatError, match="does not exist"):
        import_quicktune(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportFormatError, match=r"table\.csv is missing"):
        import_quicktune(tmp_path / "empty")


def test_cli_idempotent_and_atomic(layout: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    kb = tmp_path / "kb.sqlite"
    assert main(["kb", "import-quicktune", str(layout), "--kb", str(kb), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["inserted"], first["skipped"]) == (3, 0)
    assert first["datasets"] == ["My Birds", "x-ray/2"]
    assert main(["kb", "import-quicktune", str(layout), "--kb", str(kb), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["inserted"], second["skipped"]) == (0, 3)
    assert len(SQLiteKnowledgeBase(kb)) == 3

    # A broken folder fails with one line and exit 2; the KB is untouched.
    other = write_layout(tmp_path / "broken")
    (other / "curves" / "perf.json").write_text("{oops")
    fresh = tmp_path / "fresh.sqlite"
    assert main(["kb", "import-quicktune", str(other), "--kb", str(fresh)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "perf.json is not valid JSON" in err
    assert len(SQLiteKnowledgeBase(fresh)) == 0


@pytest.mark.data
def test_real_quicktune_extended(shared_data: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    root = shared_data / "quicktune" / "extended"
    records = import_quicktune(root)
    assert len(records) == 2278
    assert len({r.dataset for r in records}) == 13
    assert all(0.0 <= (r.score or 0.0) <= 1.0 for r in records)
    assert all(r.outcomes.epochs_run == len(r.outcomes.learning_curve) for r in records)
    assert all(r.pretrained and r.meta_features.modality == QUICKTUNE_MODALITY for r in records)
    assert len({r.model for r in records}) > 10

    kb = tmp_path / "kb.sqlite"
    args = ["kb", "import-quicktune", str(root), "--kb", str(kb), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["inserted"], first["skipped"], len(first["datasets"])) == (2278, 0, 13)
    # Quick-Tune's search stopped the rest before the 50-epoch budget
    assert first["completed_runs"] == 1243
    assert sum(r.outcomes.completed for r in records) == 1243
    assert {r.outcomes.epoch_budget for r in records} == {50}
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["inserted"], second["skipped"]) == (0, 2278)
    assert main(["kb", "info", "--kb", str(kb), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total"] == 2278 and info["by_source"] == {"quicktune": 2278}
    assert len(info["by_dataset"]) == 13


KILLED_IMPORT = """
import os, signal, sys
from metallmix.cli import main
from metallmix.tools.kb.store import SQLiteKnowledgeBase

original = SQLiteKnowledgeBase._connect
calls = [0]

def connect(self):
    conn = original(self)

    def handler():
        calls[0] += 1
        if calls[0] >= 300 and conn.in_transaction and conn.total_changes > 0:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-INSERT, transaction open
        return 0

    conn.set_progress_handler(handler, 100)
    return conn

SQLiteKnowledgeBase._connect = connect
main(["kb", "import-quicktune", sys.argv[1], "--kb", sys.argv[2]])
print("finished")
"""


@pytest.mark.data
def test_real_import_killed_mid_write(shared_data: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    root = shared_data / "quicktune" / "extended"
    kb_path = tmp_path / "kb.sqlite"
    kb = SQLiteKnowledgeBase(kb_path)
    kb.add(import_quicktune(root, datasets=["BRD"]))
    before = kb.content_hash()
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_IMPORT, str(root), str(kb_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "finished" not in proc.stdout
    assert SQLiteKnowledgeBase(kb_path).content_hash() == before
    assert len(SQLiteKnowledgeBase(kb_path)) == 160
    result = SQLiteKnowledgeBase(kb_path).add(import_quicktune(root))
    assert (result.inserted, result.skipped) == (2278 - 160, 160)
