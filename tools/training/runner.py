"""One recorded training run: train, log everything to MLflow, append the result to the KB.

The MLflow layout is a contract with the KB's MLflow importer (``metallmix.kind`` tag,
``dataset``/``model``/``mf.*``/``hp.*`` params, final metrics and the full
:class:`RunRecord` as ``metallmix/run_record.json``), so a run logged here can always be
re-imported into another knowledge base without loss.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metallmix.atomic import write_text
from metallmix.config import home_dir
from metallmix.tools import tracking
from metallmix.tools.datasets.base import Dataset
from metallmix.tools.kb.records import (
    Fidelity,
    Hyperparameters,
    Outcomes,
    Provenance,
    RunRecord,
    Scalar,
)
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.metafeatures import MetaFeatures, compute_meta_features
from metallmix.tools.training import pretrained as pretrained_weights
from metallmix.tools.training.checkpoint import Checkpoint
from metallmix.tools.training.settings import TrialSettings
from metallmix.tools.training.trainer import (
    ArraySplits,
    EpochStats,
    TrainConfig,
    TrainResult,
    train,
)

RECORD_ARTIFACT_DIR = "metallmix"
RECORD_ARTIFACT = tracking.RECORD_ARTIFACT


def load_splits(
    dataset: Dataset,
    *,
    image_size: int | None,
    source_resolution: int | None = None,
    max_val_images: int | None = None,
    seed: int = 0,
) -> ArraySplits:
    """Arrays for training, read at ``source_resolution`` when the task is a low-res variant.

    Reading straight at the training size spares a second resize; the trainer resizes again
    only when a low-resolution task is trained at another size.
    """
    size = source_resolution or image_size
    train_x, train_y = dataset.split("train").load_arrays(size=size, seed=seed)
    channels = int(train_x.shape[-1])
    val_x, val_y = dataset.split("val").load_arrays(
        size=size, channels=channels, limit=max_val_images, seed=seed
    )
    test_x, test_y = None, None
    if "test" in dataset.splits and len(dataset.split("test")):
        test_x, test_y = dataset.split("test").load_arrays(size=size, channels=channels)
    return ArraySplits(train_x, train_y, val_x, val_y, test_x, test_y, n_classes=dataset.n_classes)


def _params(
    record_base: dict[str, Scalar], hp: Hyperparameters, mf: MetaFeatures
) -> dict[str, str]:
    params = {k: str(v) for k, v in record_base.items() if v is not None}
    for name, value in hp.model_dump(exclude={"extra"}).items():
        if value is not None:
            params[f"hp.{name}"] = str(value)
    for name, value in hp.extra.items():
        if value is not None:
            params[f"hp.{name}"] = str(value)
    for name, value in mf.model_dump().items():
        if value is not None:
            params[f"mf.{name}"] = str(value)
    return params


def _plot_curve(result: TrainResult, path: Path) -> None:
    import matplotlib  # heavy: matplotlib loads only when a run's plots are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: after matplotlib.use("Agg"), which must come first

    epochs = [h.epoch for h in result.history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [h.train_loss for h in result.history], "o-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h.val_accuracy for h in result.history], "s-", color="C1", label="val acc")
    ax2.plot(
        epochs,
        [h.val_balanced_accuracy for h in result.history],
        "^-",
        color="C2",
        label="val balanced acc",
    )
    ax2.set_ylabel("validation accuracy")
    ax2.set_ylim(0, 1)
    # Above the axes: at "lower center" the legend covered the x-axis label.
    fig.legend(loc="upper center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_confusion(result: TrainResult, class_names: list[str], path: Path) -> None:
    import matplotlib  # heavy: matplotlib loads only when a run's plots are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: after matplotlib.use("Agg"), which must come first

    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    if result.confusion is None:
        ax.text(0.5, 0.5, f"no test evaluation\n({result.status})", ha="center", va="center")
        ax.axis("off")
    else:
        cm = result.confusion
        ax.imshow(cm, cmap="Blues")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7)
        labels = [n[:10] for n in class_names] or [str(i) for i in range(cm.shape[0])]
        ax.set_xticks(range(cm.shape[0]), labels, rotation=45, ha="right", fontsize=6)
        ax.set_yticks(range(cm.shape[0]), labels, fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One recorded run: what is trained and how MLflow and the KB will know it.

    ``dataset_group`` names the source a derived task comes from (default: the dataset's
    ``derived_from``, else its name); ``source_resolution`` reads a low-resolution task at
    that size and records it as such. ``live_metrics=False`` logs the per-epoch metrics in
    one batch at the end (same history, far fewer tracking-store writes: what a many-run
    build wants). ``checkpoint`` (a path) with ``stop_after`` pauses the run after that many
    epochs, saving there; without ``stop_after`` a paused run is continued from there
    (successive halving).
    """

    model: str
    hp: Hyperparameters
    seed: int = 0
    pretrained: bool = False
    weights: Path | None = None
    experiment: str = "metallmix-validation"
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    run_name: str | None = None
    dataset_group: str | None = None
    source_resolution: int | None = None
    live_metrics: bool = True
    checkpoint: str | None = None
    stop_after: int | None = None


