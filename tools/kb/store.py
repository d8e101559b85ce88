"""Knowledge-base storage: one interface, swappable backends (like Optuna's storages).

The default backend is an embedded SQLite file. Every ``add`` is one transaction, so an
import killed half-way leaves the store exactly as before; inserts are idempotent on
``run_id`` so re-running an import never duplicates. WAL mode and a busy timeout let
several processes append to the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from pydantic import ValidationError

from metallmix.errors import KnowledgeBaseError
from metallmix.tools.kb.records import KB_SCHEMA_VERSION, RunRecord


@dataclass(frozen=True)
class AddResult:
    """How many records an ``add`` inserted and how many it skipped as already present."""

    inserted: int
    skipped: int


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

    def to_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "by_source": self.by_source,
            "by_dataset": self.by_dataset,
            "by_status": self.by_status,
            "schema_version": self.schema_version,
            "location": self.location,
            "content_hash": self.content_hash,
            "layers": self.layers,
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
        digest = hashlib.sha256()
        for record in self.iter_records():
            digest.update(record.model_dump_json().encode())
        return digest.hexdigest()[:16]

    def info(self) -> KBInfo:
        records = list(self.iter_records())
        digest = hashlib.sha256()
        for record in records:
            digest.update(record.model_dump_json().encode())
        return KBInfo(
            total=len(records),
            by_source=dict(sorted(Counter(r.source for r in records).items())),
            by_dataset=dict(sorted(Counter(r.dataset for r in records).items())),
            by_status=dict(sorted(Counter(r.status for r in records).items())),
            schema_version=KB_SCHEMA_VERSION,
            location=self.location,
            content_hash=digest.hexdigest()[:16],
            layers=self.layers(),
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


class SQLiteKnowledgeBase(KnowledgeBase):
    """The embedded default store: a single SQLite file."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.read_only = read_only
        if read_only and not self.path.is_file():
            raise KnowledgeBaseError(
                f"knowledge base {self.path} does not exist; build one with "
                "`metallmix kb import-quicktune` or `metallmix kb build`, or point "
                "METALLMIX_KB at an existing store"
            )
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KnowledgeBaseError(
                    f"cannot create the folder for knowledge base {self.path}: {exc}"
                ) from exc
        conn = self._connect()
        try:  # closed explicitly: an unclosed connection leaves the -wal file behind
            with conn:
                if not read_only:
                    self._refuse_foreign(conn)
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

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.read_only:
                # SQLite needs to write a WAL index even to read a WAL-mode file; in a
                # read-only folder (an installed package) it cannot, and the shipped KB never
                # changes, so it is opened immutable there.
                flags = "mode=ro" if os.access(self.path.parent, os.W_OK) else "mode=ro&immutable=1"
                uri = f"file:{quote(str(self.path))}?{flags}"
                conn = sqlite3.connect(uri, uri=True, timeout=30.0)
            else:
                conn = sqlite3.connect(self.path, timeout=30.0)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise KnowledgeBaseError(f"cannot open knowledge base {self.path}: {exc}") from exc
        return conn

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Never add KB tables to another application's SQLite file (e.g. mlflow.db)."""
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise KnowledgeBaseError(
                f"{self.path} is not a MetaLLMiX knowledge base ({exc}); "
                "choose another file with METALLMIX_KB or --kb"
            ) from exc
        if tables and "meta" not in tables:
            raise KnowledgeBaseError(
                f"{self.path} is an SQLite file of another application (tables: "
                f"{', '.join(sorted(tables)[:5])}); choose another file with METALLMIX_KB or --kb"
            )

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
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
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            inserted = conn.total_changes - before
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()
        return AddResult(inserted=inserted, skipped=len(rows) - inserted)

    def iter_records(self) -> Iterator[RunRecord]:
        conn = self._connect()
        try:
            rows = conn.execute("SELECT run_id, record FROM runs ORDER BY run_id").fetchall()
        finally:
            conn.close()
        for run_id, payload in rows:
            try:
                yield RunRecord.model_validate_json(payload)
            except ValidationError as exc:
                raise KnowledgeBaseError(
                    f"record {run_id} in {self.path} does not match the current schema: {exc}"
                ) from exc

    def run_ids(self) -> set[str]:
        conn = self._connect()
        try:
            return {row[0] for row in conn.execute("SELECT run_id FROM runs")}
        finally:
            conn.close()

    def get(self, run_id: str) -> RunRecord | None:
        """One record by primary key, without parsing the whole store."""
        conn = self._connect()
        try:
            row = conn.execute("SELECT record FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        finally:
            conn.close()
        if row is None:
            return None
        try:
            return RunRecord.model_validate_json(row[0])
        except ValidationError as exc:
            raise KnowledgeBaseError(
                f"record {run_id} in {self.path} does not match the current schema: {exc}"
            ) from exc


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


def open_kb(spec: str | os.PathLike[str] | None = None) -> KnowledgeBase:
    """Open the KB named by ``spec``, else ``METALLMIX_KB``, else the layered default.

    ``spec`` is a path to a ``.sqlite`` file (``sqlite:///`` prefix accepted). The
    default is the user's workspace store layered over the KB shipped in the package.
    """
    from metallmix import config

    value = str(spec) if spec is not None else config.kb_uri()
    if value:
        if value.startswith("sqlite:///"):
            value = value[len("sqlite:///") :]
        path = Path(value).expanduser()
        if path.is_dir():
            raise KnowledgeBaseError(
                f"METALLMIX_KB/--kb points at the folder {path}; give a .sqlite file path"
            )
        return SQLiteKnowledgeBase(path)
    workspace = SQLiteKnowledgeBase(config.workspace_kb_path())
    bundled = config.bundled_kb_path()
    bases: list[KnowledgeBase] = []
    if bundled.is_file():
        bases.append(SQLiteKnowledgeBase(bundled, read_only=True))
    return LayeredKnowledgeBase(workspace, bases)


def records_to_json_lines(records: Iterable[RunRecord]) -> str:
    """Newline-delimited JSON, used by exports and MLflow artifacts."""
    return "\n".join(json.dumps(r.model_dump(mode="json")) for r in records)
