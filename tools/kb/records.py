"""The one record type of the knowledge base: a single training run and its outcome.

Every source (our own runs, Quick-Tune, MLflow history, CSV, any registered importer,
see ``sources.py``) is converted to
:class:`RunRecord` so that the meta-learner and retrieval see one shape. Accuracies are
fractions in [0, 1] whatever the source reported; provenance says where each row came from.

Validators reject what JSON cannot store: a non-finite number (``inf``, ``NaN``) would be
written as ``null`` and make the record unreadable later, so it is refused at the door with
a message that says so. Tracking URIs lose any credentials before they are stored.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from metallmix.tools.kb.sources import check_source
from metallmix.tools.metafeatures import MetaFeatures

KB_SCHEMA_VERSION = 1

# Where a run came from: "own" or a registered importer's name (tools/kb/sources.py); the
# set is open, so it is checked when a record is built, not by the type.
Source = str
Status = Literal["ok", "failed", "diverged"]
Scalar = float | int | str | bool | None
ScoreMetric = Literal["balanced_accuracy", "accuracy", "accuracy_for_balanced"]

MAX_IMAGE_SIZE = 4096  # training input side, pixels: larger exhausts memory before any epoch
ACCURACY_FIELDS = ("val_accuracy", "test_accuracy", "macro_f1", "balanced_accuracy")
SCORE_MARKERS = ("accuracy", "f1", "auc", "learning_curve")  # Outcomes fields in [0, 1]


def check_finite(value: Any) -> Any:
    """Refuse ``inf``/``NaN`` (JSON would store null): say what it is and what to do."""
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            raise ValueError("is NaN (missing?); leave the value empty when it is unknown")
        raise ValueError(f"is {value}, not a finite number")
    return value


def check_fraction(value: Any) -> Any:
    """A finite fraction in [0, 1]; 85 gets the hint that percentages must be fractions."""
    check_finite(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and 1 < value <= 100:
        raise ValueError(
            f"{value:g} is above 1: accuracies are fractions in [0, 1] "
            f"(if it is a percentage, write {value / 100:g})"
        )
    return value


_SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "token", "secret", "key", "auth", "sig")


def redact_uri(uri: str | None) -> str | None:
    """The URI without ``user:password@`` nor secret query values (``?token=...``): tokens
    must not be copied into KB records nor printed."""
    if not uri or ("@" not in uri and "?" not in uri):
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    host = parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    query = parts.query
    if query:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(
            f"{k}{eq}{'***' if eq and any(s in k.lower() for s in _SECRET_QUERY_KEYS) else v}"
            for k, eq, v in pairs
        )
    if host == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, host, parts.path, query, parts.fragment))


class Hyperparameters(BaseModel):
    """A typed core of the hyperparameters every source can express, plus an open remainder.

    Core fields are optional because public meta-datasets do not record all of them;
    ``extra`` keeps everything else (mixup, layer decay, ...) without losing it.
    """

    model_config = ConfigDict(extra="forbid")

    lr: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    optimizer: str | None = None
    weight_decay: float | None = Field(default=None, ge=0)
    epochs: int | None = Field(default=None, ge=1)
    scheduler: str | None = None
    augmentation: str | None = None
    image_size: int | None = Field(default=None, ge=1, le=MAX_IMAGE_SIZE)
    label_smoothing: float | None = Field(default=None, ge=0, le=1)
    dropout: float | None = Field(default=None, ge=0, le=1)
    extra: dict[str, Scalar] = Field(default_factory=dict)

    # ClassVar: a constant of the class, not a field (else it is serialised into every record).
    CORE: ClassVar[tuple[str, ...]] = (
        "lr",
        "batch_size",
        "optimizer",
        "weight_decay",
        "epochs",
        "scheduler",
        "augmentation",
        "image_size",
        "label_smoothing",
        "dropout",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for item in value.values():
                check_finite(item)
        return check_finite(value)

    def flat(self) -> dict[str, Scalar]:
        """Core and extra merged into one flat mapping (extra keys prefixed ``x_``)."""
        out: dict[str, Scalar] = {k: getattr(self, k) for k in self.CORE}
        out.update({f"x_{k}": v for k, v in self.extra.items()})
        return out


class Outcomes(BaseModel):
    """What the run achieved and what it cost. Accuracies are fractions in [0, 1]."""

    model_config = ConfigDict(extra="forbid")

    val_accuracy: float | None = Field(default=None, ge=0, le=1)
    test_accuracy: float | None = Field(default=None, ge=0, le=1)
    macro_f1: float | None = Field(default=None, ge=0, le=1)
    balanced_accuracy: float | None = Field(default=None, ge=0, le=1)
    train_seconds: float | None = Field(default=None, ge=0)
    seconds_per_epoch: float | None = Field(default=None, ge=0)
    epochs_run: int | None = Field(default=None, ge=0)
    epoch_budget: int | None = Field(
        default=None,
        ge=1,
        description="epochs the run was meant to train (its fidelity is epochs_run / "
        "epoch_budget); None when the source has no notion of a budget",
    )
    learning_curve: list[float] = Field(
        default_factory=list, description="validation accuracy per epoch, fractions"
    )
    # Class-balanced metrics (issue 12). ``balanced_accuracy`` above is the test-split value
    # (kept for records written before these fields); own runs fill both.
    val_balanced_accuracy: float | None = Field(default=None, ge=0, le=1)
    test_balanced_accuracy: float | None = Field(default=None, ge=0, le=1)
    val_macro_f1: float | None = Field(default=None, ge=0, le=1)
    macro_auc: float | None = Field(
        default=None, ge=0, le=1, description="test macro one-vs-rest ROC AUC"
    )
    val_macro_auc: float | None = Field(default=None, ge=0, le=1)
    balanced_learning_curve: list[float] = Field(
        default_factory=list, description="validation balanced accuracy per epoch, fractions"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _finite(cls, value: Any, info: ValidationInfo) -> Any:
        """Every number finite; scores (accuracy, F1, AUC, curves) fractions in [0, 1]."""
        name = info.field_name or ""
        score = name in ACCURACY_FIELDS or any(k in name for k in SCORE_MARKERS)
        if isinstance(value, list | tuple):
            for epoch, item in enumerate(value, 1):
                try:
                    check_fraction(item) if score else check_finite(item)
                except ValueError as exc:
                    raise ValueError(f"epoch {epoch}: {exc}") from None
                if score and isinstance(item, int | float) and not 0 <= item <= 1:
                    raise ValueError(f"epoch {epoch}: {item} is outside [0, 1]")
            return value
        return check_fraction(value) if score else check_finite(value)

    @property
    def completed(self) -> bool:
        """False only for a run stopped before its epoch budget (a low-fidelity snapshot)."""
        if self.epoch_budget is None or self.epochs_run is None:
            return True
        return self.epochs_run >= self.epoch_budget


class Provenance(BaseModel):
    """Where a record came from, precisely enough to find the original again."""

    model_config = ConfigDict(extra="forbid")

    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    public_source: str | None = None
    file: str | None = None
    row: int | str | None = None
    dataset_source_repo: str | None = None
    dataset_source_commit: str | None = None
    code_version: str | None = None
    notes: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("tracking_uri", mode="after")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        return redact_uri(value)


FIDELITY_NOTE = "fidelity"  # provenance.notes key: "full" or "capped"


class Fidelity(BaseModel):
    """How faithfully a run represents its configuration on its dataset.

    A validation run may train on a stratified subsample (``max_train_images``) with a few
    threads: it is then a *capped* run, a measurement of a smaller dataset than the one the
    user has. Stored in ``provenance.notes`` (``fidelity``, ``fidelity_*`` keys) so that
    records written before it, and the KB's content hash, are unchanged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    full: bool = True
    train_images: int | None = Field(default=None, description="images the run trained on")
    full_train_images: int | None = Field(
        default=None, description="training images of the dataset before the cap"
    )
    max_train_images: int | None = None
    epochs: int | None = None
    threads: int | None = None

    def notes(self) -> dict[str, Scalar]:
        """The ``provenance.notes`` entries that store it."""
        out: dict[str, Scalar] = {FIDELITY_NOTE: "full" if self.full else "capped"}
        for key in ("train_images", "full_train_images", "max_train_images", "epochs", "threads"):
            value = getattr(self, key)
            if value is not None:
                out[f"fidelity_{key}"] = value
        return out

    def describe(self) -> str:
        """'capped: 150 of 546 training images, 5 epochs, 2 threads' / 'full'."""
        if self.full:
            return "full"
        parts = []
        if self.train_images is not None and self.full_train_images is not None:
            parts.append(f"{self.train_images} of {self.full_train_images} training images")
        if self.epochs is not None:
            parts.append(f"{self.epochs} epochs")
        if self.threads is not None:
            parts.append(f"{self.threads} threads")
        return "capped" + (": " + ", ".join(parts) if parts else "")