def run_trial(
    dataset: Dataset,
    spec: RunSpec,
    *,
    kb: KnowledgeBase | None,
    settings: TrialSettings = TrialSettings(),
    meta_features: MetaFeatures | None = None,
    mlflow_client: Any | None = None,
) -> RunRecord:
    """Train ``spec`` on ``dataset`` under ``settings``, log it to MLflow, append it to ``kb``.

    ``settings.max_train_images`` turns the dataset into a seeded stratified subsample first,
    and the record then describes that subsample (its meta-features, name
    ``<name>-n<N>s<seed>``), because that is what was trained on. A non-finite loss is
    recorded as ``diverged``; any other failure marks the MLflow run FAILED and is re-raised,
    nothing reaches the KB, except a failure to log a *finished* training, whose result is
    kept (KB or JSON file).
    ``settings.feature_cache`` shares frozen-backbone features between linear-probe runs.
    A run paused by ``spec.checkpoint`` is recorded as a low-fidelity snapshot of ``spec.hp``
    (``epochs_run < epoch_budget``), which the meta-learner does not learn final scores from.
    ``meta_features`` (computed when None) describe the dataset; ``mlflow_client`` replaces
    the tracking client (a relay that records the calls on a remote worker).

    ``settings.track=False`` touches no tracking store at all (``--no-track``): the record has
    no MLflow run id and its id is ``own-<random hex>``. With tracking, a store that fails
    *during* training (the per-epoch metrics) does not stop it: training goes on, the
    failure is noted on the record as ``mlflow_logging_error`` (the CLI exits 3).
    """
    checkpoint = (
        Checkpoint(Path(spec.checkpoint), stop_after=spec.stop_after)
        if spec.checkpoint is not None
        else None
    )
    config = TrainConfig.from_hyperparameters(
        spec.model,
        spec.hp,
        seed=spec.seed,
        pretrained=spec.pretrained,
        weights=spec.weights,
        threads=settings.threads,
    )
    group = spec.dataset_group or str(dataset.source_info.get("derived_from") or dataset.name)
    full_train = len(dataset.split("train"))
    capped = settings.max_train_images is not None and settings.max_train_images < full_train
    if capped:
        dataset = dataset.subset(train_limit=settings.max_train_images, seed=spec.seed)
    mf = meta_features or compute_meta_features(dataset)
    if spec.source_resolution is not None:
        mf = mf.model_copy(
            update={
                "resolution_h": float(spec.source_resolution),
                "resolution_w": float(spec.source_resolution),
            }
        )
    hp_used = config.hyperparameters()
    info = dataset.source_info
    code_version = tracking.code_version()
    weights_tag = spec.weights.name if spec.weights is not None else None
    if spec.weights is None and spec.pretrained:
        weights_tag = (
            pretrained_weights.weights_tag(spec.model)
            if pretrained_weights.has_local_weights(spec.model)
            else "timm-default"
        )

    # A caller-supplied client (a relay that records calls on a Ray worker) replaces it.
    if not settings.track:
        mlflow: Any = _NoTracking()
    elif mlflow_client is not None:
        mlflow = mlflow_client
    else:
        mlflow = tracking.client(settings.tracking_uri)
    exp_id = tracking.experiment_id(mlflow, spec.experiment)
    if settings.track and mlflow_client is None:  # before training, not after
        tracking.check_writable_store(settings.tracking_uri)
        tracking.check_artifact_store(mlflow, exp_id)
    run_tags = {
        tracking.KIND_TAG: tracking.TRAINING_KIND,
        "metallmix.dataset_group": group,
        "metallmix.code_version": code_version,
        **(spec.tags or {}),
    }
    if spec.parent_run_id:
        run_tags["mlflow.parentRunId"] = spec.parent_run_id
    run = mlflow.create_run(
        exp_id, tags=run_tags, run_name=spec.run_name or f"{dataset.name}:{spec.model}:s{spec.seed}"
    )
    run_id = run.info.run_id
    record: RunRecord | None = None  # set once training has finished
    live_error: list[str] = []  # the first failure to log an epoch (training goes on)
    with tracking.quiet_store_errors():  # we report a store failure in one line
        try:
            from mlflow.entities import Metric, Param  # heavy: MLflow loads only when a run logs

            base: dict[str, Scalar] = {
                "dataset": dataset.name,
                "dataset_group": group,
                "model": spec.model,
                "pretrained": spec.pretrained,
                "weights_tag": weights_tag,
                "seed": spec.seed,
                "code_version": code_version,
                "threads": settings.threads,
                "max_train_images": settings.max_train_images,
                "source_resolution": spec.source_resolution,
                "dataset_source_repo": info.get("repo"),
                "dataset_source_commit": info.get("commit"),
            }
            params = _params(base, hp_used, mf)
            mlflow.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
            data = load_splits(
                dataset,
                image_size=config.image_size,
                source_resolution=spec.source_resolution,
                max_val_images=settings.max_val_images,
                seed=spec.seed,
            )

            def on_epoch(stats: EpochStats) -> None:
                now = int(time.time() * 1000)
                values = {
                    "train_loss": stats.train_loss,
                    "train_accuracy": stats.train_accuracy,
                    "val_loss": stats.val_loss,
                    "val_accuracy": stats.val_accuracy,
                    "val_balanced_accuracy": stats.val_balanced_accuracy,
                    "val_macro_f1": stats.val_macro_f1,
                    "lr": stats.lr,
                    "epoch_seconds": stats.seconds,
                }
                metrics = [Metric(k, float(v), now, stats.epoch) for k, v in values.items()]
                if spec.live_metrics and not live_error:
                    try:
                        mlflow.log_batch(run_id, metrics=metrics)
                    except Exception as exc:  # the store failed mid-training: train on regardless
                        live_error.append(tracking.short_reason(exc))
                elif not spec.live_metrics:
                    pending.extend(metrics)
                if settings.progress is not None:
                    settings.progress(stats)

            pending: list[Any] = []
            result = train(
                config,
                data,
                progress=on_epoch,
                feature_cache=settings.feature_cache,
                checkpoint=checkpoint,
            )
            for i in range(0, len(pending), 900):  # MLflow takes at most 1000 metrics per batch
                mlflow.log_batch(run_id, metrics=pending[i : i + 900])
            outcomes = Outcomes(
                val_accuracy=_finite(result.val_accuracy),
                test_accuracy=_finite(result.test_accuracy),
                macro_f1=_finite(result.macro_f1),
                balanced_accuracy=_finite(result.balanced_accuracy),
                train_seconds=result.train_seconds,
                seconds_per_epoch=_finite(result.seconds_per_epoch),
                epochs_run=result.epochs_run,
                epoch_budget=config.epochs if result.paused else None,
                learning_curve=result.learning_curve,
                val_balanced_accuracy=_finite(result.val_balanced_accuracy),
                test_balanced_accuracy=_finite(result.balanced_accuracy),
                val_macro_f1=_finite(result.val_macro_f1),
                macro_auc=_finite(result.macro_auc),
                val_macro_auc=_finite(result.val_macro_auc),
                balanced_learning_curve=result.balanced_learning_curve,
            )
            record = RunRecord(
                run_id=f"own-{run_id}",
                source="own",
                provenance=Provenance(
                    mlflow_run_id=run_id if settings.track else None,
                    tracking_uri=mlflow.tracking_uri,
                    file=info.get("path"),
                    dataset_source_repo=info.get("repo"),
                    dataset_source_commit=info.get("commit"),
                    code_version=code_version,
                    notes={
                        k: v
                        for k, v in {
                            "experiment": spec.experiment,
                            "parent_run_id": spec.parent_run_id,
                            "best_epoch": result.best_epoch,
                            "n_train": result.n_train,
                            "n_parameters": result.n_parameters,
                            "n_trainable": result.n_trainable,
                            "feature_seconds": result.feature_seconds,
                            "features_cached": result.features_cached
                            if result.feature_seconds is not None
                            else None,
                            "threads": settings.threads,
                            "message": result.message or None,
                            "resumed_epochs": result.resumed_epochs or None,
                            # a capped run is learnt as what it is (see Fidelity)
                            **Fidelity(
                                full=not capped,
                                train_images=result.n_train,
                                full_train_images=full_train,
                                max_train_images=settings.max_train_images,
                                epochs=config.epochs,
                                threads=settings.threads,
                            ).notes(),
                            "mlflow_logging_error": (
                                f"per-epoch metrics not logged: {live_error[0]}"
                                if live_error
                                else None
                            ),
                            **{
                                k: v
                                for k, v in (spec.tags or {}).items()
                                if k.startswith("metallmix.")
                            },
                        }.items()
                        if v is not None
                    },
                ),
                dataset=dataset.name,
                dataset_group=group,
                meta_features=mf,
                model=spec.model,
                pretrained=spec.pretrained or spec.weights is not None,
                weights_tag=weights_tag,
                hyperparameters=hp_used,
                outcomes=outcomes,
                status=result.status,
                seed=spec.seed,
            )
            now = int(time.time() * 1000) + 1
            step = max(1, result.epochs_run)
            finals = {
                "val_accuracy": outcomes.val_accuracy,
                "test_accuracy": outcomes.test_accuracy,
                "macro_f1": outcomes.macro_f1,
                "balanced_accuracy": outcomes.balanced_accuracy,
                "val_balanced_accuracy": outcomes.val_balanced_accuracy,
                "test_balanced_accuracy": outcomes.test_balanced_accuracy,
                "val_macro_f1": outcomes.val_macro_f1,
                "macro_auc": outcomes.macro_auc,
                "val_macro_auc": outcomes.val_macro_auc,
                "train_seconds": outcomes.train_seconds,
                "seconds_per_epoch": outcomes.seconds_per_epoch,
                "epochs_run": float(result.epochs_run),
                "epoch_budget": outcomes.epoch_budget,  # only a paused run has one
            }
            mlflow.log_batch(
                run_id,
                metrics=[
                    Metric(k, float(v), now, step) for k, v in finals.items() if v is not None
                ],
                tags=_tags(
                    {"metallmix.status": result.status, "metallmix.record_id": record.run_id}
                ),
            )
            if settings.track:  # without a store nothing would keep the plots: not drawn
                with tempfile.TemporaryDirectory(prefix="metallmix-run-") as tmp:
                    folder = Path(tmp)
                    (folder / RECORD_ARTIFACT_DIR).mkdir()
                    (folder / RECORD_ARTIFACT).write_text(record.model_dump_json(indent=2))
                    (folder / "config.json").write_text(
                        json.dumps(
                            {
                                "train_config": config.model_dump(mode="json"),
                                "dataset": dataset.name,
                                "dataset_group": group,
                                "class_names": dataset.class_names,
                                "source_info": info,
                                "source_resolution": spec.source_resolution,
                                "max_train_images": settings.max_train_images,
                                "n_train": result.n_train,
                            },
                            indent=2,
                            default=str,
                        )
                    )
                    _plot_curve(result, folder / "learning_curve.png")
                    _plot_confusion(result, dataset.class_names, folder / "confusion_matrix.png")
                    mlflow.log_artifacts(run_id, str(folder))
        except BaseException as exc:
            # Training finished and only logging it failed: keep the result (see _keep_unlogged).
            kept = record is not None and isinstance(exc, Exception)
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            message = tracking.short_reason(exc) if kept else f"{type(exc).__name__}: {exc}"[:5000]
            try:
                mlflow.set_tag(
                    run_id, "metallmix.logging_error" if kept else "metallmix.error", message
                )
                mlflow.set_terminated(run_id, status="FINISHED" if kept else status)
            except Exception:  # pragma: no cover - never hide the original error
                pass
            if record is None or not kept:
                raise
            return _keep_unlogged(record, kb, message)
        if live_error:  # best effort: the store failed once already
            with contextlib.suppress(Exception):
                mlflow.set_tag(run_id, "metallmix.logging_error", live_error[0])
        mlflow.set_terminated(run_id, status="FINISHED")
        if kb is not None:
            kb.add([record])
        return record


