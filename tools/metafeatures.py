"""Dataset meta-features: the description of a dataset that the meta-learner generalises over.

The paper's seven (size, classes, imbalance, entropy, resolution, class-size statistics,
modality) plus cheap extras. They are always computed on the *training* split so that a
recommendation never peeks at validation or test data. The model is versioned: records in
the knowledge base carry the version they were computed with. Class-distribution fields are
optional because public meta-datasets often publish only size, classes and resolution;
unknown stays ``None`` (NaN for the meta-learner) rather than an invented value.

Meta-features come from a loaded dataset or from a dataset card, so this module sits above
both (:mod:`metallmix.tools.datasets`, :mod:`metallmix.tools.datasets.card`); a card itself
knows nothing of meta-features, and the card of a dataset is made here
(:func:`card_from_dataset`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from metallmix.errors import DatasetError
from metallmix.progress import WaitReporter
from metallmix.tools.datasets import Dataset, load_dataset, stratified_sample
from metallmix.tools.datasets.base import convert_channels
from metallmix.tools.datasets.card import DatasetCard, read_card

META_FEATURES_VERSION = 1


class MetaFeatures(BaseModel):
    """Meta-features of one dataset (training split)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = META_FEATURES_VERSION
    n_images: int = Field(ge=0, description="number of training images")
    n_classes: int = Field(ge=1, description="number of classes present in training")
    imbalance_ratio: float | None = Field(
        default=None, ge=1.0, description="largest / smallest class size"
    )
    class_entropy: float | None = Field(
        default=None, ge=0.0, description="Shannon entropy of class sizes, bits"
    )
    normalized_entropy: float | None = Field(
        default=None, ge=0.0, le=1.0, description="class entropy / log2(n_classes); 1 = balanced"
    )
    resolution_h: float = Field(gt=0, description="median image height, pixels")
    resolution_w: float = Field(gt=0, description="median image width, pixels")
    channels: int = Field(ge=1, description="image channels (1 grey, 3 RGB)")
    class_size_mean: float = Field(ge=0)
    class_size_std: float | None = Field(default=None, ge=0)
    class_size_min: int | None = Field(default=None, ge=0)
    class_size_max: int | None = Field(default=None, ge=0)
    modality: str = Field(default="unknown", description="imaging modality, user-given")
    images_per_class: float = Field(ge=0, description="n_images / n_classes")
    min_class_fraction: float | None = Field(
        default=None, ge=0, le=1, description="smallest class share"
    )
    pixel_mean: float | None = Field(default=None, description="mean intensity in [0, 1]")
    pixel_std: float | None = Field(default=None, description="intensity std in [0, 1]")
    landmarks: dict[str, float] | None = Field(
        default=None,
        description="scores measured on the images (tools/meta/landmarks.py): per pretrained "
        "backbone and 'pixels', balanced accuracies in [0, 1]; None when not measured "
        "(cards and public meta-datasets have no images)",
    )

    @field_validator("landmarks", mode="after")
    @classmethod
    def _scores(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name, score in (value or {}).items():
            if not (np.isfinite(score) and 0.0 <= score <= 1.0):
                raise ValueError(f"landmark {name} is {score}, not a score in [0, 1]")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _finite(cls, value: object) -> object:
        """inf/NaN would be stored as JSON null and make the record unreadable later."""
        if isinstance(value, float) and not np.isfinite(value):
            what = "NaN (missing?)" if np.isnan(value) else str(value)
            raise ValueError(f"is {what}, not a finite number")
        return value

    @property
    def resolution(self) -> float:
        """Geometric mean of median height and width, a single size figure for reports."""
        return float((self.resolution_h * self.resolution_w) ** 0.5)

    def numeric(self) -> dict[str, float]:
        """Numeric view for the meta-learner and retrieval (modality excluded, None -> NaN).

        Landmarks are not in it: they describe candidates as much as the dataset (the score
        of *its* backbone), so the encoding reads them per candidate (``lm_`` columns)."""
        out: dict[str, float] = {}
        for name, value in self.model_dump().items():
            if name in {"version", "modality", "landmarks"}:
                continue
            out[name] = float("nan") if value is None else float(value)
        return out


# --- computation -------------------------------------------------------------------------

TINY_SIDE = 8  # images below this many pixels on a side are warned about (1x1 trains silently)
PIXEL_SAMPLE = 256  # images decoded for pixel statistics; enough for 3 decimals, cheap on disk


def meta_features_from_counts(
    counts: Sequence[int],
    *,
    resolution_h: float,
    resolution_w: float,
    channels: int,
    modality: str = "unknown",
    pixel_mean: float | None = None,
    pixel_std: float | None = None,
) -> MetaFeatures:
    """Meta-features from per-class training counts and image geometry.

    The single formula used for real datasets and for cards alike, so a card of a dataset and
    the dataset itself give the same numbers. Classes with no training image are left out:
    they cannot be learned and would make the imbalance ratio infinite. Class-size std is the
    population std (ddof=0) of the sizes of the present classes.
    """
    sizes = np.asarray([int(c) for c in counts if int(c) > 0], dtype=np.int64)
    if len(sizes) == 0:
        raise DatasetError("no training images: meta-features need at least one class")
    n = int(sizes.sum())
    k = len(sizes)
    p = sizes / n
    entropy = float(-(p * np.log2(p)).sum())
    return MetaFeatures(
        n_images=n,
        n_classes=k,
        imbalance_ratio=float(sizes.max() / sizes.min()),
        class_entropy=max(entropy, 0.0),
        normalized_entropy=min(entropy / np.log2(k), 1.0) if k > 1 else 1.0,
        resolution_h=float(resolution_h),
        resolution_w=float(resolution_w),
        channels=int(channels),
        class_size_mean=float(sizes.mean()),
        class_size_std=float(sizes.std()),
        class_size_min=int(sizes.min()),
        class_size_max=int(sizes.max()),
        modality=modality or "unknown",
        images_per_class=n / k,
        min_class_fraction=float(sizes.min() / n),
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )


def range_problems(mf: MetaFeatures) -> list[str]:
    """Values no real training split has, by meta-feature name: the bounds a dataset card
    enforces (:class:`~metallmix.tools.datasets.card.DatasetCard`), applied to imported
    meta-features (a KB row from a CSV or another tracker) before they can mislead the
    meta-learner. Empty when every value is plausible."""
    from metallmix.tools.datasets.card import MAX_IMAGE_SIDE

    out: list[str] = []
    if mf.n_images < 2:
        out.append(f"mf_n_images: {mf.n_images} training images (a split needs at least 2)")
    if mf.n_classes < 2:
        out.append(f"mf_n_classes: {mf.n_classes} (classification needs at least 2 classes)")
    for name in ("resolution_h", "resolution_w"):
        value = getattr(mf, name)
        if value > MAX_IMAGE_SIDE:
            out.append(f"mf_{name}: {value:g} px (at most {MAX_IMAGE_SIDE})")
    if mf.channels not in (1, 3):
        out.append(f"mf_channels: {mf.channels} (1 for greyscale or 3 for colour)")
    for name in ("pixel_mean", "pixel_std"):
        value = getattr(mf, name)
        if value is not None and not 0.0 <= value <= 1.0:
            out.append(f"mf_{name}: {value:g} (intensities are scaled to [0, 1])")
    if mf.n_images >= 1 and mf.images_per_class > mf.n_images:
        out.append(
            f"mf_images_per_class: {mf.images_per_class:g} exceeds mf_n_images {mf.n_images}"
        )
    return out


def _from_card(card: DatasetCard, modality: str | None) -> MetaFeatures:
    return meta_features_from_counts(
        card.counts(),
        resolution_h=card.image_height,
        resolution_w=card.image_width,
        channels=card.channels,
        modality=modality or card.modality,
        pixel_mean=card.pixel_mean,
        pixel_std=card.pixel_std,
    )


def _from_dataset(
    dataset: Dataset,
    modality: str | None,
    seed: int,
    pixel_sample: int,
    on_progress: Callable[[int], None] | None,
) -> MetaFeatures:
    """One header pass over the training split plus a seeded decoded sample for pixel stats.

    Without ``on_progress`` (the API, the graph, a training run), a large dataset still says
    what it is doing: lines after 2 s with the images read and the time left."""
    train = dataset.split("train")
    report: WaitReporter | None = None
    if on_progress is None:
        report = WaitReporter(
            f"computing meta-features of {dataset.name}",
            len(train) + (min(pixel_sample, len(train)) if pixel_sample > 0 else 0),
            unit="images",
            announce=False,
        )
    advance = on_progress if on_progress is not None else report.advance  # type: ignore[union-attr]
    heights: list[int] = []
    widths: list[int] = []
    channel_votes = {1: 0, 3: 0}
    for header in train.iter_headers():
        heights.append(header.height)
        widths.append(header.width)
        channel_votes[1 if header.channels == 1 else 3] += 1
        advance(1)
    if not heights:
        raise DatasetError(f"{dataset.name}: no readable training image")
    tiny = sum(1 for h, w in zip(heights, widths, strict=True) if min(h, w) < TINY_SIDE)
    if tiny:
        smallest = min(zip(heights, widths, strict=True), key=lambda hw: hw[0] * hw[1])
        logging.getLogger(__name__).warning(
            "%s: %d of %d training images are smaller than %d px on a side (smallest %dx%d); "
            "training upsamples them to the model input and learns little from them: "
            "check the data",
            dataset.name,
            tiny,
            len(heights),
            TINY_SIDE,
            smallest[0],
            smallest[1],
        )
    channels = 3 if channel_votes[3] >= channel_votes[1] else 1

    total = 0.0
    total_sq = 0.0
    count = 0
    if pixel_sample > 0:
        positions = stratified_sample(train.labels, min(pixel_sample, len(train)), seed)
        for _, image, _ in train.iter_labeled(positions):
            values = convert_channels(image, channels).astype(np.float64) / 255.0
            total += float(values.sum())
            total_sq += float(np.square(values).sum())
            count += values.size
            advance(1)
    if report is not None:
        report.finish()
    mean = total / count if count else None
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0))) if mean is not None else None

    counts = np.bincount(train.labels, minlength=dataset.n_classes)
    return meta_features_from_counts(
        counts.tolist(),
        resolution_h=float(np.median(heights)),
        resolution_w=float(np.median(widths)),
        channels=channels,
        modality=modality or dataset.modality,
        pixel_mean=mean,
        pixel_std=std,
    )


