"""Datasets in: one loader API over ImageFolder trees, MedMNIST-style ``.npz``, CSV manifests
and DICOM, so every later stage (meta-features, training) sees the same :class:`Dataset`.

>>> ds = load_dataset("../shared/data/medical/breastmnist.npz")   # doctest: +SKIP
>>> x, y = ds.split("train").load_arrays(size=64, channels=3)       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from metallmix.errors import DatasetError
from metallmix.tools.datasets.base import (
    DEFAULT_MAX_BAD_FRACTION,
    Dataset,
    ImageHeader,
    LoadOptions,
    Split,
    stratified_sample,
)
from metallmix.tools.datasets.folder import load_folder
from metallmix.tools.datasets.manifest import load_manifest
from metallmix.tools.datasets.npz import load_npz

__all__ = [
    "DEFAULT_MAX_BAD_FRACTION",
    "Dataset",
    "ImageHeader",
    "Split",
    "load_dataset",
    "stratified_sample",
]


def load_dataset(
    path: str | Path,
    *,
    modality: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> Dataset:
    """Load a dataset, dispatching on its format.

    ``path`` is a ``.npz`` file, a ``.csv`` manifest or an ImageFolder directory (PNG, JPEG,
    BMP, TIFF or DICOM files in one folder per class). Splits the source does not provide are
    carved from the training data by a stratified split seeded with ``seed``. ``modality``
    overrides the sidecar JSON's. Images are not read here, only listed.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory; check the dataset path")
    options = LoadOptions(modality, seed, val_fraction, test_fraction, max_bad_fraction)
    suffix = path.suffix.lower()
    if path.is_dir():
        return load_folder(path, options)
    if suffix == ".npz":
        return load_npz(path, options)
    if suffix == ".csv":
        return load_manifest(path, options)
    if suffix == ".json":
        raise DatasetError(
            f"{path}: a JSON file is a dataset card or sidecar, which holds no images; "
            "compute_meta_features accepts a card, load_dataset needs the images"
        )
    raise DatasetError(
        f"{path}: unsupported dataset format '{suffix or path.name}'; use a .npz "
        "(MedMNIST-style), a .csv manifest (path,label[,split]) or a folder with one "
        "sub-folder per class"
    )
