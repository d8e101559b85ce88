"""The bad-input probe (issue 11), kept as a table-driven suite so every edge stays fixed.

Each case runs a command the way a new user would get it wrong and checks three things:
the exit code (2 for usage errors, non-zero otherwise), that the output ends in one
specific line of error (no traceback), and that every store the command should not have
written is byte-identical afterwards (file hashes and folder listings before and after).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from metallmix.cli import main


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def snapshot(paths: list[Path]) -> dict[str, object]:
    """Bytes of each file and the listing of each folder (to catch new -wal/-shm files)."""
    out: dict[str, object] = {}
    for path in paths:
        if path.is_dir():
            out[str(path)] = sorted((str(p.relative_to(path)), _digest(p)) for p in path.rglob("*"))
        else:
            out[str(path)] = (path.exists(), _digest(path))
    return out


@dataclass
class Outcome:
    """What one CLI call left behind."""

    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = [line for line in self.err.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    code = main(argv)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_clean_error(result: Outcome, code: int | None, *needles: str) -> None:
    """Non-zero (or exactly ``code``), no traceback, one last line naming the problem."""
    assert "Traceback" not in result.err + result.out, result.err
    if code is None:
        assert result.code != 0, (result.code, result.err)
    else:
        assert result.code == code, (result.code, result.err)
    line = result.last_line
    assert line.lower().startswith("error:"), result.err
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)


# --- 1. usage errors: click's usage message and exit 2 -----------------------------------


@dataclass(frozen=True)
class UsageCase:
    argv: list[str]
    needle: str


USAGE_CASES = {
    "unknown option": UsageCase(["kb", "info", "--bogus"], "No such option: --bogus"),
    "unknown command": UsageCase(["kb", "bogus"], "No such command 'bogus'"),
    "unknown verb": UsageCase(["trian"], "No such command 'trian'"),
    "unknown llm": UsageCase(["recommend", "x.npz", "--llm", "gpt-5"], "unknown LLM 'gpt-5'"),
    "missing gguf": UsageCase(["recommend", "x.npz", "--llm", "/no/such.gguf"], "no such file"),
    "compare llm": UsageCase(["bench", "compare", "--llm", "gtp"], "unknown LLM 'gtp'"),
    "missing argument": UsageCase(["kb", "import-csv"], "Missing argument"),
    "seed not an int": UsageCase(["features", "x.npz", "--seed", "abc"], "'--seed'"),
    "recommend seed": UsageCase(["recommend", "x.npz", "--seed", "abc"], "'--seed'"),
    "budget without verify": UsageCase(
        ["recommend", "x.npz", "--budget-minutes", "4"], "only applies with --verify"
    ),
    "study without verify": UsageCase(
        ["recommend", "x.npz", "--study", "S"], "only applies with --verify"
    ),
    "no-track with verify": UsageCase(
        ["recommend", "x.npz", "--verify", "2", "--no-track"], "cannot be combined with --verify"
    ),
}


@pytest.mark.parametrize("case", USAGE_CASES.values(), ids=list(USAGE_CASES))
def test_usage_error_is_click_usage_and_exit_2(
    case: UsageCase, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli(case.argv, capsys)
    assert_clean_error(result, 2, case.needle)
    assert result.err.startswith("Usage: metallmix")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    result = run_cli(["--version"], capsys)
    assert result.code == 0
    assert result.out.strip() == f"metallmix {version('metallmix')}"


# --- 2. knowledge base: bad values, foreign / read-only / locked files ---------------------


def _kb_with(path: Path, *run_ids: str) -> Path:
    from test_kb_tabular import make_record

    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    SQLiteKnowledgeBase(path).add([make_record(r) for r in run_ids])
    return path


def _csv_with(path: Path, **cells: str) -> Path:
    """A one-row CSV in the export's layout, with some cells replaced by raw text."""
    import csv

    from test_kb_tabular import make_record

    from metallmix.tools.kb.tabular import export_records

    export_records([make_record("csv:probe")], path)
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, row = rows[0], rows[1]
    for name, text in cells.items():
        row[header.index(name)] = text
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, row])
    return path


BAD_CELLS = {
    "pixel mean 300": ({"mf_pixel_mean": "300"}, ("mf_pixel_mean", "[0, 1]")),
    "zero images": ({"mf_n_images": "0"}, ("mf_n_images", "at least 2")),
    "inf resolution": ({"mf_resolution_h": "inf"}, ("mf_resolution_h", "not a finite number")),
    "NaN in curve": (
        {"out_learning_curve": "[0.5, 7.0, NaN]"},
        ("out_learning_curve", "epoch 2:"),
    ),
    "inf seconds": ({"out_train_seconds": "inf"}, ("out_train_seconds", "not a finite number")),
    "NaN accuracy": ({"out_val_accuracy": "nan"}, ("out_val_accuracy", "NaN (missing?)")),
    "accuracy 85": ({"out_val_accuracy": "85"}, ("out_val_accuracy", "write 0.85")),
    "huge image_size": ({"hp_image_size": "100000"}, ("hp_image_size", "4096")),
}


@pytest.mark.parametrize("cells, needles", BAD_CELLS.values(), ids=list(BAD_CELLS))
def test_import_of_a_bad_value_is_refused_and_kb_untouched(
    cells: dict[str, str],
    needles: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kb = _kb_with(tmp_path / "kb" / "kb.sqlite", "keep:1")
    csv_file = _csv_with(tmp_path / "runs.csv", **cells)
    before = snapshot([kb.parent])
    result = run_cli(["kb", "import-csv", str(csv_file), "--kb", str(kb)], capsys)
    assert_clean_error(result, None, *needles)
    assert snapshot([kb.parent]) == before


def test_a_poisoned_row_is_skipped_reported_and_removable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A row written before the validators existed (inf stored as null) no longer breaks the
    KB: reads skip and report it, and `kb remove` deletes it."""
    import json
    import sqlite3

    kb = _kb_with(tmp_path / "kb" / "kb.sqlite", "good:1", "bad:1")
    with sqlite3.connect(kb) as conn:
        conn.execute(
            "UPDATE runs SET record = json_set(record, '$.meta_features.resolution_h', NULL) "
            "WHERE run_id = 'bad:1'"
        )
    conn.close()
    out_file = tmp_path / "export" / "out.csv"
    before = snapshot([kb.parent])
    info = run_cli(["kb", "info", "--kb", str(kb), "--json"], capsys)
    assert info.code == 0, info.err
    doc = json.loads(info.out)
    assert doc["total"] == 1 and "resolution_h" in doc["unreadable"]["bad:1"]
    assert "kb remove bad:1" in caplog.text
    exported = run_cli(["kb", "export", str(out_file), "--kb", str(kb)], capsys)
    assert exported.code == 0, exported.err
    assert out_file.read_text().count("good:1") == 1 and "bad:1" not in out_file.read_text()
    assert snapshot([kb.parent]) == before  # reading wrote nothing
    removed = run_cli(["kb", "remove", "bad:1", "--kb", str(kb), "--json"], capsys)
    assert removed.code == 0 and json.loads(removed.out)["removed"] == 1
    missing = run_cli(["kb", "remove", "nope:1", "--kb", str(kb)], capsys)
    assert_clean_error(missing, None, "no run nope:1")


def _foreign_db(path: Path) -> Path:
    """An SQLite file of another application in rollback mode (like a fresh mlflow.db)."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT)")
        conn.execute("INSERT INTO experiments VALUES (0, 'Default')")
    conn.close()
    return path


