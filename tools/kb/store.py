"""Knowledge-base storage: one interface, swappable backends (like Optuna's storages).

The default backend is an embedded SQLite file. Every ``add`` is one transaction, so an
import killed half-way leaves the store exactly as before; inserts are idempotent on
``run_id`` so re-running an import never duplicates. WAL mode and a busy timeout let
several processes append to the same file.

Only writing commands may create or alter a file: read-only commands (``kb info``,
``kb export``, ``meta``, ``recommend``) open it with ``mode=ro`` and never switch its
journal mode, and every file is checked to be a MetaLLMiX KB (SQLite magic, ``meta`` and
``runs`` tables) *before* any PRAGMA, so pointing ``--kb`` at another application's
database (MLflow's ``mlflow.db``) leaves it byte-identical. SQLite errors (locked,
read-only, unreadable) become :class:`KnowledgeBaseError` naming the file and the fix, and
a stored row that no longer validates is skipped and reported rather than failing the KB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from pydantic import ValidationError

from metallmix import config
from metallmix.errors import KnowledgeBaseError
from metallmix.tools.kb.records import KB_SCHEMA_VERSION, RunRecord
from metallmix.tools.kb.regime import counts_by_regime, counts_by_source_and_regime

log = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 30.0  # how long a command waits for another writer before giving up
# A reader waits less: a writer's exclusive phase is a commit (milliseconds), so seconds of
# "busy" mean another process holds the file; say so instead of looking hung.
READER_BUSY_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class AddResult:
    """How many records an ``add`` inserted and how many it skipped as already present."""

    inserted: int
    skipped: int


def kb_content_hash(records: Iterable[RunRecord]) -> str:
    """The one digest of a KB's content (records in run-id order), 16 hex characters.

    Caches of fitted meta-learners and retrieval indexes are keyed by it, recommendations
    record it, so every caller (a store, or records already in memory) must agree.
    """
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.run_id):
        digest.update(record.model_dump_json().encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class KBInfo:
    """Counts reported by ``metallmix kb info``."""

    total: int
    by_source: dict[str, int]
    by_dataset: dict[str, int]
    by_status: dict[str, int]
    schema_version: int
    location: str
    content_hash: str
    layers: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    by_regime: dict[str, int] = field(default_factory=dict)
    by_regime_source: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "by_source": self.by_source,
            "by_regime": self.by_regime,
            "by_regime_source": self.by_regime_source,
            "by_dataset": self.by_dataset,
            "by_status": self.by_status,
            "schema_version": self.schema_version,
            "location": self.location,
            "content_hash": self.content_hash,
            "layers": self.layers,
            "unreadable": self.unreadable,
        }


class KnowledgeBase(ABC):
    """A store of :class:`RunRecord` objects."""

    @abstractmethod
    def add(self, records: Iterable[RunRecord]) -> AddResult:
        """Insert all records atomically; records whose run_id exists are skipped."""

    @abstractmethod
    def iter_records(self) -> Iterator[RunRecord]:
        """Every record, ordered by run_id."""

    @abstractmethod
    def run_ids(self) -> set[str]:
        """The set of stored run ids (cheap: no record parsing)."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Human-readable location for messages and MLflow params."""

    def remove(self, run_ids: Iterable[str]) -> int:
        """Delete records by run id in one transaction; returns how many were deleted."""
        raise KnowledgeBaseError(f"knowledge base {self.location} cannot remove records")

    def replace(self, records: Iterable[RunRecord]) -> int:
        """Rewrite stored records (same run ids) in one transaction, e.g. with recomputed
        landmarks: every row changes or none does. Returns how many were rewritten."""
        raise KnowledgeBaseError(f"knowledge base {self.location} cannot rewrite records")

    def unreadable_records(self) -> dict[str, str]:
        """Rows skipped by the last reads because they no longer validate: run_id -> reason."""
        return {}

    def records(
        self,
        *,
        dataset: str | None = None,
        source: str | None = None,
        status: str | None = None,
    ) -> list[RunRecord]:
        """Records filtered by dataset, source and status (None = any)."""
        return [
            r
            for r in self.iter_records()
            if (dataset is None or r.dataset == dataset)
            and (source is None or r.source == source)
            and (status is None or r.status == status)
        ]

    def get(self, run_id: str) -> RunRecord | None:
        for record in self.iter_records():
            if record.run_id == run_id:
                return record
        return None

    def __len__(self) -> int:
        return len(self.run_ids())

    def __contains__(self, run_id: object) -> bool:
        return run_id in self.run_ids()

    def content_hash(self) -> str:
        """A hash of the whole content: fitted models are reused only while it is unchanged."""
        return kb_content_hash(self.iter_records())

    def info(self) -> KBInfo:
        records = list(self.iter_records())
        return KBInfo(
            total=len(records),
            by_source=dict(sorted(Counter(r.source for r in records).items())),
            by_dataset=dict(sorted(Counter(r.dataset for r in records).items())),
            by_status=dict(sorted(Counter(r.status for r in records).items())),
            schema_version=KB_SCHEMA_VERSION,
            location=self.location,
            content_hash=kb_content_hash(records),
            layers=self.layers(),
            unreadable=self.unreadable_records(),
            by_regime=counts_by_regime(records),
            by_regime_source=counts_by_source_and_regime(records),
        )

    def layers(self) -> list[str]:
        return [self.location]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    dataset TEXT NOT NULL,
    dataset_group TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_dataset ON runs(dataset);