class RunRecord(BaseModel):
    """One training run: dataset description, configuration, outcome, provenance."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1)
    source: Source
    provenance: Provenance = Field(default_factory=Provenance)
    dataset: str = Field(min_length=1, description="task name, e.g. 'breastmnist/sub200'")
    dataset_group: str = Field(
        default="",
        description="origin dataset; derived tasks share it, so leave-one-dataset-out holds "
        "out the whole group. Defaults to ``dataset``.",
    )
    meta_features: MetaFeatures
    model: str = Field(min_length=1, description="timm model name")
    pretrained: bool = False
    weights_tag: str | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    outcomes: Outcomes = Field(default_factory=Outcomes)
    status: Status = "ok"
    seed: int | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("source", mode="after")
    @classmethod
    def _registered_source(cls, value: str) -> str:
        return check_source(value)

    @field_validator("dataset_group", mode="after")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    def model_post_init(self, __context: Any) -> None:
        if not self.dataset_group:
            object.__setattr__(self, "dataset_group", self.dataset)

    @property
    def score(self) -> float | None:
        """What the meta-learner learns from: validation balanced accuracy where the run
        recorded it (imbalance is the rule in medical data), else validation accuracy."""
        balanced = getattr(self.outcomes, "val_balanced_accuracy", None)
        return balanced if balanced is not None else self.outcomes.val_accuracy

    @property
    def fidelity(self) -> Fidelity:
        """The run's fidelity (:class:`Fidelity`), from its provenance notes; ``full`` for
        runs that recorded none (imports, KB builds, runs from before fidelity existed)."""
        notes = self.provenance.notes
        if notes.get(FIDELITY_NOTE) is None:
            return Fidelity()

        def _int(key: str) -> int | None:
            value = notes.get(f"fidelity_{key}")
            return int(value) if isinstance(value, int | float) else None

        return Fidelity(
            full=notes.get(FIDELITY_NOTE) != "capped",
            train_images=_int("train_images"),
            full_train_images=_int("full_train_images"),
            max_train_images=_int("max_train_images"),
            epochs=_int("epochs"),
            threads=_int("threads"),
        )

    @property
    def score_metric(self) -> ScoreMetric:
        """Which metric :attr:`score` is: ``balanced_accuracy``, ``accuracy``, or
        ``accuracy_for_balanced`` (Quick-Tune records top-1 accuracy only; on its Meta-Album
        datasets, whose classes are balanced, accuracy stands in for balanced accuracy)."""
        if getattr(self.outcomes, "val_balanced_accuracy", None) is not None:
            return "balanced_accuracy"
        return "accuracy_for_balanced" if self.source == "quicktune" else "accuracy"
