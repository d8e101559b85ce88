"""Landmarks: cheap measurements of a dataset's own images that the meta-learner reads.

Meta-features (size, classes, resolution, ...) cannot tell which configuration wins on a
dataset unlike the KB's (issue 29): two datasets with the same counts can be easy or hard,
and ImageNet features can transfer to one and not the other. Landmarking measures that
directly, in seconds, on a stratified subsample of the training split:

- per pretrained backbone of the CPU space (the offline EfficientNet-Lite weights), a
  transferability score: how well a linear read-out of its frozen features separates the
  classes (the linear probe's own extraction, :func:`~metallmix.tools.training.trainer.
  frozen_features`, at a small size);
- a difficulty landmark for from-scratch models: the same read-out on raw downsampled
  pixels (16 x 16).

The read-out is a ridge classifier scored by leave-one-out balanced accuracy, which a ridge
model gives in closed form from one eigendecomposition of the n x n kernel (no refits, no
fold noise); the ridge strength is chosen from a fixed grid by that same criterion. All
scores are balanced accuracies in [0, 1], rounded to 4 decimals so that they are stable
across thread counts. Datasets without images (cards, Quick-Tune) have none: the learner
reads them as missing (NaN).

Stored per task in :attr:`MetaFeatures.landmarks` (keys: the backbone names and
:data:`PIXELS`); the encoding turns them into per-candidate columns (:func:`landmark_columns`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from metallmix.errors import DatasetError, ModelUnavailableError
from metallmix.tools.datasets import Dataset, load_dataset
from metallmix.tools.datasets.base import resize_image
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.meta.search_space import PRETRAINED_LITE_MODELS
from metallmix.tools.metafeatures import MetaFeatures
from metallmix.tools.training.trainer import FeatureCache, frozen_features

LANDMARKS_VERSION = 1
PIXELS = "pixels"  # key of the from-scratch (raw-pixel) landmark
MAX_IMAGES = 200  # stratified training images measured (<= 300; 10 s on 2 cores)
FEATURE_SIZE = 64  # backbone input side, pixels
PIXEL_SIZE = 16  # raw-pixel landmark side, pixels
THREADS = 2  # torch intra-op threads while extracting (machines here are shared)
RIDGE_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)  # ridge strengths, relative to the kernel's scale
MISSING_NO_IMAGES = "landmarks missing (no images)"

# Frame columns the encoding reads (prefix ``lm_``; the dataset-blind model leaves them out):
# the candidate's own landmark (its backbone's score if pretrained, else the pixel score),
# the pixel landmark, and the best backbone's score (how much pretraining can help here).
CANDIDATE_COLUMN = "lm_candidate"
PIXEL_COLUMN = "lm_pixels"
BEST_BACKBONE_COLUMN = "lm_backbone_best"
LANDMARK_COLUMNS = (CANDIDATE_COLUMN, PIXEL_COLUMN, BEST_BACKBONE_COLUMN)


@dataclass(frozen=True)
class LandmarkResult:
    """Landmarks of one dataset, what they cost, and what could not be measured."""

    values: dict[str, float]
    seconds: float
    images: int
    skipped: dict[str, str] = field(default_factory=dict)  # backbone -> why (no weights)

    def describe(self) -> str:
        """'pixels 0.71, efficientnet_lite0 0.84, ... on 300 images' (a progress line)."""
        shown = ", ".join(f"{k} {v:.2f}" for k, v in self.values.items())
        extra = f"; skipped {', '.join(self.skipped)}" if self.skipped else ""
        return f"{shown} on {self.images} images{extra}"


def landmark_columns(
    landmarks: Mapping[str, float] | None, model: str, pretrained: bool
) -> dict[str, float]:
    """The ``lm_`` frame columns of one (dataset, candidate): NaN where not measured.

    A pretrained candidate reads its own backbone's score (NaN when that backbone was not
    measured: another space's model); a from-scratch one reads the pixel landmark.
    """
    nan = float("nan")
    if not landmarks:
        return dict.fromkeys(LANDMARK_COLUMNS, nan)
    pixels = _finite(landmarks.get(PIXELS))
    backbones = [_finite(v) for k, v in landmarks.items() if k != PIXELS]
    known = [v for v in backbones if not math.isnan(v)]
    own = _finite(landmarks.get(model.split(".")[0])) if pretrained else pixels
    return {
        CANDIDATE_COLUMN: own,
        PIXEL_COLUMN: pixels,
        BEST_BACKBONE_COLUMN: max(known) if known else nan,
    }


def with_landmark_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``lm_`` columns recomputed from its ``landmarks`` column (the
    dataset's raw mapping, as ``records_to_frame`` writes it), ``model`` and ``pretrained``:
    for rows moved to another dataset (the portfolio scores candidates on KB datasets)."""
    out = frame.copy()
    raw = out["landmarks"] if "landmarks" in out else pd.Series([None] * len(out), out.index)
    pretrained = out["pretrained"] if "pretrained" in out else pd.Series(False, out.index)
    rows = [
        landmark_columns(lm if isinstance(lm, dict) else None, str(model), bool(flag))
        for lm, model, flag in zip(raw, out["model"], pretrained, strict=True)
    ]
    for column in LANDMARK_COLUMNS:
        out[column] = [row[column] for row in rows]
    return out


