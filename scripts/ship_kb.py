"""Replace the own runs of the shipped KB with those of a build KB (issue 12).

Runs of other sources (Quick-Tune, ...) in the shipped file are kept. The new file is
written beside the target and moved over it in one step, in rollback-journal mode (a
package file must not need a WAL index to be read).

    python scripts/ship_kb.py --build /work/kbbuild/own.sqlite --to metallmix/data/kb.sqlite
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
from pathlib import Path

from metallmix.atomic import atomic_path
from metallmix.tools.kb.store import SQLiteKnowledgeBase


def finalize(path: Path) -> None:
    """Checkpoint any WAL into the file, then rollback-journal mode and VACUUM."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("VACUUM")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def ship(build: Path, target: Path) -> tuple[int, int, int]:
    """(own runs removed, own runs added, other runs kept)."""
    if Path(str(target) + "-wal").exists():  # a writer left pages in the WAL: fold them in
        finalize(target)
    with atomic_path(target, suffix=".sqlite") as tmp:
        shutil.copyfile(target, tmp)
        kb = SQLiteKnowledgeBase(tmp)
        old = [r.run_id for r in kb.iter_records() if r.source == "own"]
        kb.remove(old)
        new = [r for r in SQLiteKnowledgeBase(build, read_only=True).iter_records()]
        new = [r for r in new if r.source == "own"]
        kb.add(new)
        kept = sum(1 for r in kb.iter_records() if r.source != "own")
        del kb
        finalize(tmp)
    return len(old), len(new), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, help="KB written by `kb build`")
    parser.add_argument("--to", type=Path, default=Path("metallmix/data/kb.sqlite"))
    parser.add_argument(
        "--finalize-only", action="store_true", help="only fold the WAL and switch journal mode"
    )
    args = parser.parse_args()
    if args.finalize_only:
        finalize(args.to)
        print(f"{args.to}: rollback-journal mode")
        return
    if args.build is None:
        parser.error("--build is required (the KB written by `kb build`)")
    removed, added, kept = ship(args.build, args.to)
    print(f"{args.to}: removed {removed} own runs, added {added}, kept {kept} of other sources")


if __name__ == "__main__":
    main()