def _shipped_copy(path: Path) -> Path:
    from metallmix import config

    path.write_bytes(config.bundled_kb_path().read_bytes())
    return path


@pytest.mark.parametrize(
    "verb",
    [["kb", "info"], ["kb", "export", "{tmp}/out.csv"], ["kb", "import-csv", "{tmp}/runs.csv"]],
    ids=["info", "export", "import-csv"],
)
def test_foreign_sqlite_file_is_refused_before_any_pragma(
    verb: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mlruns"
    folder.mkdir()
    db = _foreign_db(folder / "mlflow.db")
    _csv_with(tmp_path / "runs.csv")
    before = snapshot([folder])
    argv = [a.format(tmp=tmp_path) for a in verb] + ["--kb", str(db)]
    result = run_cli(argv, capsys)
    assert_clean_error(result, None, "another application", "mlflow.db")
    assert snapshot([folder]) == before  # header (journal mode) and listing unchanged
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    "verb",
    [
        ["kb", "info"],
        ["kb", "export", "{tmp}/out.parquet"],
        ["meta", "similar", "--like", "breastmnist"],
    ],
    ids=["info", "export", "meta similar"],
)
def test_read_only_commands_leave_the_shipped_kb_byte_identical(
    verb: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "pkg"
    folder.mkdir()
    kb = _shipped_copy(folder / "kb.sqlite")
    before = snapshot([folder])
    argv = [*(a.format(tmp=tmp_path) for a in verb), "--kb", str(kb)]
    result = run_cli(argv, capsys)
    assert result.code == 0, result.err
    assert snapshot([folder]) == before


def test_read_only_command_on_wal_kb_leaves_no_wal_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command succeeds (it really read the KB) and leaves the database byte-identical
    with no -wal/-shm files; ``meta similar`` may only add its retrieval cache folder."""
    from test_kb_tabular import make_record

    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    folder = tmp_path / "kb"
    kb = _kb_with(folder / "kb.sqlite", "a:1")  # written by a writer: WAL mode
    SQLiteKnowledgeBase(kb).add([make_record("b:1", dataset="other/x", dataset_group="other")])
    assert kb.read_bytes()[18] == 2
    before = kb.read_bytes()
    listing = sorted(p.name for p in folder.iterdir())
    for argv in (["kb", "info"], ["meta", "similar", "--like", "other/x"]):
        result = run_cli([*argv, "--kb", str(kb), "--json"], capsys)
        assert result.code == 0, (argv, result.err)
        assert result.out.strip().startswith("{"), (argv, result.out)
        assert kb.read_bytes() == before, argv
        now = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".retrieval"))
        assert now == listing, (argv, now)
    assert "breastmnist/sub200" in result.out  # meta similar found the other dataset


@pytest.mark.parametrize("verb", [["kb", "info"], ["kb", "export", "{tmp}/out.csv"]])
@pytest.mark.parametrize("what", ["mistyped", "zero-byte"])
def test_read_only_commands_never_create_a_kb(
    verb: list[str], what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "nested" / "kb.sqlite" if what == "mistyped" else tmp_path / "kb.sqlite"
    if what == "zero-byte":
        target.touch()
    before = snapshot([tmp_path])
    argv = [a.format(tmp=tmp_path) for a in verb] + ["--kb", str(target)]
    result = run_cli(argv, capsys)
    needle = "does not exist" if what == "mistyped" else "empty file"
    assert_clean_error(result, None, needle, str(target))
    assert snapshot([tmp_path]) == before


def test_locked_kb_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from metallmix.tools.kb import store

    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", 0.5, raising=False)
    kb = _kb_with(tmp_path / "kb.sqlite", "a:1")
    csv_file = _csv_with(tmp_path / "runs.csv")
    before = snapshot([kb])
    holder = sqlite3.connect(kb, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        result = run_cli(["kb", "import-csv", str(csv_file), "--kb", str(kb)], capsys)
        removed = run_cli(["kb", "remove", "a:1", "--kb", str(kb)], capsys)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_clean_error(result, None, "is locked by another process", str(kb))
    assert_clean_error(removed, None, "is locked by another process", str(kb))
    assert snapshot([kb]) == before


def test_kb_held_exclusively_by_another_process_is_a_quick_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's exclusive transaction on a rollback-journal KB: read commands say it
    is locked (after the short reader wait), not that the file is no knowledge base."""
    import sqlite3

    from metallmix.tools.kb import store

    monkeypatch.setattr(store, "READER_BUSY_TIMEOUT_S", 0.5)
    kb = _kb_with(tmp_path / "kb.sqlite", "a:1")
    conn = sqlite3.connect(kb)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    holder = sqlite3.connect(kb, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE meta SET value = value")
        result = run_cli(["kb", "info", "--kb", str(kb)], capsys)
        similar = run_cli(["meta", "similar", "--like", "x", "--kb", str(kb)], capsys)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for outcome in (result, similar):
        assert_clean_error(outcome, None, "is locked by another process", str(kb))
        assert "not a MetaLLMiX knowledge base" not in outcome.err


# Read-only files: root ignores permission bits, so as root the files are made immutable
# (chattr +i, which binds root too); elsewhere the write bits are removed.


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    import os
    import shutil
    import subprocess

    as_root = os.geteuid() == 0

    def cannot(reason: str) -> None:
        # Not a silent skip: a read-only case that cannot be set up fails, unless the run
        # says explicitly that it accepts skipping them.
        if os.environ.get("METALLMIX_SKIP_READONLY_TESTS") == "1":
            pytest.skip(f"{reason} (METALLMIX_SKIP_READONLY_TESTS=1)")
        pytest.fail(
            f"{reason}: this read-only case cannot run; run the tests as a non-root user, "
            "install chattr (e2fsprogs) with CAP_LINUX_IMMUTABLE, or set "
            "METALLMIX_SKIP_READONLY_TESTS=1 to skip these cases on purpose"
        )

    if as_root and shutil.which("chattr") is None:
        cannot("running as root without chattr: cannot make a file read-only")
    done: list[Path] = []
    try:
        for path in paths:
            if as_root:
                proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
                if proc.returncode != 0:
                    cannot(f"chattr +i not permitted here: {proc.stderr.decode().strip()}")
            else:
                path.chmod(0o555 if path.is_dir() else 0o444)
            done.append(path)
        yield
    finally:
        for path in reversed(done):
            if as_root:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            else:
                path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("journal", ["wal", "rollback"])
@pytest.mark.parametrize("where", ["read-only file", "read-only folder"])
def test_read_only_kb_serves_read_commands_and_refuses_writes(
    journal: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import sqlite3

    folder = tmp_path / "kb"
    kb = _kb_with(folder / "kb.sqlite", "a:1", "a:2")
    if journal == "rollback":
        with sqlite3.connect(kb) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")
        conn.close()
    assert kb.read_bytes()[18] == (2 if journal == "wal" else 1)
    csv_file = _csv_with(tmp_path / "runs.csv")
    before = snapshot([folder])
    locked = (kb,) if where == "read-only file" else (kb, folder)
    with read_only(*locked):
        info = run_cli(["kb", "info", "--kb", str(kb), "--json"], capsys)
        exported = run_cli(["kb", "export", str(tmp_path / "o.csv"), "--kb", str(kb)], capsys)
        written = run_cli(["kb", "import-csv", str(csv_file), "--kb", str(kb)], capsys)
        after = snapshot([folder])
    assert info.code == 0 and json.loads(info.out)["total"] == 2, info.err
    assert exported.code == 0, exported.err
    assert_clean_error(written, None, "read-only", str(kb))
    assert after == before


# --- 3. datasets, cards and hyperparameters ----------------------------------------------


def _npz(path: Path, labels: list[int], side: int = 8) -> Path:
    import numpy as np

    images = np.random.default_rng(0).integers(0, 255, (len(labels), side, side), np.uint8)
    np.savez(path, train_images=images, train_labels=np.asarray(labels))
    return path


def test_npz_labels_with_gaps_are_mapped_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    path = _npz(tmp_path / "gaps.npz", [0, 1, 1_000_000] * 10)
    result = run_cli(["features", str(path), "--json"], capsys)
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["class_names"] == ["0", "1", "1000000"]
    assert doc["meta_features"]["n_classes"] == 3
    assert "mapped to 0..2" in doc["source_info"]["notes"][0]


def test_tiny_images_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = _npz(tmp_path / "dots.npz", [0, 1] * 10, side=1)
    result = run_cli(["features", str(path), "--json"], capsys)
    assert result.code == 0, result.err
    assert "training images are smaller than 8 px" in caplog.text
    assert "smallest 1x1" in caplog.text


def _png(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(path)
    return path


def test_manifest_paths_outside_its_folder_are_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    outside = _png(tmp_path / "elsewhere" / "x.png")
    rows = ["path,label"]
    for i in range(12):
        _png(tmp_path / "data" / f"img{i}.png")
        rows.append(f"img{i}.png,{i % 2}")
    rows.append(f"../elsewhere/{outside.name},1")
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    result = run_cli(["features", str(manifest), "--json"], capsys)
    assert result.code == 0, result.err
    listed = json.loads(result.out)["source_info"]["outside_manifest_folder"]
    assert listed == {"count": 1, "rows": ["line 14: ../elsewhere/x.png"]}


@pytest.mark.parametrize("name", ["passwd", "scan.dcm"])
def test_only_files_with_the_dicom_preamble_reach_pydicom(name: str, tmp_path: Path) -> None:
    from metallmix.tools.datasets import files
    from metallmix.tools.datasets.base import ImageReadError

    path = tmp_path / name
    path.write_text("root:x:0:0:root:/root:/bin/bash\n" * 10)
    calls: list[str] = []

    def parse(where: Path) -> object:
        calls.append(str(where))
        raise AssertionError("parsed as DICOM")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "_dicom_header", parse)
        patch.setattr(files, "_dicom_pixels", parse)
        patch.setattr(files, "_pydicom", lambda: None)  # pydicom itself is optional
        result = files.FileImages([path])._read(0, "header")
    assert isinstance(result, ImageReadError)
    assert "DICM" in str(result) or "DICOM marker" in str(result)
    assert calls == []


def test_card_with_absurd_image_size_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    card = tmp_path / "huge.card.json"
    card.write_text(
        json.dumps(
            {
                "name": "huge",
                "class_names": ["a", "b"],
                "train_counts": {"a": 10, "b": 10},
                "image_height": 10**9,
                "image_width": 10**9,
                "channels": 1,
            }
        )
    )
    result = run_cli(["features", str(card)], capsys)
    assert_clean_error(result, None, "image_height")


def test_huge_image_size_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import time

    data = _npz(tmp_path / "toy.npz", [0, 1] * 10)
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps({"model": "lcnet_050", "image_size": 100000, "epochs": 1}))
    started = time.monotonic()
    argv = ["validate", "--data", str(data), "--config", str(config_file), "--no-kb"]
    result = run_cli(argv, capsys)
    assert_clean_error(result, None, "image_size")
    assert time.monotonic() - started < 60


# --- 4. downloads, retrieval index, messages, credentials ----------------------------------


def test_zip_bomb_is_refused_before_unpacking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import zipfile

    bomb = tmp_path / "qt_metadataset.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("extended/table.csv", b"\0" * (64 << 20))  # 64 MiB of zeros, ~64 KiB packed
    dest = tmp_path / "dest"
    argv = ["kb", "download-quicktune", "--url", str(bomb), "--dest", str(dest)]
    result = run_cli(argv, capsys)
    assert_clean_error(result, None, "expands to", "refusing")
    assert sorted(p.name for p in dest.rglob("*")) == []


def test_archive_with_too_many_entries_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import zipfile

    from metallmix.tools.kb import download

    monkeypatch.setattr(download, "MAX_ENTRIES", 10, raising=False)
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(11):
            zf.writestr(f"extended/f{i}.txt", b"x")
    dest = tmp_path / "dest"
    argv = ["kb", "download-quicktune", "--url", str(archive), "--dest", str(dest)]
    result = run_cli(argv, capsys)
    assert_clean_error(result, None, "11 entries")
    assert sorted(p.name for p in dest.rglob("*")) == []


@pytest.mark.parametrize("tamper", ["flipped byte", "consistent plant", "old faiss format"])
def test_a_tampered_or_planted_retrieval_index_is_never_used(
    tamper: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No FAISS reader ever sees a file (it trusts its input), and a saved index is used only
    when it matches the KB's own content: a changed byte fails its sha256, a planted folder
    whose sidecar vouches for other vectors is caught against the KB's records, and an old
    folder of FAISS binaries is rebuilt, never read."""
    import json

    import faiss
    import numpy as np
    from test_kb_tabular import make_record

    from metallmix.tools.kb.store import SQLiteKnowledgeBase
    from metallmix.tools.meta import retrieval

    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    kb.add([make_record(f"r:{i}", dataset=f"d{i % 3}") for i in range(6)])
    first = retrieval.load_or_build(kb)
    folder = retrieval.index_dir(kb, first.kb_hash)
    runs = folder / "runs.npy"
    if tamper == "flipped byte":
        blob = bytearray(runs.read_bytes())
        blob[-1] ^= 0xFF
        runs.write_bytes(bytes(blob))
    elif tamper == "consistent plant":  # other vectors, and a sidecar that vouches for them
        vectors = np.load(runs)
        planted = np.random.default_rng(0).normal(size=vectors.shape).astype(np.float32)
        np.save(runs, planted / np.linalg.norm(planted, axis=1, keepdims=True))
        sidecar = json.loads((folder / "retrieval.json").read_text())
        sidecar["sha256"]["runs.npy"] = _digest(runs)
        (folder / "retrieval.json").write_text(json.dumps(sidecar))
    else:
        for name in ("datasets.npy", "runs.npy"):
            (folder / name).unlink()
        (folder / "runs.faiss").write_bytes(b"\x00" * 64)
        sidecar = json.loads((folder / "retrieval.json").read_text())
        (folder / "retrieval.json").write_text(json.dumps({**sidecar, "version": 1}))
    readers: list[str] = []
    for name in ("read_index", "deserialize_index"):
        monkeypatch.setattr(faiss, name, lambda *a, _n=name, **k: readers.append(_n))
    built: list[int] = []
    real_build = retrieval.RetrievalIndex.build.__func__  # type: ignore[attr-defined]

    def counting_build(cls: type, records: list[object], kb_hash: str | None = None) -> object:
        built.append(len(records))
        return real_build(cls, records, kb_hash)

    monkeypatch.setattr(retrieval.RetrievalIndex, "build", classmethod(counting_build))
    again = retrieval.load_or_build(kb)
    assert readers == [], readers  # no FAISS reader ran on a file
    assert built == [6]  # the saved index was refused and rebuilt from the KB
    mf = kb.get("r:0").meta_features  # type: ignore[union-attr]
    assert again.similar_datasets(mf, 3) == first.similar_datasets(mf, 3)
    hits = again.runs_like(mf, "resnet18", kb.get("r:0").hyperparameters)  # type: ignore[union-attr]
    assert [h.run_id for h in hits] == [
        h.run_id
        for h in first.runs_like(mf, "resnet18", kb.get("r:0").hyperparameters)  # type: ignore[union-attr]
    ]
    built.clear()
    retrieval.load_or_build(kb)  # the rebuilt index is saved and now used as it is
    assert built == [] and readers == []


def test_empty_kb_error_names_real_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    kb = tmp_path / "empty.sqlite"
    SQLiteKnowledgeBase(kb)
    result = run_cli(["meta", "fit", "--kb", str(kb)], capsys)
    assert_clean_error(result, None, "metallmix kb import-quicktune", "metallmix validate")
    assert "`metallmix train`" not in result.last_line


def test_credentials_are_stripped_from_stored_tracking_uris(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb = tmp_path / "kb.sqlite"
    csv_file = _csv_with(
        tmp_path / "runs.csv", prov_tracking_uri="https://alice:s3cret@mlflow.example.org/"
    )
    assert run_cli(["kb", "import-csv", str(csv_file), "--kb", str(kb)], capsys).code == 0
    out_file = tmp_path / "out.csv"
    assert run_cli(["kb", "export", str(out_file), "--kb", str(kb)], capsys).code == 0
    text = out_file.read_text()
    assert "https://mlflow.example.org/" in text and "s3cret" not in text and "alice" not in text


# --- 5. MLflow: an unusable store fails before training; a late failure keeps the result ---


def mlflow_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiment: str | None = None
) -> tuple[str, Path]:
    """A fresh SQLite tracking store at ``tmp/mlruns`` made current: ``(uri, its folder)``;
    with ``experiment`` created (its artifact folder ``mlruns/artifacts`` made too), so a
    case can lock the database or the artifacts before the command runs."""
    from metallmix.tools import tracking

    folder = tmp_path / "mlruns"
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    if experiment is not None:
        tracking.experiment_id(tracking.client(uri), experiment)
        (folder / "artifacts").mkdir(exist_ok=True)
    return uri, folder


def untouched_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tracking store that must never be opened (``--no-track``): check its folder is
    never created."""
    db = tmp_path / "untouched" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db.parent


def _train_config(tmp_path: Path, epochs: int = 1) -> Path:
    import json

    path = tmp_path / "cfg.json"
    path.write_text(
        json.dumps(
            {"model": "lcnet_050", "lr": 3e-3, "epochs": epochs, "image_size": 16, "batch_size": 32}
        )
    )
    return path


def test_unusable_tracking_store_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_train_trainer import write_npz

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/nope.db")
    data = write_npz(tmp_path)
    argv = ["validate", "--data", str(data), "--config", str(_train_config(tmp_path)), "--no-kb"]
    result = run_cli(argv, capsys)
    assert_clean_error(result, None, "tracking store", "not usable", "MLFLOW_TRACKING_URI")


def test_unwritable_artifact_folder_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_train_trainer import write_npz

    _, folder = mlflow_store(tmp_path, monkeypatch, "metallmix-validation")
    artifacts = folder / "artifacts"
    data = write_npz(tmp_path)
    argv = ["validate", "--data", str(data), "--config", str(_train_config(tmp_path))]
    with read_only(artifacts):
        result = run_cli([*argv, "--no-kb"], capsys)
    assert_clean_error(result, None, "artifact folder", "not writable")
    assert "epoch" not in result.err.lower()  # no training happened


@pytest.mark.real
@pytest.mark.parametrize("with_kb", [True, False], ids=["kb", "no-kb"])
def test_logging_failure_after_training_keeps_the_result(
    with_kb: bool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    isolated_workspace: Path,
) -> None:
    """Real training; the artifact folder turns read-only during it, so MLflow's artifact
    upload fails after training: the record is kept (KB or JSON) and the run FINISHED."""
    from contextlib import ExitStack

    from mlflow import MlflowClient
    from test_train_trainer import write_npz

    from metallmix.tools.datasets import load_dataset
    from metallmix.tools.kb.records import Hyperparameters, RunRecord
    from metallmix.tools.kb.store import SQLiteKnowledgeBase
    from metallmix.tools.training.runner import RunSpec, run_trial
    from metallmix.tools.training.settings import TrialSettings

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    artifacts = tmp_path / "mlruns" / "artifacts"
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite") if with_kb else None
    hp = Hyperparameters(lr=3e-3, epochs=1, image_size=16, batch_size=32)
    with ExitStack() as stack:

        def lock_artifacts(stats: object) -> None:
            artifacts.mkdir(parents=True, exist_ok=True)
            stack.enter_context(read_only(artifacts))

        record = run_trial(
            load_dataset(write_npz(tmp_path)),
            RunSpec(model="lcnet_050", hp=hp, seed=0),
            kb=kb,
            settings=TrialSettings(threads=1, tracking_uri=uri, progress=lock_artifacts),
        )
    assert record.outcomes.val_accuracy is not None
    assert "mlflow_logging_error" in record.provenance.notes
    run = MlflowClient(tracking_uri=uri).get_run(str(record.provenance.mlflow_run_id))
    assert run.info.status == "FINISHED" and "metallmix.logging_error" in run.data.tags
    if kb is not None:
        assert kb.run_ids() == {record.run_id}
        assert f"kept in the knowledge base {kb.location}" in caplog.text
    else:
        saved = isolated_workspace / "unlogged-runs" / f"{record.run_id}.json"
        assert RunRecord.model_validate_json(saved.read_text()) == record
        assert str(saved) in caplog.text


# --- 6. interrupts: one line, exit 130 (Ctrl-C) / 143 (SIGTERM), stores consistent ---------


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt here even when the tests run in a background job
    (``cmd &`` in a script starts Python with SIGINT ignored, and the signal would vanish)."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


INTERRUPTED_VERBS = {
    "kb info": ["kb", "info", "--kb", "{kb}"],
    "kb import-csv": ["kb", "import-csv", "{tmp}/runs.csv", "--kb", "{kb}"],
    "meta fit": ["meta", "fit", "--kb", "{kb}"],
    "meta similar": ["meta", "similar", "--like", "x", "--kb", "{kb}"],
    "recommend": ["recommend", "{tmp}/card.json", "--kb", "{kb}"],
}


@pytest.mark.usefixtures("sigint_raises")
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("argv", INTERRUPTED_VERBS.values(), ids=list(INTERRUPTED_VERBS))
def test_a_signal_ends_every_verb_with_one_line_and_its_exit_code(
    argv: list[str],
    signame: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The signal arrives while the verb opens its KB (every verb does, early)."""
    import os
    import signal

    from metallmix.cli.recommend import example_card
    from metallmix.tools.kb import store

    kb = _kb_with(tmp_path / "kb.sqlite", "a:1")
    _csv_with(tmp_path / "runs.csv")
    (tmp_path / "card.json").write_text(example_card("chest-xray").read_text())
    real_init = store.SQLiteKnowledgeBase.__init__

    def interrupted_init(self: object, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        os.kill(os.getpid(), getattr(signal, signame))

    monkeypatch.setattr(store.SQLiteKnowledgeBase, "__init__", interrupted_init)
    before = snapshot([kb])
    handler = signal.getsignal(signal.SIGTERM)  # another library's (ray installs one) or none
    result = run_cli([a.format(kb=kb, tmp=tmp_path) for a in argv], capsys)
    code, word = (130, "interrupted (Ctrl-C)") if signame == "SIGINT" else (143, "terminated")
    assert_clean_error(result, code, word, "re-run the same command")
    assert snapshot([kb]) == before
    assert signal.getsignal(signal.SIGTERM) is handler  # the CLI put back what it found


def test_sigterm_closes_the_recommendation_run_as_killed(
    kb: Path,
    scripted: object,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM in the middle of the graph: exit 143, the MLflow run KILLED (not RUNNING for
    ever), and its trace ended with an error."""
    import os
    import signal

    from mlflow import MlflowClient

    from metallmix import config
    from metallmix.cli.recommend import example_card

    def terminated(shortlist: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr("metallmix.cli.recommend.print_shortlist", terminated)
    result = run_cli(["recommend", str(example_card("chest-xray")), "--kb", str(kb)], capsys)
    assert_clean_error(result, 143, "terminated")
    client = MlflowClient(tracking_uri=config.tracking_uri())
    exp = client.get_experiment_by_name("metallmix-recommendations")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
    import mlflow

    mlflow.flush_trace_async_logging()  # an earlier test (ray) may have left export async
    traces = client.search_traces(locations=[exp.experiment_id])
    states = [t.info.state.value for t in traces]
    assert states and set(states) == {"ERROR"}, states


class _InterruptingKB:
    """A KB that receives SIGINT right after its ``n``-th write has committed: the moment
    where a run is in the KB and not yet in the Optuna study."""

    def __init__(self, inner: object, n: int) -> None:
        self.inner, self.n, self.writes = inner, n, 0

    def add(self, records: object) -> object:
        import os
        import signal

        out = self.inner.add(records)  # type: ignore[attr-defined]
        self.writes += 1
        if self.writes == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.usefixtures("sigint_raises")
@pytest.mark.parametrize("at_write", [1, 3])
def test_sigint_during_verify_leaves_kb_and_study_agreeing(at_write: int, tmp_path: Path) -> None:
    """Ctrl-C between a run's KB row and its Optuna trial, then the same command again:
    KB rows = distinct runs = completed trials (issue 25: 7 rows for 6 runs before)."""
    import optuna
    from test_train_trainer import write_npz
    from test_verify import FIVE, fake_trial, halving

    from metallmix.tools.datasets import load_dataset
    from metallmix.tools.kb.store import SQLiteKnowledgeBase
    from metallmix.tools.training.halving import run_verify
    from metallmix.tools.training.settings import TrialSettings

    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    storage = tmp_path / "studies.sqlite"
    data = load_dataset(write_npz(tmp_path))
    spec, fake = halving(tmp_path, "S", k=4), TrialSettings(trial_fn=fake_trial)
    args: dict[str, Any] = dict(zero_shot_id="c1", halving=spec, settings=fake)
    with pytest.raises(KeyboardInterrupt):
        run_verify(data, FIVE, kb=_InterruptingKB(kb, at_write), **args)  # type: ignore[arg-type]
    assert len(kb) == at_write  # the interrupted run reached the KB
    result = run_verify(data, FIVE, kb=kb, **args)
    assert result.complete and result.recovered == 1 and result.retried == 0
    study = optuna.load_study(study_name="S", storage=f"sqlite:///{storage}")
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    keys = [
        (r.provenance.notes["metallmix.candidate"], r.provenance.notes["metallmix.rung"])
        for r in kb.iter_records()
    ]
    assert len(keys) == len(set(keys)) == len(done) == 6  # 4 first rungs + 2 promoted
    assert {t.user_attrs["record_id"] for t in done} == kb.run_ids()
    again = run_verify(data, FIVE, kb=kb, **args)
    assert again.runs_this_time == 0 and len(kb) == 6


# --- 7. tracking never costs the answer -------------------------------------------------


def test_read_only_artifacts_still_print_the_recommendation(
    kb: Path,
    scripted: object,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from mlflow import MlflowClient

    from metallmix.cli.recommend import example_card

    uri, folder = mlflow_store(tmp_path, monkeypatch, "metallmix-recommendations")
    artifacts = folder / "artifacts"
    argv = ["recommend", str(example_card("chest-xray")), "--kb", str(kb), "--json"]
    with read_only(artifacts):
        result = run_cli(argv, capsys)
    assert_clean_error(result, 3, "answer given but not recorded in MLflow")
    doc = json.loads(result.out)
    assert doc["model"] and doc["tracking_error"]
    run = MlflowClient(tracking_uri=uri).get_run(doc["mlflow_run_id"])
    assert run.info.status == "FAILED" and "metallmix.tracking_error" in run.data.tags


def test_no_track_records_nothing(
    kb: Path,
    scripted: object,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from metallmix.cli.recommend import example_card

    store = untouched_store(tmp_path, monkeypatch)
    argv = ["recommend", str(example_card("chest-xray")), "--kb", str(kb), "--json", "--no-track"]
    result = run_cli(argv, capsys)
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["model"] and doc["mlflow_run_id"] is None and doc["tracking_error"] is None
    assert not store.exists()


@pytest.mark.parametrize("verb", ["recommend", "validate"])
def test_read_only_mlflow_db_is_one_line_before_any_work(
    verb: str,
    kb: Path,
    scripted: object,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_train_trainer import write_npz

    from metallmix.cli.recommend import example_card

    _, folder = mlflow_store(tmp_path, monkeypatch, "metallmix-validation")
    db = folder / "mlflow.db"
    if verb == "recommend":
        argv = ["recommend", str(example_card("chest-xray")), "--kb", str(kb)]
    else:
        data = write_npz(tmp_path)
        argv = ["validate", "--data", str(data), "--config", str(_train_config(tmp_path))]
        argv.append("--no-kb")
    before = snapshot([db.parent])
    with read_only(db):
        result = run_cli(argv, capsys)
    assert_clean_error(result, None, "cannot be written", "read-only")
    assert "epoch" not in result.err.lower() and "done: features" not in result.err
    assert snapshot([db.parent]) == before


def test_credentials_are_stripped_from_every_printed_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    from metallmix.tools import tracking

    uri = "https://alice:s3cret@mlflow.example.org/?token=abc"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    seen: list[str] = []

    def offline(given: str | None = None) -> object:  # no network in tests
        seen.append(str(given))
        raise ConnectionError("offline")

    monkeypatch.setattr(tracking, "client", offline)
    store, command, url = tracking.ui_hint("0123")
    shown = " ".join((store, command, url, tracking.resolved_store()))
    assert "s3cret" not in shown and "alice" not in shown and "abc" not in shown
    assert "mlflow.example.org" in store
    assert seen == [uri]  # the real URI is still what connects
    message = tracking.redact_text(f"cannot reach {uri}: refused")
    assert "s3cret" not in message and "mlflow.example.org" in message


def _validate_argv(tmp_path: Path, *extra: str, epochs: int = 1) -> list[str]:
    """``validate`` on a tiny real dataset (seconds of training), JSON output."""
    from test_train_trainer import write_npz

    cfg = _train_config(tmp_path, epochs=epochs)
    return ["validate", "--data", str(write_npz(tmp_path)), "--config", str(cfg), "--json", *extra]


@pytest.mark.parametrize("verb", ["validate", "search", "kb build"])
def test_no_track_trains_and_records_nothing_in_mlflow(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--no-track`` on every verb that trains: the run reaches the KB, MLflow is never
    opened (its folder is not even created), exit 0."""
    import json

    from test_train_trainer import write_npz

    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    store = untouched_store(tmp_path, monkeypatch)
    kb = tmp_path / "kb.sqlite"
    if verb == "validate":
        argv = _validate_argv(tmp_path, "--kb", str(kb), "--no-track")
    elif verb == "search":
        data = write_npz(tmp_path)
        argv = ["search", "--data", str(data), "--trials", "1", "--sampler", "random"]
        argv += ["--max-train-images", "40", "--storage", str(tmp_path / "s.sqlite")]
        argv += ["--kb", str(kb), "--no-track", "--json"]
        monkeypatch.setattr(  # one cheap configuration instead of the zoo's
            "metallmix.cli.train.get_space", lambda name: _tiny_space()
        )
    else:
        data = write_npz(tmp_path)
        argv = ["kb", "build", "--datasets", str(data), "--configs-per-task", "1"]
        argv += ["--probes-per-task", "0", "--last-stages-per-task", "0", "--full-per-task", "0"]
        argv += ["--limit", "1", "--kind", "scratch", "--kb", str(kb), "--no-track", "--json"]
    result = run_cli(argv, capsys)
    assert result.code == 0, result.err
    json.loads(result.out)
    records = list(SQLiteKnowledgeBase(kb, read_only=True).iter_records())
    assert len(records) == 1 and records[0].provenance.mlflow_run_id is None
    assert records[0].run_id.startswith("own-")
    assert not store.exists()


def _tiny_space() -> object:
    """One small model, one epoch at 16 px: a search of seconds."""
    from test_search import TINY

    return TINY


def test_store_failing_mid_training_keeps_the_result_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MLflow folder turns read-only after the first epoch (a full disk, a store gone
    away): training goes on to the end, the result is printed and kept in the KB, one line
    says it was not recorded, exit 3."""
    import json

    from metallmix.cli import train as train_cli
    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    _, store = mlflow_store(tmp_path, monkeypatch)
    real_run_trial = train_cli.run_trial
    epochs: list[int] = []

    def store_fails_after_epoch_1(*args: object, settings: Any, **kwargs: object) -> object:
        outer = settings.progress
        with ExitStack() as stack:

            def hook(stats: object) -> None:
                epochs.append(stats.epoch)  # type: ignore[attr-defined]
                if len(epochs) == 1:
                    stack.enter_context(read_only(store))
                outer(stats)

            hooked = settings.replace(progress=hook)
            return real_run_trial(*args, settings=hooked, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_cli, "run_trial", store_fails_after_epoch_1)
    kb = tmp_path / "kb.sqlite"
    result = run_cli(_validate_argv(tmp_path, "--kb", str(kb), epochs=2), capsys)
    assert_clean_error(result, 3, "result given but not recorded in MLflow")
    assert epochs == [1, 2]  # the failure did not stop training
    doc = json.loads(result.out)
    assert doc["status"] == "ok" and doc["val_accuracy"] is not None
    records = list(SQLiteKnowledgeBase(kb, read_only=True).iter_records())
    assert [r.run_id for r in records] == [doc["run_id"]]
    assert records[0].provenance.notes["mlflow_logging_error"]


def test_validate_api_without_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``metallmix.validate(..., track=False)``: the record, in the KB, no MLflow store."""
    from test_train_trainer import write_npz

    import metallmix
    from metallmix.agents.schemas import Recommendation
    from metallmix.tools.kb.records import Hyperparameters
    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    store = untouched_store(tmp_path, monkeypatch)
    rec = Recommendation.model_construct(
        dataset="toy",
        model="lcnet_050",
        candidate_id="c1",
        pretrained=False,
        mlflow_run_id="not-a-run",
        hyperparameters=Hyperparameters(lr=3e-3, epochs=1, image_size=16, batch_size=32),
    )
    kb = tmp_path / "kb.sqlite"
    SQLiteKnowledgeBase(kb)
    record = metallmix.validate(rec, write_npz(tmp_path), kb=kb, track=False, progress=False)
    assert record.provenance.mlflow_run_id is None and record.outcomes.val_accuracy is not None
    assert SQLiteKnowledgeBase(kb, read_only=True).run_ids() == {record.run_id}
    assert not store.exists()


# --- 8. nothing unpickles a planted file ---------------------------------------------------


class _Payload:
    """Unpickling this writes ``marker``: what a planted file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.marker), "w"))


def pickle_bomb(marker: Path, **fields: object) -> bytes:
    """A pickle of ``fields`` plus a payload that creates ``marker`` when loaded."""
    import pickle

    return pickle.dumps({**fields, "x": _Payload(marker)})


@pytest.mark.parametrize("header", ["none", "forged"])
def test_a_planted_checkpoint_runs_nothing(header: str, tmp_path: Path) -> None:
    """A pickle that would run code when loaded, where a verify checkpoint lives: with no
    header it is ignored before torch reads it; with a forged header (right fingerprint and
    sha256) torch's weights-only reader refuses it. Either way the run starts from scratch."""
    import json

    from metallmix.tools.training import checkpoint

    marker = tmp_path / "pwned"
    planted = tmp_path / "verify-checkpoints" / "S" / "c1.pt"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(pickle_bomb(marker, format=2, fingerprint="k"))
    if header == "forged":
        digest = _digest(planted)
        checkpoint.header_path(planted).write_text(
            json.dumps({"format": checkpoint.FORMAT, "fingerprint": "k", "sha256": digest})
        )
    assert checkpoint.load(planted, key="k") is None
    assert not marker.exists()


@pytest.fixture(scope="module")
def fitted_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One meta-learner cache for the cases below (same synthetic KB): one fit, not two."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("header", ["none", "forged"])
def test_a_planted_checkpoint_runs_nothing_during_recommend_verify(
    header: str,
    fitted_cache: Path,
    kb: Path,
    scripted: object,
    tmp_path: Path,
    isolated_workspace: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 25's case end to end: a pickle that writes a marker when loaded, planted at
    ``$METALLMIX_HOME/verify-checkpoints/<study>/c1.pt`` before ``recommend --verify 2
    --study <study>``. The verification offers it to the checkpoint reader (checked), which
    refuses it: with no header before torch sees it; with a header forged perfectly (the
    run's real fingerprint and the file's sha256, written the moment it is read) in
    torch's weights-only reader. The marker never appears and the verification completes."""
    import json

    from test_train_trainer import write_npz

    from metallmix.tools.training import checkpoint

    monkeypatch.setenv("METALLMIX_CACHE", str(fitted_cache))
    marker = tmp_path / "pwned"
    planted = isolated_workspace / "verify-checkpoints" / "S" / "c1.pt"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(pickle_bomb(marker, format=checkpoint.FORMAT))
    real_load = checkpoint.load
    offered: list[Path] = []

    def spy(path: Path, *, key: str, **kwargs: object) -> object:
        if Path(path) == planted and not offered:
            offered.append(Path(path))
            if header == "forged":
                checkpoint.header_path(planted).write_text(
                    json.dumps(
                        {
                            "format": checkpoint.FORMAT,
                            "fingerprint": key,
                            "sha256": _digest(planted),
                        }
                    )
                )
        return real_load(path, key=key, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint, "load", spy)
    argv = ["recommend", str(write_npz(tmp_path)), "--kb", str(kb), "--compute", "cpu"]
    argv += ["--verify", "2", "--study", "S", "--threads", "1", "--max-train-images", "40"]
    result = run_cli([*argv, "--json"], capsys)
    assert result.code == 0, result.err
    assert offered == [planted]  # the reader really was handed the planted file
    assert not marker.exists()
    verification = json.loads(result.out)["verification"]
    assert verification["complete"] and verification["winner_id"] in {"c1", "c2"}


def test_a_planted_weights_file_is_refused_without_running_code(tmp_path: Path) -> None:
    """``validate --weights FILE`` reads a state dict with torch's weights-only unpickler:
    a pickle with code in it is a clear error and the code never runs."""
    from metallmix.errors import ModelUnavailableError
    from metallmix.tools.training.trainer import TrainConfig, create_model

    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pth"
    weights.write_bytes(pickle_bomb(marker))
    config = TrainConfig(model="lcnet_050", weights=weights, image_size=16)
    with pytest.raises(ModelUnavailableError, match="cannot read weights file"):
        create_model(config, n_classes=2, channels=1)
    assert not marker.exists()


PLANTS = ["not in the manifest", "changed since written", "writable by others", "symlink"]


def plant(path: Path, data: bytes, how: str) -> None:
    """Put ``data`` at ``path`` the way another process could (see ``PLANTS``)."""
    from metallmix.atomic import write_recorded

    if how == "not in the manifest":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    elif how == "changed since written":
        write_recorded(path, b"what we wrote")
        path.write_bytes(data)
    elif how == "writable by others":  # the manifest vouches for it, anyone could swap it
        write_recorded(path, data)
        path.chmod(0o666)
    else:
        write_recorded(path, data)
        elsewhere = path.with_name("elsewhere")
        path.rename(elsewhere)
        path.symlink_to(elsewhere)


@pytest.mark.parametrize("how", PLANTS)
def test_a_planted_llm_prompt_state_never_reaches_llama_cpp(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saved KV state of the system prompt goes into llama.cpp's native state reader
    only if we wrote it (sha256 in our manifest, nobody else can write it); a planted file
    is recomputed and overwritten, and the next process loads our own state. The llama.cpp
    side is a stand-in here (its real twin: tests/test_llm_chat.py's cache tests)."""
    from types import SimpleNamespace

    import numpy as np

    from metallmix.agents.runtime import llm as llm_module

    set_calls: list[bytes] = []
    evaluated: list[int] = []
    monkeypatch.setattr(
        llm_module, "_set_state", lambda llama, ids, n, data: set_calls.append(data)
    )
    monkeypatch.setattr(llm_module, "_get_state", lambda llama: b"our own state")
    llama = SimpleNamespace(n_tokens=0, input_ids=np.full(512, -1), reset=lambda: None)
    prefix = SimpleNamespace(canonical=0, _stock_eval=evaluated.extend)
    engine = SimpleNamespace(_llama=llama, _prefix=prefix, sha256="0" * 64, n_ctx=512)
    tokens = list(range(llm_module.PREFIX_BLOCK * 2))

    def prefixes() -> object:
        fixed = llm_module._FixedPrefixes(engine)  # type: ignore[arg-type]
        monkeypatch.setattr(fixed, "fixed", lambda messages: tokens)
        return fixed

    first = prefixes()
    path = first.path(tokens)  # type: ignore[attr-defined]
    plant(path, b"planted: would reach native code", how)
    assert first.restore([]) == ("computed", len(tokens))  # type: ignore[attr-defined]
    assert set_calls == [] and evaluated == tokens  # refused, evaluated instead
    assert path.read_bytes() == b"our own state" and not path.is_symlink()
    assert prefixes().restore([]) == ("disk", len(tokens))  # type: ignore[attr-defined]
    assert set_calls == [b"our own state"]


@pytest.mark.parametrize("how", [*PLANTS, "pickled arrays"])
def test_a_planted_feature_cache_is_never_used(how: str, tmp_path: Path) -> None:
    """Frozen-backbone features saved by a build are read back only if we wrote them, and
    without pickles: a planted file (even one the manifest vouches for, holding object
    arrays that would run code) is ignored and the features extracted again."""
    import io

    import numpy as np

    from metallmix.atomic import write_recorded
    from metallmix.tools.training.trainer import FeatureCache

    marker = tmp_path / "pwned"
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    cache = FeatureCache(tmp_path / "cache")
    path = cache._file("k")
    assert path is not None
    buffer = io.BytesIO()
    planted_rows = np.full((2, 3), 99.0, dtype=np.float32)
    digests = np.array([np.frombuffer(d, dtype=np.uint8) for d in cache.digests(images)])
    if how == "pickled arrays":
        bomb = np.array([_Payload(marker)], dtype=object)
        np.savez(buffer, digests=digests, features=bomb, seconds_per_image=np.array(0.0))
        write_recorded(path, buffer.getvalue())
    else:
        np.savez(buffer, digests=digests, features=planted_rows, seconds_per_image=np.array(0.0))
        plant(path, buffer.getvalue(), how)
    extracted: list[int] = []

    def extract(batch: np.ndarray) -> np.ndarray:
        extracted.append(len(batch))
        return np.zeros((len(batch), 3), dtype=np.float32)

    feats, _, hit = cache.features("k", images, extract)
    assert extracted == [2] and not hit and not (feats == 99.0).any()
    assert not marker.exists()
    again, _, hit = FeatureCache(tmp_path / "cache").features("k", images, extract)
    assert hit and extracted == [2] and (again == 0.0).all()  # our rewrite is trusted


# --- 9. weak cases: each a specific error or a documented behaviour ------------------------


def test_diverged_validation_exits_1_and_is_never_a_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from test_train_trainer import write_npz

    from metallmix.tools.kb.frame import records_to_frame
    from metallmix.tools.kb.store import SQLiteKnowledgeBase
    from metallmix.tools.meta.metalearner import training_rows

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": "lcnet_050", "lr": 1e30, "epochs": 2, "image_size": 16}))
    kb = tmp_path / "kb.sqlite"
    argv = ["validate", "--data", str(write_npz(tmp_path)), "--config", str(cfg), "--kb", str(kb)]
    result = run_cli(argv, capsys)
    assert_clean_error(result, 1, "training diverged", "lower the learning rate")
    records = list(SQLiteKnowledgeBase(kb, read_only=True).iter_records())
    assert [r.status for r in records] == ["diverged"]
    assert training_rows(records_to_frame(records)).empty


def test_mlflow_file_store_import_explains_the_migration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mlruns"
    (folder / "0").mkdir(parents=True)
    (folder / "0" / "meta.yaml").write_text("name: Default\n")
    kb = tmp_path / "kb.sqlite"
    for uri in (str(folder), folder.as_uri()):
        argv = ["kb", "import-mlflow", "--tracking-uri", uri, "--kb", str(kb)]
        result = run_cli(argv, capsys)
        assert_clean_error(result, None, "MLflow 3.17", "mlflow migrate-filestore", "sqlite:///")
    assert not kb.exists()


@pytest.mark.parametrize("case", ["more than the candidates", "a card"])
def test_verify_requests_it_cannot_honour_are_refused_before_training(
    case: str, kb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_train_trainer import write_npz

    from metallmix.cli.recommend import example_card

    if case == "a card":
        argv = ["recommend", str(example_card("chest-xray")), "--verify", "2"]
        needles: tuple[str, ...] = ("dataset card", "drop --verify")
    else:
        argv = ["recommend", str(write_npz(tmp_path)), "--verify", "1000"]
        needles = ("--verify 1000 asks for more candidates than there are", "or fewer")
    result = run_cli([*argv, "--kb", str(kb), "--compute", "cpu"], capsys)
    assert_clean_error(result, None, *needles)
    assert "verify: c" not in result.err  # nothing trained


def test_import_quicktune_from_a_missing_folder_creates_no_kb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb = tmp_path / "new" / "kb.sqlite"
    argv = ["kb", "import-quicktune", str(tmp_path / "nope"), "--kb", str(kb)]
    result = run_cli(argv, capsys)
    assert_clean_error(result, None, str(tmp_path / "nope"))
    assert not kb.exists() and not kb.parent.exists()


@pytest.mark.parametrize(
    "body",
    ["path,label\nx.png,a\n", "dataset,model,out_val_accuracy\nd,resnet18,85\n"],
    ids=["foreign header", "bad row"],
)
def test_import_csv_of_a_bad_table_creates_no_kb(
    body: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The importer parses the table in check(), before run_import opens (creates) the KB.
    table = tmp_path / "runs.csv"
    table.write_text(body)
    kb = tmp_path / "new" / "kb.sqlite"
    result = run_cli(["kb", "import-csv", str(table), "--kb", str(kb)], capsys)
    assert_clean_error(result, None, str(table))
    assert not kb.exists() and not kb.parent.exists()


def test_archive_errors_name_the_users_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import zipfile

    archive = tmp_path / "qt_metadataset.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("extended/table.csv", "not,a,quick-tune,table\n1,2,3,4\n")
    dest = tmp_path / "dest"
    argv = ["kb", "download-quicktune", "--url", str(archive), "--dest", str(dest)]
    result = run_cli(argv, capsys)
    assert_clean_error(result, None, str(archive))
    assert ".quicktune-" not in result.err  # no deleted temp path