"""


def _is_lock_error(exc: BaseException) -> bool:
    lowered = str(exc).lower()
    return "locked" in lowered or "busy" in lowered


class SQLiteKnowledgeBase(KnowledgeBase):
    """The embedded default store: a single SQLite file."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.read_only = read_only
        self.unreadable: dict[str, str] = {}
        if self.path.is_dir():
            raise KnowledgeBaseError(
                f"--kb/METALLMIX_KB points at the folder {self.path}; give a .sqlite file path"
            )
        exists = self.path.is_file()
        if read_only and not exists:
            raise KnowledgeBaseError(
                f"knowledge base {self.path} does not exist (read-only commands never create "
                "one); check the path, or build one with `metallmix kb import-quicktune` or "
                "`metallmix kb build`"
            )
        if exists and (read_only or self.path.stat().st_size > 0):
            # Before any PRAGMA: a foreign or damaged file must stay byte-identical.
            self._check_magic()
            conn = self._connect_reader()
            try:
                with self._sqlite_errors("read"):
                    self._refuse_foreign(conn, allow_empty=not read_only)
                    if read_only:
                        self._check_schema(conn)
            finally:
                self._close_reader(conn)
        if read_only:
            return
        if exists and not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            what = "file" if not os.access(self.path, os.W_OK) else "folder"
            raise KnowledgeBaseError(
                f"knowledge base {self.path} is read-only (its {what} is not writable); "
                "writing needs write access to the file and its folder (chmod u+w), or "
                "choose another file with --kb"
            )
        if not exists:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KnowledgeBaseError(
                    f"cannot create the folder for knowledge base {self.path}: {exc}"
                ) from exc
        conn = self._connect()
        try:  # closed explicitly: an unclosed connection leaves the -wal file behind
            with self._sqlite_errors("write"), conn:
                conn.executescript(_SCHEMA)
                conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(KB_SCHEMA_VERSION),),
                )
                self._check_schema(conn)
        finally:
            conn.close()

    @property
    def location(self) -> str:
        return str(self.path)

    def _check_magic(self) -> None:
        try:
            with self.path.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise KnowledgeBaseError(f"cannot read knowledge base {self.path}: {exc}") from exc
        if not head:
            raise KnowledgeBaseError(
                f"knowledge base {self.path} is an empty file, not a MetaLLMiX knowledge base; "
                "check the path, or delete it and import runs into it with `metallmix kb import`"
            )
        if head != SQLITE_MAGIC:
            raise KnowledgeBaseError(
                f"{self.path} is not a MetaLLMiX knowledge base (not an SQLite file); "
                "choose another file with METALLMIX_KB or --kb"
            )

    def _wal_mode(self) -> bool:
        """Header bytes 18-19 are 2 for a WAL-mode file (1 for rollback journal)."""
        try:
            with self.path.open("rb") as fh:
                header = fh.read(20)
        except OSError:
            return False
        return len(header) == 20 and header[18] == 2

    @contextmanager
    def _sqlite_errors(self, action: str) -> Iterator[None]:
        """SQLite errors as a KnowledgeBaseError that names the file and the fix."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._explain(exc, action) from exc

    def _explain(self, exc: sqlite3.Error, action: str) -> KnowledgeBaseError:
        text = str(exc)
        lowered = text.lower()
        if _is_lock_error(exc):
            waited = READER_BUSY_TIMEOUT_S if self.read_only or action == "read" else BUSY_TIMEOUT_S
            return KnowledgeBaseError(
                f"knowledge base {self.path} is locked by another process (waited "
                f"{waited:g} s); wait for the other import or training run to finish "
                "and retry"
            )
        if "readonly" in lowered or "read-only" in lowered:
            return KnowledgeBaseError(
                f"knowledge base {self.path} is read-only ({text}); writing needs write access "
                "to the file and its folder (chmod u+w), or choose another file with --kb"
            )
        if "not a database" in lowered or "malformed" in lowered:
            return KnowledgeBaseError(
                f"{self.path} is not a MetaLLMiX knowledge base or is damaged ({text}); "
                "choose another file with METALLMIX_KB or --kb"
            )
        return KnowledgeBaseError(
            f"cannot {action} knowledge base {self.path}: {text}; check that the file and its "
            "folder are readable (and writable for imports)"
        )

    def _connect(self) -> sqlite3.Connection:
        """A connection for this store: read-only stores never get a writable one."""
        if self.read_only:
            return self._connect_reader()
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise self._explain(exc, "open") from exc
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        """``mode=ro``: no statement can write, the journal mode is never switched.

        A WAL-mode file needs a shared-memory index even to be read: where this process
        cannot write (an installed package, a read-only file) and no ``-wal`` holds
        uncheckpointed changes, the file is opened ``immutable``, so nothing is created.
        """
        writable = os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        wal = Path(f"{self.path}-wal")
        flags = "mode=ro"
        if self._wal_mode() and not writable:
            if wal.is_file() and wal.stat().st_size > 0:
                raise KnowledgeBaseError(
                    f"knowledge base {self.path} is read-only here and has uncheckpointed "
                    f"changes in {wal.name}; ask its owner to run `sqlite3 {self.path} "
                    "'PRAGMA wal_checkpoint(TRUNCATE)'`, or copy the file somewhere writable"
                )
            flags = "mode=ro&immutable=1"
        self._reader_created_wal = not wal.exists()
        uri = f"file:{quote(str(self.path))}?{flags}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=READER_BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise self._explain(exc, "open") from exc
        return conn

    def _close_reader(self, conn: sqlite3.Connection) -> None:
        """Close; if this read left ``-wal``/``-shm`` files that were not there, let SQLite
        remove them (a read-write connection that is the last one deletes them on close
        without changing a byte of the database)."""
        conn.close()
        wal = Path(f"{self.path}-wal")
        if not (getattr(self, "_reader_created_wal", False) and wal.exists()):
            return
        if not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            return
        try:
            cleaner = sqlite3.connect(self.path, timeout=1.0)
            try:
                cleaner.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                cleaner.close()
        except sqlite3.Error:  # another process holds it: the files are theirs now
            pass

    @contextmanager
    def _session(self, action: str = "read") -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            with self._sqlite_errors(action):
                yield conn
        finally:
            if self.read_only:
                self._close_reader(conn)
            else:
                conn.close()

    def _refuse_foreign(self, conn: sqlite3.Connection, *, allow_empty: bool) -> None:
        """Never read or add KB tables to another application's SQLite file (mlflow.db)."""
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            if _is_lock_error(exc):
                raise self._explain(exc, "read") from exc
            raise KnowledgeBaseError(
                f"{self.path} is not a MetaLLMiX knowledge base ({exc}); "
                "choose another file with METALLMIX_KB or --kb"
            ) from exc
        if not tables and allow_empty:
            return
        if not tables:
            raise KnowledgeBaseError(
                f"{self.path} is an empty SQLite file, not a MetaLLMiX knowledge base; "
                "import runs into it first (`metallmix kb import-quicktune ... --kb FILE`)"
            )
        if not {"meta", "runs"} <= tables:
            raise KnowledgeBaseError(
                f"{self.path} is an SQLite file of another application (tables: "
                f"{', '.join(sorted(tables)[:5])}); choose another file with METALLMIX_KB or --kb"
            )

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            if _is_lock_error(exc):
                raise self._explain(exc, "read") from exc
            raise KnowledgeBaseError(
                f"{self.path} is not a MetaLLMiX knowledge base ({exc}); "
                "choose another file with METALLMIX_KB"
            ) from exc
        if row is None or int(row[0]) > KB_SCHEMA_VERSION:
            raise KnowledgeBaseError(
                f"{self.path} has KB schema version {row[0] if row else 'none'}, this "
                f"MetaLLMiX reads up to {KB_SCHEMA_VERSION}; upgrade metallmix"
            )

    def add(self, records: Iterable[RunRecord]) -> AddResult:
        if self.read_only:
            raise KnowledgeBaseError(f"knowledge base {self.path} is read-only")
        rows = [
            (
                r.run_id,
                r.source,
                r.dataset,
                r.dataset_group,
                r.status,
                r.created_at.isoformat(),
                r.model_dump_json(),
            )
            for r in records
        ]
        inserted = self._write("INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return AddResult(inserted=inserted, skipped=len(rows) - inserted)

    def remove(self, run_ids: Iterable[str]) -> int:
        if self.read_only:
            raise KnowledgeBaseError(f"knowledge base {self.path} is read-only")
        ids = [(run_id,) for run_id in dict.fromkeys(run_ids)]
        removed = self._write("DELETE FROM runs WHERE run_id = ?", ids)
        for (run_id,) in ids:
            self.unreadable.pop(run_id, None)
        return removed

    def replace(self, records: Iterable[RunRecord]) -> int:
        if self.read_only:
            raise KnowledgeBaseError(f"knowledge base {self.path} is read-only")
        rows = [
            (r.dataset, r.dataset_group, r.status, r.model_dump_json(), r.run_id) for r in records
        ]
        missing = {row[-1] for row in rows} - self.run_ids()
        if missing:
            raise KnowledgeBaseError(
                f"cannot rewrite {len(missing)} run(s) not in {self.path} "
                f"(e.g. {sorted(missing)[0]}); nothing was changed"
            )
        return self._write(
            "UPDATE runs SET dataset = ?, dataset_group = ?, status = ?, record = ? "
            "WHERE run_id = ?",
            rows,
        )

    def unreadable_records(self) -> dict[str, str]:
        return dict(self.unreadable)

    def _write(self, sql: str, rows: Sequence[tuple[object, ...]]) -> int:
        """Run one statement over ``rows`` in a single IMMEDIATE transaction; rows changed.

        The one write path of the store: any failure (or a kill) rolls the whole batch back,
        so an import or a removal is all-or-nothing."""
        conn = self._connect()
        try:
            with self._sqlite_errors("write to"):
                conn.execute("BEGIN IMMEDIATE")
                before = conn.total_changes
                conn.executemany(sql, rows)
                changed = conn.total_changes - before
                conn.execute("COMMIT")
        except BaseException:
            with self._sqlite_errors("write to"):
                conn.rollback()
            raise
        finally:
            conn.close()
        return changed

    def _parse(self, run_id: str, payload: str) -> RunRecord | None:
        """The record, or None (reported once, kept in ``unreadable``) for a bad row."""
        try:
            record = RunRecord.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            reason = f"{where}: {first['msg']}"
            if run_id not in self.unreadable:
                log.warning(
                    "skipped record %s in %s: does not match the current schema (%s); "
                    "remove it with `metallmix kb remove %s --kb %s`",
                    run_id,
                    self.path,
                    reason,
                    run_id,
                    self.path,
                )
            self.unreadable[run_id] = reason
            return None
        self.unreadable.pop(run_id, None)
        return record

    def iter_records(self) -> Iterator[RunRecord]:
        with self._session() as conn:
            rows = conn.execute("SELECT run_id, record FROM runs ORDER BY run_id").fetchall()
        for run_id, payload in rows:
            record = self._parse(run_id, payload)
            if record is not None:
                yield record

    def run_ids(self) -> set[str]:
        with self._session() as conn:
            return {row[0] for row in conn.execute("SELECT run_id FROM runs")}

    def get(self, run_id: str) -> RunRecord | None:
        """One record by primary key, without parsing the whole store."""
        with self._session() as conn:
            row = conn.execute("SELECT record FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        return self._parse(run_id, row[0])


class LayeredKnowledgeBase(KnowledgeBase):
    """A writable store on top of read-only ones (the user's workspace over the shipped KB).

    Reads merge all layers (the top layer wins on a run_id clash); writes go to the top.
    """

    def __init__(self, top: KnowledgeBase, bases: Sequence[KnowledgeBase]) -> None:
        self.top = top
        self.bases = list(bases)

    @property
    def location(self) -> str:
        return " over ".join([self.top.location, *(b.location for b in self.bases)])

    def layers(self) -> list[str]:
        return [self.top.location, *(b.location for b in self.bases)]

    def add(self, records: Iterable[RunRecord]) -> AddResult:
        existing = set().union(*(b.run_ids() for b in self.bases)) if self.bases else set()
        fresh: list[RunRecord] = []
        skipped = 0
        for record in records:
            if record.run_id in existing:
                skipped += 1
            else:
                fresh.append(record)
        result = self.top.add(fresh)
        return AddResult(inserted=result.inserted, skipped=result.skipped + skipped)

    def iter_records(self) -> Iterator[RunRecord]:
        merged: dict[str, RunRecord] = {}
        for layer in [*reversed(self.bases), self.top]:
            for record in layer.iter_records():
                merged[record.run_id] = record
        for run_id in sorted(merged):
            yield merged[run_id]

    def run_ids(self) -> set[str]:
        ids = set(self.top.run_ids())
        for base in self.bases:
            ids |= base.run_ids()
        return ids

    def remove(self, run_ids: Iterable[str]) -> int:
        wanted = list(dict.fromkeys(run_ids))
        mine = self.top.run_ids()
        shipped = [r for r in wanted if r not in mine and any(r in b.run_ids() for b in self.bases)]
        if shipped:
            raise KnowledgeBaseError(
                f"run(s) {', '.join(shipped[:5])} are in the read-only layer(s) "
                f"{', '.join(b.location for b in self.bases)}, not in {self.top.location}; "
                "they cannot be removed there (use --kb FILE with a copy you own)"
            )
        return self.top.remove(wanted)

    def unreadable_records(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for layer in [*reversed(self.bases), self.top]:
            out.update(layer.unreadable_records())
        return out


def open_kb(
    spec: str | os.PathLike[str] | None = None, *, read_only: bool = False
) -> KnowledgeBase:
    """Open the KB named by ``spec``, else ``METALLMIX_KB``, else the layered default.

    ``spec`` is a path to a ``.sqlite`` file (``sqlite:///`` prefix accepted). The
    default is the user's workspace store layered over the KB shipped in the package.
    ``read_only`` (every command that only reads) never creates a file or folder and never
    writes to an existing one: a mistyped path is an error, not a new empty KB.
    """
    value = str(spec) if spec is not None else config.kb_uri()
    if value:
        if value.startswith("sqlite:///"):
            value = value[len("sqlite:///") :]
        path = Path(value).expanduser()
        if path.is_dir():
            raise KnowledgeBaseError(
                f"METALLMIX_KB/--kb points at the folder {path}; give a .sqlite file path"
            )
        return SQLiteKnowledgeBase(path, read_only=read_only)
    bundled = config.bundled_kb_path()
    bases: list[KnowledgeBase] = []
    if bundled.is_file():
        bases.append(SQLiteKnowledgeBase(bundled, read_only=True))
    workspace_path = config.workspace_kb_path()
    if read_only and not workspace_path.is_file():
        if not bases:
            raise KnowledgeBaseError(
                f"no knowledge base: neither {workspace_path} nor the shipped {bundled} exists; "
                "build one with `metallmix kb import-quicktune` or `metallmix kb build`"
            )
        return LayeredKnowledgeBase(bases[0], bases[1:])
    workspace = SQLiteKnowledgeBase(workspace_path, read_only=read_only)
    return LayeredKnowledgeBase(workspace, bases)


def records_to_json_lines(records: Iterable[RunRecord]) -> str:
    """Newline-delimited JSON, used by exports and MLflow artifacts."""
    return "\n".join(json.dumps(r.model_dump(mode="json")) for r in records)
