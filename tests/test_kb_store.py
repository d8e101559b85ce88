"""The SQLite store: atomic, idempotent appends, layering, schema checks, several writers,
and crash safety with real killed processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_kb_tabular import make_record

from metallmix.errors import KnowledgeBaseError
from metallmix.tools.kb.records import KB_SCHEMA_VERSION, RunRecord
from metallmix.tools.kb.store import (
    LayeredKnowledgeBase,
    SQLiteKnowledgeBase,
    open_kb,
)


def records(prefix: str, n: int) -> list[RunRecord]:
    return [make_record(f"{prefix}:{i:05d}") for i in range(n)]


def test_add_is_idempotent_on_run_id(tmp_path: Path) -> None:
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    first = kb.add(records("a", 5))
    assert (first.inserted, first.skipped) == (5, 0)
    again = kb.add([*records("a", 5), *records("b", 2)])
    assert (again.inserted, again.skipped) == (2, 5)
    doubled = kb.add([make_record("c:1"), make_record("c:1")])  # duplicate inside one batch
    assert (doubled.inserted, doubled.skipped) == (1, 1)
    assert len(kb) == 8 and "a:00003" in kb
    got = kb.get("a:00003")
    assert got is not None
    assert got.model_dump_json() == make_record("a:00003").model_dump_json()
    assert [r.run_id for r in kb.iter_records()] == sorted(kb.run_ids())


def test_add_is_all_or_nothing(tmp_path: Path) -> None:
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    kb.add(records("before", 3))

    def failing() -> Iterator[RunRecord]:
        yield from records("new", 3)
        raise RuntimeError("source broke half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        kb.add(failing())
    assert kb.run_ids() == {f"before:{i:05d}" for i in range(3)}


def test_filters_and_info(tmp_path: Path) -> None:
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    kb.add([make_record("x:1"), make_record("x:2", source="csv", dataset="other")])
    assert [r.run_id for r in kb.records(source="csv")] == ["x:2"]
    assert [r.run_id for r in kb.records(dataset="breastmnist/sub200")] == ["x:1"]
    info = kb.info()
    assert info.total == 2 and info.by_source == {"csv": 1, "own": 1}
    assert info.by_dataset == {"breastmnist/sub200": 1, "other": 1}
    assert info.schema_version == KB_SCHEMA_VERSION
    assert info.content_hash == kb.content_hash()


def test_layered_store(tmp_path: Path) -> None:
    base_path = tmp_path / "bundled.sqlite"
    SQLiteKnowledgeBase(base_path).add([make_record("b:1"), make_record("shared:1", seed=1)])
    base = SQLiteKnowledgeBase(base_path, read_only=True)
    top = SQLiteKnowledgeBase(tmp_path / "user.sqlite")
    top.add([make_record("shared:1", seed=2)])  # the user's copy wins on a clash
    layered = LayeredKnowledgeBase(top, [base])
    result = layered.add([make_record("b:1"), make_record("u:1")])
    assert (result.inserted, result.skipped) == (1, 1)
    assert top.run_ids() == {"shared:1", "u:1"}  # writes went to the top only
    assert base.run_ids() == {"b:1", "shared:1"}
    assert [r.run_id for r in layered.iter_records()] == ["b:1", "shared:1", "u:1"]
    shared = layered.get("shared:1")
    assert shared is not None and shared.seed == 2
    assert layered.layers() == [top.location, base.location]


def test_read_only_store(tmp_path: Path) -> None:
    path = tmp_path / "bundled.sqlite"
    SQLiteKnowledgeBase(path).add(records("r", 2))
    ro = SQLiteKnowledgeBase(path, read_only=True)
    assert len(ro) == 2
    with pytest.raises(KnowledgeBaseError, match="read-only"):
        ro.add(records("new", 1))
    with pytest.raises(KnowledgeBaseError, match="does not exist"):
        SQLiteKnowledgeBase(tmp_path / "absent.sqlite", read_only=True)
    assert ro.get("r:00001") is not None and ro.get("nope") is None


def test_read_only_store_in_read_only_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package folder is not writable: the WAL-mode file still opens."""
    folder = tmp_path / "site packages #1"  # characters that need quoting in a file: URI
    path = folder / "kb.sqlite"
    SQLiteKnowledgeBase(path).add(records("r", 3))
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode)
    )
    ro = SQLiteKnowledgeBase(path, read_only=True)
    assert len(ro) == 3 and len(list(ro.iter_records())) == 3
    assert not Path(f"{path}-wal").exists()


def test_open_kb_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metallmix import config

    bundled = tmp_path / "pkg" / "kb.sqlite"
    SQLiteKnowledgeBase(bundled).add(records("shipped", 2))
    monkeypatch.setattr(config, "bundled_kb_path", lambda: bundled)
    default = open_kb()
    assert isinstance(default, LayeredKnowledgeBase)
    assert default.add(records("mine", 1)).inserted == 1
    assert len(default) == 3 and len(SQLiteKnowledgeBase(bundled)) == 2
    assert default.top.location == str(config.workspace_kb_path())

    monkeypatch.setenv("METALLMIX_KB", f"sqlite:///{tmp_path / 'env.sqlite'}")
    chosen = open_kb()
    assert isinstance(chosen, SQLiteKnowledgeBase) and chosen.path == tmp_path / "env.sqlite"
    assert open_kb(tmp_path / "explicit.sqlite").location == str(tmp_path / "explicit.sqlite")
    with pytest.raises(KnowledgeBaseError, match="points at the folder"):
        open_kb(tmp_path)


