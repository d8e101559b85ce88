"""MedMNIST-style ``.npz`` datasets (``train_images``, ``train_labels``, ``val_*``, ``test_*``).

Images are streamed row by row out of the zip member instead of ``np.load``-ing the whole
array: the ``.npy`` header gives shape and dtype, so sizes are known without decoding and a
meta-feature pass holds one chunk at a time. Labels are small and read whole.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from metallmix.errors import DatasetError
from metallmix.tools.datasets.base import (
    SPLIT_NAMES,
    Dataset,
    ImageHeader,
    ImageReadError,
    ImageSource,
    LoadOptions,
    Split,
    build_splits,
    normalize_image,
)
from metallmix.tools.datasets.sidecar import described_dataset, read_sidecar

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20  # zip reads hold ~4x this; 1 MiB is as fast as larger chunks


def _read_npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


class NpzImages(ImageSource):
    """The images array of one split, streamed from inside the ``.npz`` zip."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
            shape, fortran, dtype = _read_npy_header(fh)
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
            raise DatasetError(
                f"{path}: '{key}' has shape {shape}; expected N x H x W (grey) or "
                "N x H x W x C with C in 1, 3, 4"
            )
        if dtype.hasobject:
            raise DatasetError(f"{path}: '{key}' holds Python objects; save numeric arrays")
        self.shape = shape
        self.fortran = fortran
        self.dtype = dtype
        channels = 1 if len(shape) == 3 or shape[3] == 1 else 3
        self.header = ImageHeader(int(shape[1]), int(shape[2]), channels)

    def __len__(self) -> int:
        return int(self.shape[0])

    def describe(self, index: int) -> str:
        return f"{self.path} ['{self.key}'][{index}]"

    def iter_headers(
        self, indices: Sequence[int]
    ) -> Iterator[tuple[int, ImageHeader | ImageReadError]]:
        for index in indices:
            yield index, self.header

    def _decoded(self, index: int, row: np.ndarray) -> np.ndarray | ImageReadError:
        """One row as an image, or why it is not one (NaN or infinite values): a damaged
        row is skipped and reported like an unreadable file, never cast to zeros."""
        try:
            return normalize_image(row.copy())
        except ValueError as exc:
            return ImageReadError(f"{self.describe(index)}: {exc}")

    def iter_pixels(
        self, indices: Sequence[int]
    ) -> Iterator[tuple[int, np.ndarray | ImageReadError]]:
        wanted = sorted(set(int(i) for i in indices))
        if not wanted:
            return
        if self.fortran:  # rows are not contiguous: no way to stream, read it whole
            with np.load(self.path, allow_pickle=False) as data:
                array = data[self.key]
            for index in wanted:
                yield index, self._decoded(index, array[index])
            return
        row_shape = tuple(int(d) for d in self.shape[1:])
        row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        per_chunk = max(1, _CHUNK_BYTES // max(row_bytes, 1))
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.key}.npy") as fh:
                _read_npy_header(fh)
                row = 0
                pos = 0
                last = wanted[-1]
                while row <= last:
                    count = min(per_chunk, len(self) - row)
                    raw = fh.read(count * row_bytes)
                    if len(raw) < count * row_bytes:
                        at = row + len(raw) // max(row_bytes, 1)
                        raise DatasetError(
                            f"{self.path}: '{self.key}' is truncated at image {at} "
                            f"of {len(self)}; re-create or re-download the file"
                        )
                    chunk = np.frombuffer(raw, dtype=self.dtype).reshape((count, *row_shape))
                    while pos < len(wanted) and wanted[pos] < row + count:
                        yield wanted[pos], self._decoded(wanted[pos], chunk[wanted[pos] - row])
                        pos += 1
                    row += count
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DatasetError(
                f"{self.path}: '{self.key}' cannot be read ({exc}); the file is damaged"
            ) from exc


