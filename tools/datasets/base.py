"""The one in-memory shape every dataset format is loaded into: :class:`Dataset` of :class:`Split`.

A split holds labels (cheap, always in memory) and *indices into an image source*; images are
decoded only when iterated, so meta-features of a large dataset need a single streaming pass
and never the whole dataset in memory. Subsets (class subsets, training subsamples) are just
new index arrays over the same source, which is how derived tasks stay cheap.

Unreadable or truncated images are skipped and counted rather than aborting a long pass; once
the skipped share of a split exceeds ``max_bad_fraction`` the dataset is declared unusable,
because silently training on a fraction of it would make every downstream number misleading.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metallmix.errors import DatasetError

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_MAX_BAD_FRACTION = 0.05


class ImageReadError(Exception):
    """One image cannot be decoded; carries a description naming the file or row."""


@dataclass(frozen=True)
class ImageHeader:
    """Size and channel count of one image, read without decoding pixels where possible."""

    height: int
    width: int
    channels: int


class ImageSource(ABC):
    """Random-access-by-index, streamed-in-order access to the images of one storage unit.

    Implementations yield ``(index, result)`` pairs in the order of the requested indices,
    where ``result`` is an :class:`ImageReadError` for an image that cannot be read, so the
    caller decides how many failures are tolerable.
    """

    @abstractmethod
    def describe(self, index: int) -> str:
        """Where image ``index`` lives (file path, or file and row), for error messages."""

    @abstractmethod
    def iter_headers(
        self, indices: Sequence[int]
    ) -> Iterator[tuple[int, ImageHeader | ImageReadError]]:
        """Headers of the given images."""

    @abstractmethod
    def iter_pixels(
        self, indices: Sequence[int]
    ) -> Iterator[tuple[int, np.ndarray | ImageReadError]]:
        """Decoded images (uint8, HxW or HxWx3) of the given indices."""


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Bring any pixel array to uint8 without guessing more than necessary.

    uint8 passes through; integers already in 0..255 are cast; floats in [0, 1] are scaled;
    anything else (16-bit PNG, DICOM, float CT values) is min-max stretched per image, the usual
    choice when no window is known. NaN or infinite values raise ValueError: there is no
    honest pixel for them, and a cast would silently make them 0.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.size == 0:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(
            f"{int(np.count_nonzero(~np.isfinite(array)))} NaN or infinite pixel value(s); "
            "replace them (e.g. numpy.nan_to_num) and save again"
        )
    lo, hi = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.integer) and lo >= 0 and hi <= 255:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and lo >= 0 and hi <= 1:
        return np.rint(array * 255.0).astype(np.uint8)
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (array.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.rint(scaled).astype(np.uint8)


def normalize_image(array: np.ndarray) -> np.ndarray:
    """HxW (grey) or HxWx3 (colour) uint8: drops a singleton or alpha channel."""
    array = to_uint8(np.asarray(array))
    if array.ndim == 3:
        if array.shape[2] == 1:
            return array[:, :, 0]
        if array.shape[2] == 4:
            return np.ascontiguousarray(array[:, :, :3])
        if array.shape[2] == 2:  # grey + alpha
            return np.ascontiguousarray(array[:, :, 0])
    return array


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """HxWxC with C = ``channels`` (1 or 3); grey→RGB repeats, RGB→grey uses ITU-R 601 luma."""
    if image.ndim == 2:
        image = image[:, :, None]
    have = image.shape[2]
    if have == channels:
        return image
    if channels == 3 and have == 1:
        return np.repeat(image, 3, axis=2)
    if channels == 1 and have == 3:
        grey = Image.fromarray(image, mode="RGB").convert("L")
        return np.asarray(grey)[:, :, None]
    raise DatasetError(f"cannot convert a {have}-channel image to {channels} channels")


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Square ``size`` x ``size`` resize with PIL bilinear (antialiased when shrinking)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    squeeze = image.ndim == 3 and image.shape[2] == 1
    pil = Image.fromarray(image[:, :, 0] if squeeze else image)
    out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    return out[:, :, None] if squeeze else out


def stratified_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Positions of a seeded, class-proportional subsample of ``limit`` items (sorted).

    Largest-remainder allocation, at least one per class while ``limit`` allows it, so a
    small subsample of an imbalanced dataset keeps every class.
    """
    n = len(labels)
    if limit >= n:
        return np.arange(n)
    if limit < 1:
        raise DatasetError(f"subsample size must be at least 1, got {limit}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (limit / n)
    alloc = np.floor(quota).astype(int)
    if limit >= len(classes):
        alloc = np.maximum(alloc, 1)
    # Hand out what is left by largest remainder (or take back if the minimum of 1 overshot).
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    while alloc.sum() < limit:
        for k in order:
            if alloc.sum() >= limit:
                break
            if alloc[k] < counts[k]:
                alloc[k] += 1
    while alloc.sum() > limit:
        k = int(np.argmax(alloc))
        alloc[k] -= 1
    chosen: list[np.ndarray] = []
    for cls, take in zip(classes, alloc, strict=True):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.choice(members, size=int(take), replace=False))
    return np.sort(np.concatenate(chosen))


