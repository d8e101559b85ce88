"""The one home of MLflow plumbing: training, searches, KB builds, the MLflow importer, the
recommendation graph's record and the benchmarks all go through it.

A client bound to one tracking URI (instead of the ``mlflow`` module's global state) so that
a recommendation run, its nested validation runs and a parallel KB build never step on each
other's "active run". Experiments get their artifact root beside the tracking database
(``sqlite:///mlruns/mlflow.db`` -> ``mlruns/artifacts``), which MLflow 3 needs for DB stores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from metallmix import __version__, config
from metallmix.errors import TrackingError
from metallmix.tools.kb.records import redact_uri

KIND_TAG = "metallmix.kind"
TRAINING_KIND = "training-run"
SEARCH_KIND = "search"
BUILD_KIND = "kb-build"
RECORD_ARTIFACT = "metallmix/run_record.json"  # a training run's full RunRecord


def redact_text(text: str) -> str:
    """``text`` with every URI's credentials stripped (error messages quote store URIs)."""
    import re

    return re.sub(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+", lambda m: redact_uri(m[0]) or "", text)


def short_reason(exc: BaseException) -> str:
    """One line for a tracking failure: the root cause (MLflow wraps SQLAlchemy, which wraps
    sqlite3, and the outer messages run to pages of SQL), credentials stripped."""
    root = exc
    seen = {id(root)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    text = next((line.strip() for line in str(root).splitlines() if line.strip()), "")
    return redact_text(f"{type(root).__name__}: {text}"[:500])


@contextlib.contextmanager
def quiet_store_errors() -> Iterator[None]:
    """MLflow's SQL store logs a failed write with its whole traceback before raising it;
    while we catch and report the failure in one line ourselves, that log stays silent."""
    logger = logging.getLogger("mlflow.store.db.utils")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


def artifact_root(tracking_uri: str) -> str | None:
    """Where a new experiment stores artifacts: ``<db folder>/artifacts`` for SQLite stores."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "artifacts").resolve().as_uri()
    if "://" not in tracking_uri:  # a plain folder: file store
        return None
    return None


def _unusable(uri: str, exc: BaseException | str) -> TrackingError:
    return TrackingError(
        f"MLflow tracking store {redact_uri(uri)} is not usable ({exc}); set "
        "MLFLOW_TRACKING_URI to a writable store, e.g. sqlite:///mlruns/mlflow.db"
    )


def client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (default: :func:`metallmix.config.tracking_uri`).

    A local store that cannot be created or opened is a :class:`TrackingError` here, before
    any training starts, rather than a traceback from inside MLflow.
    """
    from mlflow import MlflowClient  # slow to import: only where a client is made

    uri = tracking_uri or config.tracking_uri()
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    db = Path(uri[len("sqlite:///") :])
    # MLflow creates and migrates a new SQLite store on first use; two processes doing that
    # at once (parallel build shards) collide, so the first use is serialised by a file lock.
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.parent / f".{db.name}.init-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            mlflow_client = MlflowClient(tracking_uri=uri)
            mlflow_client.search_experiments(max_results=1)  # forces store creation now
            fcntl.flock(lock, fcntl.LOCK_UN)
    except Exception as exc:  # OSError, SQLAlchemy and MLflow errors alike
        raise _unusable(uri, exc) from exc
    return mlflow_client


def check_writable_store(tracking_uri: str | None = None) -> None:
    """Fail before any work when a local SQLite tracking store cannot be written (a read-only
    ``mlflow.db`` or folder): opening and reading it works, the first write would fail with
    a traceback after minutes of work. Checked with ``os.access`` (which also sees ``chattr
    +i``), so nothing is written to find out."""
    uri = tracking_uri or config.tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    folder = db.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if db.exists() and not os.access(db, os.W_OK):
        problem = f"the database file {db} is read-only"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = f"its folder {folder} is not writable (SQLite writes a journal beside it)"
    else:
        return
    raise TrackingError(
        f"MLflow tracking store {redact_uri(uri)} cannot be written: {problem}; fix its "
        "permissions, point MLFLOW_TRACKING_URI at a writable store, or pass --no-track"
    )


def check_artifact_store(mlflow_client: Any, exp_id: str) -> None:
    """Fail before training when the experiment's local artifact folder is not writable
    (afterwards the run's plots and record would be lost with the run marked FAILED)."""
    location = str(mlflow_client.get_experiment(exp_id).artifact_location or "")
    parts = urlsplit(location)
    if parts.scheme not in ("", "file"):
        return  # remote artifact stores are checked by MLflow itself
    folder = Path(unquote(parts.path) if parts.scheme else location)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):
        raise TrackingError(
            f"MLflow artifact folder {folder} of experiment {exp_id} is not writable "
            f"({probe} is not a writable folder); fix its permissions or use another "
            "MLFLOW_TRACKING_URI (new experiments put artifacts beside the database)"
        )


def experiment_id(mlflow_client: Any, name: str) -> str:
    """The id of experiment ``name``, created (with our artifact root) when missing."""
    existing = mlflow_client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    uri = mlflow_client.tracking_uri
    try:
        return str(mlflow_client.create_experiment(name, artifact_location=artifact_root(uri)))
    except Exception:  # another process created it in between
        again = mlflow_client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)


