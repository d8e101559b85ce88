"""Sidecar JSON files: provenance and modality stored next to a dataset file.

``/work/shared/data/medical/<name>.npz`` ships with ``<name>.json`` (modality, class names,
source repository and commit); users can add the same for their own data. Only a handful of
keys are interpreted; the rest is kept as provenance, never trusted for counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metallmix.errors import DatasetError
from metallmix.tools.datasets.base import Dataset, LoadOptions, Split, check_usable


def sidecar_path(path: Path) -> Path | None:
    """``<name>.json`` beside a file or folder, or ``dataset.json`` inside a folder."""
    candidates = [
        path.with_suffix(".json") if path.is_file() else path.parent / f"{path.name}.json"
    ]
    if path.is_dir():
        candidates.append(path / "dataset.json")
    for candidate in candidates:
        if candidate.is_file() and candidate.resolve() != path.resolve():
            return candidate
    return None


def read_sidecar(path: Path) -> tuple[dict[str, Any], Path | None]:
    """The parsed sidecar of ``path`` (empty when there is none) and where it was found."""
    found = sidecar_path(path)
    if found is None:
        return {}, None
    try:
        data = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(
            f"{found}: sidecar JSON cannot be read ({exc}); fix or remove the file"
        ) from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{found}: sidecar JSON must be an object with keys like 'modality'")
    return data, found


def provenance(data: dict[str, Any], sidecar: Path | None, path: Path) -> dict[str, Any]:
    """``source_info``: upstream repo, commit and file from the sidecar, plus the local path."""
    raw = data.get("source")
    source: dict[str, Any] = raw if isinstance(raw, dict) else {}
    info: dict[str, Any] = {"path": str(path)}
    for key, value in (
        ("repo", source.get("repo")),
        ("commit", source.get("commit")),
        ("file", source.get("path") or data.get("file")),
        ("licence", data.get("licence")),
    ):
        if value is not None:
            info[key] = value
    if sidecar is not None:
        info["sidecar"] = str(sidecar)
    return info


def resolve_modality(explicit: str | None, data: dict[str, Any]) -> str:
    """User-given modality first, then the sidecar's, else ``unknown``."""
    for value in (explicit, data.get("modality")):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return "unknown"


def described_dataset(
    path: Path,
    sidecar: tuple[dict[str, Any], Path | None],
    options: LoadOptions,
    *,
    name: str,
    class_names: list[str],
    splits: dict[str, Split],
    format: str,
    notes: dict[str, Any] | None = None,
) -> Dataset:
    """Every loader's last step: the dataset with its sidecar's modality and provenance.

    ``sidecar`` is what :func:`read_sidecar` gave the loader; ``notes`` join the provenance
    (``source_info``); the result is checked usable.
    """
    data, found = sidecar
    dataset = Dataset(
        name=name,
        class_names=class_names,
        splits=splits,
        modality=resolve_modality(options.modality, data),
        source_info={**provenance(data, found, path), **(notes or {})},
        path=path,
        format=format,
    )
    check_usable(dataset)
    return dataset