def test_schema_checks(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    SQLiteKnowledgeBase(newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.close()
    with pytest.raises(KnowledgeBaseError, match=r"schema version 99.*upgrade metallmix"):
        SQLiteKnowledgeBase(newer)

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(KnowledgeBaseError, match=r"garbage\.sqlite"):
        SQLiteKnowledgeBase(garbage)
    assert garbage.read_bytes() == b"definitely not sqlite" * 100

    foreign = tmp_path / "mlflow.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE experiments (id INTEGER)")
    conn.close()
    with pytest.raises(KnowledgeBaseError, match="another application"):
        SQLiteKnowledgeBase(foreign)
    with sqlite3.connect(foreign) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"experiments"}  # untouched

    stale = tmp_path / "stale.sqlite"
    SQLiteKnowledgeBase(stale).add(records("s", 1))
    with sqlite3.connect(stale) as conn:
        conn.execute("UPDATE runs SET record = json_set(record, '$.bogus', 1)")
    conn.close()
    # A row that no longer validates is skipped and reported, not fatal to the whole KB.
    SQLiteKnowledgeBase(stale).add(records("t", 1))
    kb = SQLiteKnowledgeBase(stale)
    assert [r.run_id for r in kb.iter_records()] == ["t:00000"]
    assert "bogus" in kb.unreadable_records()["s:00000"]
    assert kb.info().unreadable == kb.unreadable_records()
    assert kb.remove(["s:00000"]) == 1 and kb.run_ids() == {"t:00000"}
    assert kb.unreadable_records() == {}


# --- several processes ------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from test_kb_tabular import make_record
    from metallmix.tools.kb.store import SQLiteKnowledgeBase
    worker, n, shared = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    kb = SQLiteKnowledgeBase({path!r})
    total_inserted = total_skipped = 0
    for batch in range(4):
        recs = [make_record(f"w{{worker}}:{{batch}}:{{i}}") for i in range(n)]
        recs += [make_record(f"shared:{{batch}}:{{i}}") for i in range(shared)]
        result = kb.add(recs)
        total_inserted += result.inserted
        total_skipped += result.skipped
    print(json.dumps({{"inserted": total_inserted, "skipped": total_skipped}}))
    """
)


def test_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "kb.sqlite"
    script = WRITER.format(tests=str(Path(__file__).parent), path=str(path))
    workers, n, shared = 4, 15, 5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(w), str(n), str(shared)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    expected = workers * 4 * n + 4 * shared
    assert sum(r["inserted"] for r in results) == expected
    assert sum(r["skipped"] for r in results) == (workers - 1) * 4 * shared
    kb = SQLiteKnowledgeBase(path)
    assert len(kb) == expected
    assert len(list(kb.iter_records())) == expected


# --- crash safety -----------------------------------------------------------------------

CRASHER = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from test_kb_tabular import make_record
    from metallmix.tools.kb.store import SQLiteKnowledgeBase
    mode = sys.argv[1]
    kb = SQLiteKnowledgeBase({path!r})

    def batch():
        for i in range(3000):
            if mode == "iterator" and i == 1500:
                os.kill(os.getpid(), signal.SIGKILL)  # dies while the records are produced
            yield make_record(f"import:{{i:05d}}")

    if mode in ("in-transaction", "external"):
        # Kill (or announce, for the test to kill) while SQLite executes the INSERTs,
        # i.e. inside the open transaction, after part of the batch is written.
        original = kb._connect
        calls = [0]

        def connect():
            conn = original()

            def handler():
                calls[0] += 1
                if calls[0] == 200:
                    # Rows already inserted in the open (uncommitted) transaction.
                    print("mid-transaction", conn.total_changes, conn.in_transaction, flush=True)
                    if mode == "in-transaction":
                        os.kill(os.getpid(), signal.SIGKILL)
                if calls[0] > 200 and mode == "external":
                    time.sleep(0.01)
                return 0

            conn.set_progress_handler(handler, 100)
            return conn

        kb._connect = connect
    print("starting", flush=True)
    kb.add(batch())
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["iterator", "in-transaction", "external"])
def test_killed_import_leaves_kb_as_before(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "kb.sqlite"
    kb = SQLiteKnowledgeBase(path)
    kb.add(records("before", 10))
    before_hash = kb.content_hash()

    script = CRASHER.format(tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if mode == "external" and line.startswith("mid-transaction"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    seen += proc.stdout.read().splitlines()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, seen)
    assert "finished" not in seen
    if mode != "iterator":
        _, changes, in_transaction = next(s for s in seen if s.startswith("mid")).split()
        assert int(changes) > 0 and in_transaction == "True"  # killed with rows half-written

    after = SQLiteKnowledgeBase(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    assert after.content_hash() == before_hash
    assert len(after) == 10

    # Re-running the import after the crash completes it, with nothing duplicated.
    redo = after.add(make_record(f"import:{i:05d}") for i in range(3000))
    assert (redo.inserted, redo.skipped) == (3000, 0)
    assert len(after) == 3010