def _load_labels(path: Path, data: Any, key: str, n_images: int) -> np.ndarray:
    labels = np.asarray(data[key])
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DatasetError(
            f"{path}: '{key}' has shape {labels.shape}; expected (N,) or (N, 1) class indices "
            "(multi-label targets are not supported)"
        )
    if len(labels) != n_images:
        images_key = key.replace("_labels", "_images")
        raise DatasetError(
            f"{path}: '{key}' has {len(labels)} labels but '{images_key}' has {n_images} "
            "images; the arrays must have the same length"
        )
    integral = np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)
    if not integral and not (
        np.issubdtype(labels.dtype, np.floating)
        and np.all(np.isfinite(labels) & (labels == np.round(labels)))
    ):
        raise DatasetError(
            f"{path}: '{key}' must hold integer class indices, found dtype {labels.dtype}"
        )
    labels = labels.astype(np.int64)
    if len(labels) and labels.min() < 0:
        row = int(np.argmax(labels < 0))
        raise DatasetError(
            f"{path}: '{key}'[{row}] = {labels[row]} is negative; labels must be 0..n_classes-1"
        )
    return labels


def load_npz(path: Path, options: LoadOptions) -> Dataset:
    """Load a MedMNIST-style ``.npz``; missing val/test pairs are carved from train (seeded)."""
    sidecar = read_sidecar(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        # np.load would fall back to unpickling and answer "contains pickled (object) data
        # ... load it unsafely": wrong for an empty or text file, and advice never to take.
        size = path.stat().st_size
        what = "an empty file" if size == 0 else f"{size} bytes, not a zip"
        raise DatasetError(
            f"{path}: not a .npz archive ({what}); "
            "a .npz is the zip of .npy arrays that numpy.savez writes, with train_images and "
            "train_labels"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a readable .npz archive ({exc})") from exc
    with data:
        keys = set(data.files)
        for required in ("train_images", "train_labels"):
            if required not in keys:
                raise DatasetError(
                    f"{path}: missing key '{required}' (found {sorted(keys)}); a MedMNIST-style "
                    "npz needs train_images and train_labels, optionally val_* and test_*"
                )
        labels: dict[str, np.ndarray] = {}
        sources: dict[str, NpzImages] = {}
        for name in SPLIT_NAMES:
            img_key, lab_key = f"{name}_images", f"{name}_labels"
            if (img_key in keys) != (lab_key in keys):
                missing = lab_key if img_key in keys else img_key
                raise DatasetError(
                    f"{path}: has '{img_key if img_key in keys else lab_key}' but is missing "
                    f"key '{missing}'; add it or drop the {name} split"
                )
            if img_key not in keys:
                continue
            sources[name] = NpzImages(path, img_key)
            labels[name] = _load_labels(path, data, lab_key, len(sources[name]))

    notes: list[str] = []
    class_names = sidecar[0].get("class_names")
    max_label = max((int(v.max()) for v in labels.values() if len(v)), default=-1)
    if isinstance(class_names, list) and class_names:
        class_names = [str(c) for c in class_names]
        for name, values in labels.items():
            if len(values) and values.max() >= len(class_names):
                row = int(np.argmax(values >= len(class_names)))
                raise DatasetError(
                    f"{path}: '{name}_labels'[{row}] = {values[row]} is out of range for the "
                    f"{len(class_names)} classes named in the sidecar; fix the label or the "
                    "sidecar's class_names"
                )
    else:
        nonempty = [v for v in labels.values() if len(v)]
        present = np.unique(np.concatenate(nonempty)) if nonempty else np.zeros(0, np.int64)
        if len(present) and len(present) < max_label + 1:
            # Labels with gaps (e.g. 0, 1, 1000000): 0..k-1 in their order, the original
            # values kept as class names, instead of max+1 mostly empty classes.
            labels = {
                name: np.searchsorted(present, values).astype(np.int64)
                for name, values in labels.items()
            }
            class_names = [str(int(v)) for v in present]
            note = (
                f"labels are not 0..k-1 ({len(present)} distinct values up to {max_label}); "
                f"mapped to 0..{len(present) - 1}, class names keep the original values"
            )
            notes.append(note)
            log.warning("%s: %s", path, note)
        else:
            class_names = [str(i) for i in range(max_label + 1)]

    # Train is one source; the splits the archive lacks are carved from it (seeded).
    train_labels = labels["train"]
    whole_train = {"train": np.arange(len(train_labels))}
    splits = build_splits(sources["train"], train_labels, whole_train, options, elsewhere=sources)
    for name, source in sources.items():
        if name != "train":
            splits[name] = Split(
                name, labels[name], source, np.arange(len(source)), options.max_bad_fraction
            )
    return described_dataset(
        path,
        sidecar,
        options,
        name=path.stem,
        class_names=class_names,
        splits={name: splits[name] for name in SPLIT_NAMES if name in splits},
        format="npz",
        notes={"notes": notes} if notes else None,
    )
