"""Importer for training runs recorded in an MLflow tracking store.

MetaLLMiX logs each validation training run with the tag ``metallmix.kind=training-run``
and the full record as the artifact ``metallmix/run_record.json``; those come back exactly
as logged. Runs logged by other tools are reconstructed when they carry enough to be
useful (params ``dataset``, ``model``, ``mf.*``, ``hp.*`` and the metric
``val_accuracy``); the rest are skipped and counted, so a user can see what was left out.
Everything is read and validated before a record is returned: the caller adds the whole
batch in one transaction.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from pydantic import BaseModel, ValidationError

from metallmix import config
from metallmix.errors import ImportFormatError, KnowledgeBaseError
from metallmix.tools import tracking
from metallmix.tools.kb.records import Hyperparameters, RunRecord, Scalar, redact_uri
from metallmix.tools.kb.tabular import field_kind
from metallmix.tools.metafeatures import MetaFeatures, range_problems

KIND_TAG = tracking.KIND_TAG
TRAINING_RUN = tracking.TRAINING_KIND
RECORD_ARTIFACT = tracking.RECORD_ARTIFACT
# Outcome metrics read from a foreign run when present (fractions, seconds, counts).
OUTCOME_METRICS = (
    "val_accuracy",
    "test_accuracy",
    "macro_f1",
    "balanced_accuracy",
    "val_balanced_accuracy",
    "test_balanced_accuracy",
    "val_macro_f1",
    "macro_auc",
    "val_macro_auc",
    "train_seconds",
    "seconds_per_epoch",
    "epochs_run",
    "epoch_budget",
)


@dataclass
class MlflowImport:
    """What a scan found: records to add and the runs left out, with the reason."""

    records: list[RunRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)


def _check_mlflow_sqlite(path: Path, uri: str) -> None:
    """MLflow adds its tables to any SQLite file it is pointed at; check before it does."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise KnowledgeBaseError(f"{uri} is not an MLflow store: {exc}") from exc
    if "experiments" not in tables or "runs" not in tables:
        raise KnowledgeBaseError(
            f"{uri} is not an MLflow tracking store (no experiments/runs tables); pass the "
            "--tracking-uri of the store your runs were logged to"
        )


def _store_key(uri: str) -> str:
    """Compare stores, not spellings: relative and absolute sqlite paths name one file."""
    if uri.startswith("sqlite:///"):
        return "sqlite:" + str(Path(uri[len("sqlite:///") :]).expanduser().resolve())
    return uri.rstrip("/")


def _check_uri(tracking_uri: str) -> str:
    """Refuse URIs that would silently create an empty store instead of reading one."""
    uri = tracking_uri.strip()
    if not uri:
        raise KnowledgeBaseError("empty MLflow tracking URI; pass --tracking-uri")
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else parsed.path
        if not Path(path).is_file():
            raise KnowledgeBaseError(
                f"MLflow store {uri} does not exist ({path} is not a file); pass the "
                "--tracking-uri of an existing store"
            )
        _check_mlflow_sqlite(Path(path), uri)
    elif parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        if not Path(path).is_dir():
            raise KnowledgeBaseError(f"MLflow store {redact_uri(uri)} is not an existing folder")
        # MLflow 3.17 refuses to read a file store ("filesystem tracking backend is in
        # maintenance mode"): say so and how to migrate, instead of its traceback.
        folder = Path(path).expanduser().resolve()
        raise KnowledgeBaseError(
            f"{uri} is an MLflow file store (a folder of runs), which MLflow 3.17 no longer "
            "reads; migrate it to SQLite first: `mlflow migrate-filestore --source "
            f"{folder} --target sqlite:///{folder.parent / 'mlflow.db'}`, then run `metallmix "
            f"kb import-mlflow --tracking-uri sqlite:///{folder.parent / 'mlflow.db'}`"
        )
    return uri


