"""CSV manifests: ``path,label[,split]``, one image per row, paths relative to the CSV.

The format for images that are not laid out by class (PACS exports, shared drives). Every
row is checked before anything is returned, so a bad row is reported by its line number
rather than surfacing as a failure halfway through training.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from metallmix.errors import DatasetError
from metallmix.tools.datasets.base import Dataset, LoadOptions, build_splits
from metallmix.tools.datasets.files import FileImages, class_sort_key
from metallmix.tools.datasets.sidecar import described_dataset, read_sidecar

REQUIRED_COLUMNS = ("path", "label")
MAX_LISTED = 20  # rows with paths outside the manifest folder named in the summary
log = logging.getLogger(__name__)
OPTIONAL_COLUMNS = ("split",)
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` pairs with normalised column names, header validated."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise DatasetError(
                    f"{path}: missing column(s) {', '.join(missing)} (header: "
                    f"{','.join(header) or 'empty'}); the first line must be path,label[,split]"
                )
            unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
            if unknown:
                raise DatasetError(
                    f"{path}: unknown column(s) {', '.join(unknown)}; a manifest has the "
                    "columns path,label and optionally split"
                )
            rows: list[tuple[int, dict[str, str]]] = []
            for raw in reader:
                if None in raw:
                    raise DatasetError(
                        f"{path}, line {reader.line_num}: more fields than the "
                        f"{len(header)} columns of the header; quote paths containing commas"
                    )
                row = {
                    k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None
                }
                if not any(row.values()):
                    continue  # blank line
                rows.append((reader.line_num, row))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text file ({exc}); save it as UTF-8 CSV") from exc
    except csv.Error as exc:
        raise DatasetError(f"{path}: malformed CSV ({exc})") from exc
    return rows


def load_manifest(path: Path, options: LoadOptions) -> Dataset:
    """Load a CSV manifest; without a split column (or for splits it never names) the data
    is split seeded and stratified."""
    sidecar = read_sidecar(path)
    rows = _read_rows(path)
    if not rows:
        raise DatasetError(f"{path}: the manifest lists no images; add rows path,label[,split]")
    base = path.parent
    resolved_base = base.resolve()
    outside: list[str] = []
    paths: list[Path] = []
    origins: list[str] = []
    raw_labels: list[str] = []
    split_of: list[str] = []
    for line, row in rows:
        where = f"{path}, line {line}"
        if not row.get("path"):
            raise DatasetError(f"{where}: empty path; every row needs an image path")
        if not row.get("label"):
            raise DatasetError(f"{where}: empty label for {row['path']!r}; every row needs one")
        image = Path(row["path"]).expanduser()
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            raise DatasetError(
                f"{where}: image file {row['path']!r} not found (looked at {image}); paths are "
                "relative to the CSV's folder"
            )
        if "split" in row:
            value = row["split"].lower()
            if value not in SPLIT_VALUES:
                raise DatasetError(
                    f"{where}: split {row['split']!r} is not one of train, val, test"
                )
            split_of.append(SPLIT_VALUES[value])
        if not image.resolve().is_relative_to(resolved_base):
            outside.append(f"line {line}: {row['path']}")
        paths.append(image)
        origins.append(where)
        raw_labels.append(row["label"])
    class_names = sorted(set(raw_labels), key=class_sort_key)
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.asarray([index[v] for v in raw_labels], dtype=np.int64)
    assigned: dict[str, np.ndarray] | None = None
    if split_of:
        names = np.asarray(split_of)
        assigned = {s: np.flatnonzero(names == s) for s in sorted(set(split_of))}
        if "train" not in assigned:
            raise DatasetError(
                f"{path}: the split column names no 'train' rows; mark the training images"
            )
        train_classes = set(labels[assigned["train"]].tolist())
        for name, positions in assigned.items():
            for p in positions:
                if int(labels[p]) not in train_classes:
                    raise DatasetError(
                        f"{origins[p]}: label {raw_labels[p]!r} ({name}) never occurs in the "
                        "train rows; add training images of that class"
                    )
    notes: dict[str, Any] = {}
    if outside:
        # Allowed (shared image stores are common) but listed, so a manifest from someone
        # else cannot quietly read files from anywhere on this machine.
        notes["outside_manifest_folder"] = {"count": len(outside), "rows": outside[:MAX_LISTED]}
        log.warning(
            "%s: %d image path(s) lie outside the manifest's folder %s (first: %s)",
            path,
            len(outside),
            resolved_base,
            outside[0],
        )
    return described_dataset(
        path,
        sidecar,
        options,
        name=path.stem,
        class_names=class_names,
        splits=build_splits(FileImages(paths, origins), labels, assigned, options),
        format="csv",
        notes=notes,
    )
