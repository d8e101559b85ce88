"""ImageFolder datasets: one sub-folder per class, optionally under ``train/``, ``val/``, ``test/``.

The folder layout is the most common way people keep their own images; DICOM files may sit
in the class folders like any other image (suffix ``.dcm``, or no suffix with the ``DICM``
preamble, as scanners write them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metallmix.errors import DatasetError
from metallmix.tools.datasets.base import Dataset, LoadOptions, build_splits
from metallmix.tools.datasets.files import FileImages, class_sort_key, is_image_file, list_images
from metallmix.tools.datasets.sidecar import described_dataset, read_sidecar

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _classes_of(folder: Path) -> dict[str, list[Path]]:
    """Class name → image files for a folder holding one sub-folder per class."""
    loose = sorted(p for p in folder.iterdir() if is_image_file(p))
    if loose:
        raise DatasetError(
            f"{loose[0]}: image lies directly in {folder}, outside a class folder; "
            "move each image into a sub-folder named after its class"
        )
    return {d.name: list_images(d) for d in _visible_dirs(folder)}


def load_folder(root: Path, options: LoadOptions) -> Dataset:
    """Load an ImageFolder tree; splits without a folder are carved from train (seeded)."""
    sidecar = read_sidecar(root)
    subdirs = _visible_dirs(root)
    split_dirs = {SPLIT_DIRS[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_DIRS}
    per_split: dict[str, dict[str, list[Path]]]
    if split_dirs:
        others = [d.name for d in subdirs if d.name.lower() not in SPLIT_DIRS]
        if others:
            raise DatasetError(
                f"{root}: mixes split folders ({', '.join(sorted(split_dirs))}) with other "
                f"folders ({', '.join(others)}); put class folders inside train/, val/, test/"
            )
        if "train" not in split_dirs:
            raise DatasetError(
                f"{root}: has {', '.join(sorted(split_dirs))}/ but no train/ folder; "
                "add train/ with one sub-folder per class"
            )
        per_split = {name: _classes_of(folder) for name, folder in split_dirs.items()}
    else:
        per_split = {"": _classes_of(root)}

    base = per_split.get("train", per_split.get(""))
    assert base is not None
    class_names = sorted((c for c, files in base.items() if files), key=class_sort_key)
    index = {name: i for i, name in enumerate(class_names)}
    paths: list[Path] = []
    labels: list[int] = []
    assigned: dict[str, list[int]] = {}
    for split_name, classes in per_split.items():
        for cls, files in sorted(classes.items()):
            if not files:
                continue
            if cls not in index:
                raise DatasetError(
                    f"{root / split_name / cls}: class {cls!r} has images in {split_name}/ but "
                    "none in train/; add training images for it or remove the folder"
                )
            start = len(paths)
            paths.extend(files)
            labels.extend([index[cls]] * len(files))
            if split_name:
                assigned.setdefault(split_name, []).extend(range(start, len(paths)))
    if not paths:
        raise DatasetError(
            f"{root}: no images found (looked for .png .jpg .jpeg .bmp .tif .tiff .dcm in "
            "one sub-folder per class); check the path and layout"
        )
    source = FileImages(paths)
    splits = build_splits(
        source,
        np.asarray(labels, dtype=np.int64),
        {k: np.asarray(v, dtype=np.int64) for k, v in assigned.items()} or None,
        options,
    )
    return described_dataset(
        root,
        sidecar,
        options,
        name=root.resolve().name,
        class_names=class_names,
        splits=splits,
        format="folder",
    )