def _finite(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return float("nan")


# --- the read-out ------------------------------------------------------------------------


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)]
    return float(np.mean(recalls)) if recalls else float("nan")


def loo_probe_score(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out balanced accuracy of a ridge classifier on ``features`` (N x D).

    Features are standardised (label-free) and scaled by 1/sqrt(D) so the kernel has unit
    scale whatever D is; a constant column is the intercept (its kernel term is 1, far above
    the ridge strengths, so it is barely shrunk); targets are one-hot. With
    K = U diag(s) U^T, the hat matrix for strength l is U diag(s / (s + l)) U^T and the
    leave-one-out prediction of row i is (f_i - h_ii y_i) / (1 - h_ii), exact for this model:
    every strength of the grid costs one matrix product. (Centring the targets instead of the
    constant column would leave the intercept out of the hat matrix, and with D >= N the
    "left-out" prediction would then recover the row's own label.)
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2 or len(y) < 4:
        raise DatasetError(
            f"landmarks need at least 2 classes and 4 images, got {len(classes)} and {len(y)}"
        )
    x = x - x.mean(axis=0, keepdims=True)
    scale = x.std(axis=0, keepdims=True)
    x = x / np.where(scale > 1e-8, scale, 1.0) / math.sqrt(x.shape[1])
    target = np.eye(len(classes))[codes]
    kernel = x @ x.T + 1.0  # + the intercept's constant column
    s, u = np.linalg.eigh(kernel)
    s = np.clip(s, 0.0, None)
    ut_y = u.T @ target
    best = -1.0
    for strength in RIDGE_GRID:
        shrink = s / (s + strength)
        fitted = u @ (shrink[:, None] * ut_y)
        h = np.einsum("ij,j,ij->i", u, shrink, u)
        loo = (fitted - h[:, None] * target) / np.clip(1.0 - h, 1e-9, None)[:, None]
        best = max(best, balanced_accuracy(codes, np.argmax(loo, axis=1)))
    return round(best, 4)


# --- computation -------------------------------------------------------------------------


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch  # heavy: torch loads only when landmarks are measured

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pixels(images: np.ndarray, side: int) -> np.ndarray:
    """Raw pixels of ``images`` resized to ``side`` x ``side``, flattened, in [0, 1]."""
    small = np.stack([resize_image(img, side) for img in images])
    return small.reshape(len(images), -1).astype(np.float64) / 255.0


def compute_landmarks(
    dataset: Dataset,
    *,
    seed: int = 0,
    max_images: int = MAX_IMAGES,
    models: Sequence[str] = PRETRAINED_LITE_MODELS,
    source_resolution: int | None = None,
    threads: int = THREADS,
    cache: FeatureCache | None = None,
    on_step: Callable[[str], None] | None = None,
) -> LandmarkResult:
    """Landmarks of ``dataset`` from ``max_images`` stratified training images (``seed``).

    ``source_resolution`` reads the images at that side first (a KB task trained on a
    low-resolution copy, e.g. ``brain_tumor_mri/n1000/r28``), so the landmark sees what the
    runs saw. A backbone whose weights are not installed is skipped and named in
    :attr:`LandmarkResult.skipped`; its candidates then read NaN. ``on_step`` hears each
    finished measurement (a progress display).
    """
    started = time.perf_counter()
    train = dataset.split("train")
    size = source_resolution or FEATURE_SIZE
    images, labels = train.load_arrays(size=size, limit=min(max_images, len(train)), seed=seed)
    values: dict[str, float] = {PIXELS: loo_probe_score(_pixels(images, PIXEL_SIZE), labels)}
    if on_step is not None:
        on_step(PIXELS)
    skipped: dict[str, str] = {}
    with _torch_threads(threads):
        for model in models:
            try:
                feats, _ = frozen_features(  # one batch: the fastest on a CPU here
                    model, images, image_size=FEATURE_SIZE, cache=cache, batch=len(images)
                )
            except ModelUnavailableError as exc:
                skipped[model] = str(exc).splitlines()[0]
                continue
            values[model] = loo_probe_score(feats, labels)
            if on_step is not None:
                on_step(model)
    return LandmarkResult(
        values=values,
        seconds=time.perf_counter() - started,
        images=len(labels),
        skipped=skipped,
    )


def attach_landmarks(
    mf: MetaFeatures, dataset: Dataset | None, *, seed: int = 0
) -> tuple[MetaFeatures, LandmarkResult | None, str]:
    """``mf`` with the landmarks of ``dataset``, the measurement, and one line saying what
    happened (a progress step, an MLflow param). ``dataset`` None (a card: no images), or
    data the read-out cannot score (fewer than 4 images), leaves them missing: the
    recommendation goes on with NaN landmark columns rather than failing."""
    if dataset is None:
        return mf, None, MISSING_NO_IMAGES
    try:
        result = compute_landmarks(dataset, seed=seed)
    except DatasetError as exc:
        return mf, None, f"landmarks missing ({exc})"
    line = f"landmarks: {result.describe()} ({result.seconds:.1f} s)"
    return mf.model_copy(update={"landmarks": dict(result.values)}), result, line


# --- the KB's tasks ----------------------------------------------------------------------

_TASK_PART = re.compile(r"^(?:c(?P<classes>\d+(?:\+\d+)+)|n(?P<n>\d+)|r(?P<r>\d+))$")


@dataclass(frozen=True)
class TaskName:
    """A KB task name parsed: ``knee_oa_kl/c0+4/n300/r28`` is classes 0 and 4 of
    ``knee_oa_kl``, 300 training images, read at 28 px (tools/training/build.py names them)."""

    source: str
    classes: list[int] | None = None
    train_limit: int | None = None
    resolution: int | None = None

    @classmethod
    def parse(cls, name: str) -> TaskName | None:
        """None for a name that is not ``source[/cA+B][/nN][/rR]``."""
        source, *parts = name.split("/")
        values: dict[str, object] = {}
        for part in parts:
            match = _TASK_PART.match(part)
            if match is None:
                return None
            if match["classes"]:
                values["classes"] = [int(c) for c in match["classes"].split("+")]
            elif match["n"]:
                values["train_limit"] = int(match["n"])
            else:
                values["resolution"] = int(match["r"])
        return cls(source=source, **values)  # type: ignore[arg-type]

    def dataset(self, base: Dataset, name: str) -> Dataset:
        """The task's data as the KB build made it (the same seed-0 subsample)."""
        limit = self.train_limit
        if limit is not None and limit >= len(base.split("train")):
            limit = None
        if self.classes is None and limit is None:
            return base
        return base.subset(classes=self.classes, train_limit=limit, seed=0, name=name)


def find_sources(data_dir: Path) -> dict[str, Path]:
    """Dataset stem -> path for every ``.npz`` file or folder in ``data_dir``."""
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: not a folder of datasets; check --data-dir")
    out: dict[str, Path] = {}
    for path in sorted(data_dir.iterdir()):
        if path.suffix.lower() == ".npz" or (path.is_dir() and not path.name.startswith(".")):
            out.setdefault(path.stem if path.is_file() else path.name, path)
    return out


@dataclass
class KBLandmarks:
    """What :func:`landmarks_for_kb` measured: rewritten records, per-task results, and the
    tasks left missing (no images found) or refused (the data did not fit the name)."""

    records: list[RunRecord]
    measured: dict[str, LandmarkResult]
    missing: list[str]
    failed: dict[str, str]


def landmarks_for_kb(
    records: Sequence[RunRecord],
    data_dir: Path,
    *,
    seed: int = 0,
    on_task: Callable[[int, int, str, LandmarkResult | None, str | None], None] | None = None,
) -> KBLandmarks:
    """Landmarks for every KB task whose images ``data_dir`` holds (matched by the task's
    source name), and its records with them set. Nothing is written here: the caller
    stores all rewritten records in one transaction, so a failure half-way changes nothing.
    ``on_task(done, total, task, result, error)`` hears each task as it finishes.
    """
    sources = find_sources(data_dir)
    by_task: dict[str, list[RunRecord]] = {}
    for record in records:
        by_task.setdefault(record.dataset, []).append(record)
    reachable: list[tuple[str, TaskName]] = []
    missing: list[str] = []
    for task in sorted(by_task):
        parsed = TaskName.parse(task)
        if parsed is None or parsed.source not in sources:
            missing.append(task)
        else:
            reachable.append((task, parsed))
    loaded: dict[str, Dataset] = {}
    measured: dict[str, LandmarkResult] = {}
    failed: dict[str, str] = {}
    out: list[RunRecord] = []
    for done, (task, parsed) in enumerate(reachable, 1):
        result: LandmarkResult | None = None
        error: str | None = None
        try:
            if parsed.source not in loaded:
                loaded[parsed.source] = load_dataset(sources[parsed.source])
            data = parsed.dataset(loaded[parsed.source], task)
            result = compute_landmarks(data, seed=seed, source_resolution=parsed.resolution)
        except DatasetError as exc:
            error = str(exc)
            failed[task] = error
        if result is not None:
            measured[task] = result
            for record in by_task[task]:
                mf = record.meta_features.model_copy(update={"landmarks": dict(result.values)})
                out.append(record.model_copy(update={"meta_features": mf}))
        if on_task is not None:
            on_task(done, len(reachable), task, result, error)
    return KBLandmarks(records=out, measured=measured, missing=missing, failed=failed)


__all__ = [
    "LANDMARKS_VERSION",
    "LANDMARK_COLUMNS",
    "MISSING_NO_IMAGES",
    "PIXELS",
    "KBLandmarks",
    "LandmarkResult",
    "TaskName",
    "attach_landmarks",
    "balanced_accuracy",
    "compute_landmarks",
    "find_sources",
    "landmark_columns",
    "landmarks_for_kb",
    "loo_probe_score",
    "with_landmark_columns",
]
