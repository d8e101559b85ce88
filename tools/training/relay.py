"""MLflow relay: a worker that cannot reach the tracking store records, the driver replays.

Workers on other machines cannot see a local (SQLite / file) MLflow store. Such a worker
trains with a :class:`MlflowRecorder` in place of the client; the driver, the only writer,
replays the recorded calls into the real store and swaps the placeholder run id for the
real one everywhere (tags, params, the record artifact), so a relayed run is
indistinguishable from one logged directly.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from metallmix.tools import tracking
from metallmix.tools.kb.records import RunRecord


class MlflowRecorder:
    """Stands in for ``MlflowClient`` on a worker that cannot reach the tracking store.

    Implements exactly the calls :func:`run_trial` makes; artifacts are read into memory at
    call time because the worker's temporary folder is gone by the time the driver replays.
    The run id is a placeholder, swapped for the real one everywhere during replay.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.placeholder = f"relay{uuid.uuid4().hex}"
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def get_experiment_by_name(self, name: str) -> Any:
        return SimpleNamespace(experiment_id=f"relay-experiment:{name}", name=name)

    def create_run(
        self, experiment_id: str, tags: dict[str, str] | None = None, run_name: str | None = None
    ) -> Any:
        now = int(time.time() * 1000)
        self.calls.append(
            (
                "create_run",
                (experiment_id,),
                {"start_time": now, "tags": dict(tags or {}), "run_name": run_name},
            )
        )
        return SimpleNamespace(info=SimpleNamespace(run_id=self.placeholder))

    def log_batch(self, run_id: str, **kwargs: Any) -> None:
        self.calls.append(("log_batch", (), kwargs))

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self.calls.append(("set_tag", (key, value), {}))

    def log_artifacts(self, run_id: str, local_dir: str) -> None:
        root = Path(local_dir)
        files = {
            str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }
        self.calls.append(("log_artifacts", (files,), {}))

    def set_terminated(self, run_id: str, status: str | None = None) -> None:
        self.calls.append(("set_terminated", (), {"status": status, "end_time": _now_ms()}))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _swap(value: Any, old: str, new: str) -> Any:
    """``value`` with the placeholder run id replaced, through MLflow entities and containers."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_swap(v, old, new) for v in value)
    from mlflow.entities import Param, RunTag  # heavy: only when relaying MLflow entities

    if isinstance(value, RunTag):
        return RunTag(value.key, _swap(value.value, old, new))
    if isinstance(value, Param):
        return Param(value.key, _swap(value.value, old, new))
    return value


def replay(
    calls: Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]], client: Any, placeholder: str
) -> str:
    """Re-issue a recorded run against ``client``; returns the real MLflow run id.

    ``placeholder`` (the recorder's run id) is replaced by the real id in every tag, param
    and JSON artifact, so the record inside the run names the run it lives in.
    """
    if not calls or calls[0][0] != "create_run":
        raise ValueError("a recorded MLflow run must start with create_run")
    _, (experiment,), kwargs = calls[0]
    name = str(experiment).removeprefix("relay-experiment:")
    run = client.create_run(tracking.experiment_id(client, name), **kwargs)
    real = str(run.info.run_id)
    for method, args, kw in calls[1:]:
        args, kw = _swap(args, placeholder, real), _swap(kw, placeholder, real)
        if method == "log_artifacts":
            (files,) = args
            with tempfile.TemporaryDirectory(prefix="metallmix-relay-") as tmp:
                for rel, payload in files.items():
                    target = Path(tmp) / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if rel.endswith(".json"):
                        payload = payload.replace(placeholder.encode(), real.encode())
                    target.write_bytes(payload)
                client.log_artifacts(real, tmp)
        else:
            getattr(client, method)(real, *args, **kw)
    return real


def rebind(record: RunRecord, old: str, new: str, tracking_uri: str) -> RunRecord:
    """The record as if it had been logged directly to run ``new`` of ``tracking_uri``."""
    provenance = record.provenance.model_copy(
        update={"mlflow_run_id": new, "tracking_uri": tracking_uri}
    )
    return record.model_copy(
        update={"run_id": record.run_id.replace(old, new), "provenance": provenance}
    )


def is_server(tracking_uri: str) -> bool:
    """Workers log to the tracking store themselves only when it is an MLflow server."""
    return tracking_uri.startswith(("http://", "https://"))


__all__ = ["MlflowRecorder", "is_server", "rebind", "replay"]