@functools.cache
def code_version() -> str:
    """Package version plus the git short sha of the checkout, when there is one."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


def start_run(
    experiment: str,
    *,
    kind: str,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Create a running run of ``kind`` in ``experiment`` and return its id (the caller
    ends it with :func:`end_run`)."""
    mlflow_client = client(tracking_uri)
    run = mlflow_client.create_run(
        experiment_id(mlflow_client, experiment),
        run_name=run_name,
        tags={KIND_TAG: kind, "metallmix.code_version": code_version(), **(tags or {})},
    )
    return str(run.info.run_id)


def end_run(run_id: str, status: str = "FINISHED", tracking_uri: str | None = None) -> None:
    client(tracking_uri).set_terminated(run_id, status=status)


def run_link(experiment_id: str, run_id: str) -> str:
    """A link the MLflow UI resolves (hash route, relative to the UI's own address)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def resolved_store(tracking_uri: str | None = None, *, redact: bool = True) -> str:
    """The tracking URI with a relative SQLite path made absolute (it is relative to the
    folder the command ran in, not to the repository) and, unless ``redact=False``, without
    credentials (``user:password@``, ``?token=``): this is what gets printed."""
    uri = tracking_uri or config.tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return (redact_uri(uri) or uri) if redact else uri


def ui_hint(run_id: str, tracking_uri: str | None = None) -> tuple[str, str, str]:
    """(resolved store, the exact ``mlflow ui`` command for it, the run's URL once it runs);
    credentials are stripped from the store and the command (add your own back)."""
    real = resolved_store(tracking_uri, redact=False)
    store = resolved_store(tracking_uri)
    command = f"mlflow ui --backend-store-uri {store}"
    root = artifact_root(real)
    if root is not None:
        command += f" --default-artifact-root {Path(root.removeprefix('file://'))}"
    command += " --host 127.0.0.1 --port 5000"
    url = "http://127.0.0.1:5000"
    try:
        exp_id = client(real).get_run(run_id).info.experiment_id
        url += "/" + run_link(exp_id, run_id)
    except Exception:  # the hint must never fail the command that printed the answer
        pass
    return store, command, url


SOURCE_RUN = "mlflow.sourceRun"  # trace metadata key MLflow links a trace to its run by


@dataclasses.dataclass(frozen=True)
class TracedRun:
    """A running MLflow run and the root span of its trace (linked to the run)."""

    run_id: str
    root: Any  # mlflow LiveSpan, ended by :func:`close_traced_run`


def open_traced_run(
    experiment: str,
    *,
    kind: str,
    root_span: str,
    inputs: dict[str, Any],
    run_name: str | None = None,
    tracking_uri: str | None = None,
) -> TracedRun:
    """Start a run of ``kind`` and a root span ``root_span`` linked to it: the one opener of
    a recommendation's run and trace, whether a session or a served graph run opens it.

    The root is made without a context (a span cannot stay open across LangGraph's node
    calls, which may run on other threads); each node adds a child with the root as parent.
    """
    import mlflow  # slow to import: only for a tracked run

    uri = tracking_uri or config.tracking_uri()
    exp_id = experiment_id(client(uri), experiment)
    run_id = start_run(experiment, kind=kind, run_name=run_name, tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    root = mlflow.start_span_no_context(
        name=root_span, inputs=inputs, metadata={SOURCE_RUN: run_id}, experiment_id=exp_id
    )
    return TracedRun(run_id=run_id, root=root)


def close_traced_run(
    opened: TracedRun,
    status: str,
    *,
    outputs: Any = None,
    note: str | None = None,
    span_status: str | None = None,
    tracking_uri: str | None = None,
) -> str | None:
    """End the root span (``span_status``; default ``OK`` for a finished run, else
    ``ERROR``) and the run with ``status`` (``FINISHED``, ``FAILED``, ``KILLED``), tagging
    ``note`` as the tracking error. Never raises: returns why the run could not be ended."""
    import mlflow  # already imported by the opener

    span_status = span_status or ("OK" if status == "FINISHED" else "ERROR")
    with contextlib.suppress(Exception):  # a lost trace must not cost the answer
        opened.root.end(outputs=outputs, status=span_status)
    with contextlib.suppress(Exception):
        mlflow.flush_trace_async_logging()
    if note:
        with contextlib.suppress(Exception):  # the store that failed the record may fail too
            client(tracking_uri).set_tag(opened.run_id, "metallmix.tracking_error", note)
    try:
        end_run(opened.run_id, status, tracking_uri)
    except Exception as exc:
        return redact_text(f"{type(exc).__name__}: {exc}".splitlines()[0])[:500]
    return None