def meta_feature_steps(dataset: Dataset, pixel_sample: int = PIXEL_SAMPLE) -> int:
    """How many progress steps :func:`compute_meta_features` reports for ``dataset``."""
    n = len(dataset.split("train"))
    return n + min(pixel_sample, n)


def compute_meta_features(
    source: Dataset | DatasetCard | str | Path,
    *,
    modality: str | None = None,
    seed: int = 0,
    pixel_sample: int = PIXEL_SAMPLE,
    on_progress: Callable[[int], None] | None = None,
) -> MetaFeatures:
    """Meta-features of a dataset's training split.

    ``source`` is a loaded :class:`~metallmix.tools.datasets.Dataset`, a dataset path (npz,
    CSV manifest, ImageFolder) or a dataset card (``.json``, or a ``DatasetCard``).
    ``modality`` overrides the dataset's or card's own. Counts come from the labels, image
    sizes from headers (one streamed pass), pixel mean/std from ``pixel_sample`` decoded
    training images chosen with ``seed``; seed also fixes any carved split of a path.
    """
    if isinstance(source, DatasetCard):
        return _from_card(source, modality)
    if isinstance(source, Dataset):
        return _from_dataset(source, modality, seed, pixel_sample, on_progress)
    path = Path(source).expanduser()
    if path.suffix.lower() == ".json":
        return _from_card(read_card(path), modality)
    dataset = load_dataset(path, modality=modality, seed=seed)
    return _from_dataset(dataset, modality, seed, pixel_sample, on_progress)


def card_from_dataset(
    dataset: Dataset, features: MetaFeatures | None = None, seed: int = 0
) -> DatasetCard:
    """The card of a loaded dataset (medians and pixel stats from its meta-features)."""
    features = features or compute_meta_features(dataset, seed=seed)
    counts = dataset.split("train").labels
    per_class = {name: int((counts == i).sum()) for i, name in enumerate(dataset.class_names)}
    return DatasetCard(
        name=dataset.name,
        modality=features.modality,
        class_names=list(dataset.class_names),
        train_counts=per_class,
        image_height=round(features.resolution_h),
        image_width=round(features.resolution_w),
        channels=1 if features.channels == 1 else 3,
        pixel_mean=features.pixel_mean,
        pixel_std=features.pixel_std,
        source={k: v for k, v in dataset.source_info.items() if k != "path"},
    )