def stratified_partition(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test positions; every class keeps at least one train item."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DatasetError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(
            f"val_fraction + test_fraction must be below 1 (got {val_fraction + test_fraction})"
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n = len(members)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        while n_test + n_val >= n and (n_test or n_val):
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {
        name: np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, dtype=np.int64)
        for name, chunks in parts.items()
    }


@dataclass
class Split:
    """One split: labels in memory, images streamed from the source on demand."""

    name: str
    labels: np.ndarray
    source: ImageSource
    indices: np.ndarray
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.indices):
            raise ValueError("labels and indices must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, positions: np.ndarray, label_map: np.ndarray | None = None) -> Split:
        """A split of the items at ``positions`` with labels mapped through ``label_map``."""
        labels = self.labels[positions]
        if label_map is not None:
            labels = label_map[labels]
        return Split(self.name, labels, self.source, self.indices[positions], self.max_bad_fraction)

    def _note_failure(self, failures: list[str], error: ImageReadError, total: int) -> None:
        """Count a skipped image; fail once the skipped share can no longer stay acceptable."""
        failures.append(str(error))
        if len(failures) > self.max_bad_fraction * total:
            raise DatasetError(
                f"{len(failures)} of {total} images in the {self.name!r} split are "
                f"unreadable (more than {self.max_bad_fraction:.0%}); first: {failures[0]}. "
                "Fix or remove the damaged files, or raise max_bad_fraction."
            )

    def _positions(self, positions: Iterable[int] | None) -> np.ndarray:
        return np.arange(len(self)) if positions is None else np.asarray(list(positions), int)

    def iter_labeled(
        self, positions: Iterable[int] | None = None
    ) -> Iterator[tuple[int, np.ndarray, int]]:
        """``(position, image, label)`` for readable images, in position order."""
        pos = np.sort(self._positions(positions))
        by_index = dict(zip(self.indices[pos].tolist(), pos.tolist(), strict=True))
        order = sorted(by_index)  # sources stream fastest in storage order
        failures: list[str] = []
        self.skipped = failures
        for index, result in self.source.iter_pixels(order):
            if isinstance(result, ImageReadError):
                self._note_failure(failures, result, len(pos))
                continue
            p = by_index[index]
            yield p, result, int(self.labels[p])

    def iter_images(self) -> Iterator[np.ndarray]:
        """Images (HxW or HxWxC uint8), streamed; unreadable ones are skipped and counted."""
        for _, image, _ in self.iter_labeled():
            yield image

    def iter_headers(self, positions: Iterable[int] | None = None) -> Iterator[ImageHeader]:
        """Headers (height, width, channels), read without decoding where the format allows."""
        pos = self._positions(positions)
        order = sorted(set(self.indices[pos].tolist()))
        counts = Counter(self.indices[pos].tolist())
        failures: list[str] = []
        self.skipped = failures
        for index, result in self.source.iter_headers(order):
            if isinstance(result, ImageReadError):
                self._note_failure(failures, result, len(pos))
                continue
            for _ in range(counts[index]):
                yield result

    def image_sizes(self) -> Iterator[tuple[int, int]]:
        """``(height, width)`` of every image, header-only where the format allows."""
        for header in self.iter_headers():
            yield header.height, header.width

    def load_arrays(
        self,
        size: int | None = None,
        channels: int | None = None,
        limit: int | None = None,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(N, H, W, C)`` uint8 and labels ``(N,)`` int64, for training.

        ``limit`` takes a seeded stratified subsample; unreadable images are dropped with
        their labels. Without ``size`` all images must already share one size.
        """
        if channels is not None and channels not in (1, 3):
            raise DatasetError(f"channels must be 1 or 3, got {channels}")
        if size is not None and size < 1:
            raise DatasetError(f"size must be a positive number of pixels, got {size}")
        positions = None if limit is None else stratified_sample(self.labels, limit, seed)
        if channels is None:
            channels = majority_channels(self.iter_headers(positions))
        images: list[np.ndarray] = []
        labels: list[int] = []
        for _, image, label in self.iter_labeled(positions):
            out = convert_channels(image, channels)
            if size is not None:
                out = resize_image(out, size)
            if images and out.shape != images[0].shape:
                raise DatasetError(
                    f"images of the {self.name!r} split differ in size ({images[0].shape[:2]} "
                    f"vs {out.shape[:2]}); pass size= to resize them to one square size"
                )
            images.append(out)
            labels.append(label)
        if not images:
            shape = (0, size or 0, size or 0, channels)
            return np.zeros(shape, dtype=np.uint8), np.zeros(0, dtype=np.int64)
        return np.stack(images), np.asarray(labels, dtype=np.int64)


def majority_channels(headers: Iterable[ImageHeader]) -> int:
    """The channel count most images have (1 or 3); ties favour colour, which loses nothing."""
    counts = Counter(1 if h.channels == 1 else 3 for h in headers)
    if not counts:
        return 1
    return 3 if counts[3] >= counts[1] else 1


@dataclass
class Dataset:
    """A labelled image dataset with train/val/test splits, whatever its storage format."""

    name: str
    class_names: list[str]
    splits: dict[str, Split]
    modality: str = "unknown"
    source_info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    format: str = "unknown"

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> Split:
        """The split called ``name`` (``train``, ``val`` or ``test``)."""
        try:
            return self.splits[name]
        except KeyError:
            raise DatasetError(
                f"dataset {self.name!r} has no split {name!r}; it has {sorted(self.splits)}"
            ) from None

    def subset(
        self,
        classes: list[int] | None = None,
        train_limit: int | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> Dataset:
        """A derived task: only ``classes`` (re-indexed in the given order) and/or a seeded
        stratified subsample of ``train_limit`` training images; val/test keep all their
        images of the kept classes so that scores stay comparable."""
        label_map = np.arange(self.n_classes)
        class_names = list(self.class_names)
        suffix: list[str] = []
        if classes is not None:
            classes = [int(c) for c in classes]
            bad = [c for c in classes if not 0 <= c < self.n_classes]
            if bad:
                raise DatasetError(
                    f"class indices {bad} are out of range for {self.name!r} "
                    f"(0..{self.n_classes - 1})"
                )
            if len(set(classes)) != len(classes):
                raise DatasetError(f"class indices repeat in {classes}")
            if len(classes) < 2:
                raise DatasetError("a subset needs at least two classes")
            label_map = np.full(self.n_classes, -1, dtype=np.int64)
            label_map[classes] = np.arange(len(classes))
            class_names = [self.class_names[c] for c in classes]
            suffix.append("c" + "+".join(str(c) for c in classes))
        splits: dict[str, Split] = {}
        for split_name, split in self.splits.items():
            keep = np.flatnonzero(label_map[split.labels] >= 0)
            sub = split.take(keep, label_map)
            if split_name == "train" and train_limit is not None:
                sub = sub.take(stratified_sample(sub.labels, train_limit, seed))
            splits[split_name] = sub
        if train_limit is not None:
            suffix.append(f"n{train_limit}s{seed}")
        derived = Dataset(
            name=name or "-".join([self.name, *suffix]),
            class_names=class_names,
            splits=splits,
            modality=self.modality,
            source_info={**self.source_info, "derived_from": self.name},
            path=self.path,
            format=self.format,
        )
        check_usable(derived)
        return derived


def check_usable(dataset: Dataset) -> None:
    """Reject datasets no classifier can be trained on: no training images, or one class."""
    where = str(dataset.path) if dataset.path else dataset.name
    train = dataset.splits.get("train")
    if train is None or len(train) == 0:
        raise DatasetError(f"{where}: no training images found; check the path and layout")
    present = np.unique(train.labels)
    if len(present) < 2:
        only = dataset.class_names[int(present[0])] if len(present) else "?"
        raise DatasetError(
            f"{where}: the training split has one class only ({only!r}); "
            "a classifier needs at least two classes"
        )


@dataclass(frozen=True)
class LoadOptions:
    """The choices every loader takes, whatever the format (see ``load_dataset``)."""

    modality: str | None = None
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise DatasetError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


def build_splits(
    source: ImageSource,
    labels: np.ndarray,
    assigned: dict[str, np.ndarray] | None,
    options: LoadOptions,
    elsewhere: Iterable[str] = (),
) -> dict[str, Split]:
    """Splits over one source. ``assigned`` maps split names to positions the storage already
    fixes; without it everything is split. Missing val/test are carved from train, seeded and
    stratified, so a dataset always offers all three; ``elsewhere`` names the splits another
    source provides (an archive's own val/test), which are not carved."""
    labels = np.asarray(labels, dtype=np.int64)
    if not assigned:
        assigned = {}
        parts = stratified_partition(
            labels, options.val_fraction, options.test_fraction, options.seed
        )
    else:
        parts = {name: np.asarray(pos, dtype=np.int64) for name, pos in assigned.items()}
        missing = [n for n in ("val", "test") if n not in parts and n not in set(elsewhere)]
        if missing and "train" in parts and len(parts["train"]):
            train = parts["train"]
            carved = stratified_partition(
                labels[train],
                options.val_fraction if "val" in missing else 0.0,
                options.test_fraction if "test" in missing else 0.0,
                options.seed,
            )
            for name in [*missing, "train"]:
                parts[name] = train[carved[name]]
    return {
        name: Split(name, labels[parts[name]], source, parts[name], options.max_bad_fraction)
        for name in SPLIT_NAMES
        if name in parts
    }