class _NoTracking:
    """The tracking client of ``track=False``: the calls ``run_trial`` makes, doing nothing,
    so the training path is the same code with and without a store."""

    tracking_uri = None

    def get_experiment_by_name(self, name: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(experiment_id="untracked")

    def create_run(self, experiment_id: str, **kwargs: Any) -> Any:
        import uuid
        from types import SimpleNamespace

        return SimpleNamespace(info=SimpleNamespace(run_id=uuid.uuid4().hex))

    def log_batch(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_tag(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_terminated(self, *args: Any, **kwargs: Any) -> None:
        return None


def _keep_unlogged(record: RunRecord, kb: KnowledgeBase | None, message: str) -> RunRecord:
    """The trained result when MLflow logging failed afterwards: into the KB, else a JSON file
    in ``$METALLMIX_HOME/unlogged-runs/``; a warning says where, the record notes the error."""
    log = logging.getLogger(__name__)
    message = tracking.redact_text(message)
    notes = {**record.provenance.notes, "mlflow_logging_error": message[:500]}
    record = record.model_copy(
        update={"provenance": record.provenance.model_copy(update={"notes": notes})}
    )
    if kb is not None:
        try:
            kb.add([record])
            log.warning(
                "training finished but logging it to MLflow failed (%s); the result is kept "
                "in the knowledge base %s as %s",
                message,
                kb.location,
                record.run_id,
            )
            return record
        except Exception as exc:  # fall through to the JSON file
            message = f"{message}; the KB also failed: {exc}"
    target = write_text(
        home_dir() / "unlogged-runs" / f"{record.run_id}.json",
        record.model_dump_json(indent=2),
    )
    log.warning(
        "training finished but logging it to MLflow failed (%s); the result is kept in %s "
        "(the run's KB record as JSON)",
        message,
        target,
    )
    return record


def _tags(values: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag  # heavy: MLflow loads only when a run logs

    return [RunTag(k, v) for k, v in values.items()]


__all__ = ["RunSpec", "load_splits", "run_trial"]