def _paged(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    token: str | None = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def _native(text: str) -> Scalar:
    """An MLflow param (always text) back to a native value for ``extra``."""
    if text == "None":
        return None
    if text in {"True", "False", "true", "false"}:
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _typed(model: type[BaseModel], name: str, text: str) -> Any:
    """A param for a typed field: leave conversion to pydantic except None/bool spellings."""
    if text == "None":
        return None
    if field_kind(model.model_fields[name].annotation) == "bool":
        return text.lower() in {"true", "1"}
    return text


def _reconstruct(run: Any, client: Any, tracking_uri: str) -> RunRecord | str:
    """A record from params/metrics, or the reason it cannot be built."""
    params: dict[str, str] = dict(run.data.params)
    metrics: dict[str, float] = dict(run.data.metrics)
    missing = [p for p in ("dataset", "model") if p not in params]
    if "val_accuracy" not in metrics:
        missing.append("metric val_accuracy")
    if not any(k.startswith("mf.") for k in params):
        missing.append("mf.* params")
    if missing:
        return f"no {RECORD_ARTIFACT} and missing {', '.join(missing)}"
    run_id = run.info.run_id
    mf: dict[str, Any] = {}
    core: dict[str, Any] = {}
    extra: dict[str, Scalar] = {}
    for key, text in params.items():
        if key.startswith("mf."):
            name = key[3:]
            if name not in MetaFeatures.model_fields:
                raise ImportFormatError(
                    f"MLflow run {run_id}: param {key} is not a meta-feature; known: "
                    f"{', '.join(MetaFeatures.model_fields)}"
                )
            mf[name] = _typed(MetaFeatures, name, text)
        elif key.startswith("hp."):
            name = key[3:]
            if name in Hyperparameters.CORE:
                core[name] = _typed(Hyperparameters, name, text)
            else:
                extra[name] = _native(text)
    outcomes: dict[str, Any] = {k: metrics[k] for k in OUTCOME_METRICS if k in metrics}
    history = client.get_metric_history(run_id, "val_accuracy")
    if len(history) > 1:
        ordered = sorted(history, key=lambda m: (m.step, m.timestamp))
        outcomes["learning_curve"] = [m.value for m in ordered]
    balanced = client.get_metric_history(run_id, "val_balanced_accuracy")
    if len(balanced) > 1:
        ordered = sorted(balanced, key=lambda m: (m.step, m.timestamp))
        outcomes["balanced_learning_curve"] = [m.value for m in ordered]
    for key in ("epochs_run", "epoch_budget"):  # logged as floats, counted in epochs
        if key in outcomes:
            outcomes[key] = int(outcomes[key])
    data: dict[str, Any] = {
        "run_id": f"mlflow:{run_id}",
        "source": "mlflow",
        "provenance": {
            "mlflow_run_id": run_id,
            "tracking_uri": tracking_uri,
            "notes": {"experiment_id": run.info.experiment_id, "reconstructed": True},
        },
        "dataset": params["dataset"],
        "model": params["model"],
        "meta_features": mf,
        "hyperparameters": {**core, "extra": extra},
        "outcomes": outcomes,
        "status": "ok" if run.info.status == "FINISHED" else "failed",
    }
    for key in ("dataset_group", "weights_tag"):
        if key in params:
            data[key] = params[key]
    for key in ("dataset_source_repo", "dataset_source_commit", "code_version"):
        if key in params:
            data["provenance"][key] = params[key]
    if "pretrained" in params:
        data["pretrained"] = params["pretrained"].lower() in {"true", "1"}
    if "seed" in params and params["seed"] != "None":
        data["seed"] = params["seed"]
    try:
        return RunRecord.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise ImportFormatError(
            f"MLflow run {run_id}: params/metrics do not form a valid run ({problems}); "
            "fix the logged values (accuracies are fractions in [0, 1])"
        ) from exc


def _from_artifact(
    run: Any, client: Any, tracking_uri: str, foreign: bool, scratch: Path
) -> RunRecord:
    run_id = run.info.run_id
    try:
        local = client.download_artifacts(run_id, RECORD_ARTIFACT, str(scratch / run_id))
        text = Path(local).read_text(encoding="utf-8")
        record = RunRecord.model_validate_json(text)
    except ValidationError as exc:
        raise ImportFormatError(
            f"MLflow run {run_id}: artifact {RECORD_ARTIFACT} is not a valid RunRecord "
            f"({exc.error_count()} problem(s), first: {exc.errors()[0]['msg']} at "
            f"{'.'.join(str(p) for p in exc.errors()[0]['loc'])})"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFormatError(
            f"MLflow run {run_id}: cannot read artifact {RECORD_ARTIFACT}: {exc}"
        ) from exc
    provenance = record.provenance.model_copy(
        update={"mlflow_run_id": run_id, "tracking_uri": redact_uri(tracking_uri)}
    )
    update: dict[str, Any] = {"provenance": provenance}
    if foreign:
        update["source"] = "mlflow"
    return record.model_copy(update=update)


def _has_record_artifact(client: Any, run_id: str) -> bool:
    folder, _, _name = RECORD_ARTIFACT.rpartition("/")
    try:
        return any(f.path == RECORD_ARTIFACT for f in client.list_artifacts(run_id, folder))
    except Exception:  # an unreachable artifact store reads as "no artifact"
        return False


def scan_mlflow(
    tracking_uri: str,
    experiment_names: list[str] | None = None,
    *,
    own_tracking_uri: str | None = None,
    on_run: Callable[[int], None] | None = None,
) -> MlflowImport:
    """Read every run of the chosen experiments (all when None) of ``tracking_uri``.

    A store other than ``own_tracking_uri`` (default: this installation's
    ``MLFLOW_TRACKING_URI``) is foreign: its records get source ``mlflow``.
    """
    from mlflow.entities import ViewType  # slow to import: only when importing runs
    from mlflow.exceptions import MlflowException

    uri = _check_uri(tracking_uri)
    own = own_tracking_uri if own_tracking_uri is not None else config.tracking_uri()
    foreign = _store_key(uri) != _store_key(own)
    client = tracking.client(uri)  # the shared client: its store-creation lock included
    result = MlflowImport()
    try:
        experiments = list(
            _paged(
                lambda token: client.search_experiments(
                    view_type=ViewType.ACTIVE_ONLY, page_token=token
                )
            )
        )
        if experiment_names:
            by_name = {e.name: e for e in experiments}
            unknown = [n for n in experiment_names if n not in by_name]
            if unknown:
                raise ImportFormatError(
                    f"experiment(s) {', '.join(unknown)} not found in {uri}; available: "
                    f"{', '.join(sorted(by_name)) or '(none)'}"
                )
            experiments = [by_name[n] for n in experiment_names]
        result.experiments = [e.name for e in experiments]
        ids = [e.experiment_id for e in experiments]
        runs = (
            list(
                _paged(
                    lambda token: client.search_runs(
                        ids, run_view_type=ViewType.ACTIVE_ONLY, page_token=token
                    )
                )
            )
            if ids
            else []
        )
        with tempfile.TemporaryDirectory(prefix="metallmix-mlflow-") as scratch:
            for run in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
                run_id = run.info.run_id
                tagged = run.data.tags.get(KIND_TAG) == TRAINING_RUN
                outcome: RunRecord | str
                if tagged and _has_record_artifact(client, run_id):
                    outcome = _from_artifact(run, client, uri, foreign, Path(scratch))
                else:
                    outcome = _reconstruct(run, client, uri)
                implausible = (
                    range_problems(outcome.meta_features) if isinstance(outcome, RunRecord) else []
                )
                if implausible:  # the bounds a dataset card enforces
                    outcome = "meta-features out of range: " + "; ".join(implausible[:3])
                if isinstance(outcome, RunRecord):
                    result.records.append(outcome)
                else:
                    result.skipped.append((run_id, outcome))
                if on_run is not None:
                    on_run(1)
    except MlflowException as exc:
        raise KnowledgeBaseError(f"cannot read MLflow store {uri}: {exc.message}") from exc
    seen: dict[str, str] = {}
    for record in result.records:
        origin = record.provenance.mlflow_run_id or "?"
        if record.run_id in seen:
            raise ImportFormatError(
                f"MLflow runs {seen[record.run_id]} and {origin} both log run_id "
                f"{record.run_id}; delete or rename one of them in {uri}"
            )
        seen[record.run_id] = origin
    return result


def import_mlflow(tracking_uri: str, experiment_names: list[str] | None = None) -> list[RunRecord]:
    """The records of a tracking store (pure: writes nothing). See :func:`scan_mlflow`."""
    return scan_mlflow(tracking_uri, experiment_names).records
