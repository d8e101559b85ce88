"""Importer for the public Quick-Tune meta-dataset (ICLR 2024, BSD-3).

Quick-Tune fine-tuned pretrained timm models with sampled hyperparameters on Meta-Album
datasets and published, per version (``micro``, ``mini``, ``extended``)::

    <version>/table.csv              one row per run, categorical columns one-hot
    <version>/curves/perf.json       {dataset: {run_id: [val top-1 % per epoch]}} + "info"
    <version>/curves/cost.json       {dataset: {run_id: [seconds per epoch]}}
    <version>/meta/descriptors.json  {dataset: [n_samples, n_classes, resolution, channels]}

The table does not say which dataset a run belongs to; the curves do. Fidelity: Quick-Tune's
multi-fidelity search stopped many runs after a few epochs, so every record carries
``epochs_run`` and the dataset's ``epoch_budget`` (its longest curve); a run below budget is
not a finished run (``Outcomes.completed``) and the meta-learner's final-performance target
ignores it. Values within :data:`BOUND_TOLERANCE` of a bound are clipped and counted.
Everything is read and validated before a single record is returned, so a malformed file
never leaves a KB half-imported: the caller adds the whole list in one transaction.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from metallmix.errors import ImportFormatError
from metallmix.tools.kb.records import Hyperparameters, Outcomes, Provenance, RunRecord, Scalar
from metallmix.tools.metafeatures import MetaFeatures

# Meta-Album collects natural-image datasets (birds, plants, textures, remote sensing...),
# none of them medical; tagging them keeps the meta-learner from treating them as X-rays.
QUICKTUNE_MODALITY = "natural-image"
QUICKTUNE_PUBLIC_SOURCE = "Quick-Tune (ICLR 2024) meta-dataset, BSD-3"
QUICKTUNE_VERSIONS = ("micro", "mini", "extended")

TABLE = "table.csv"
PERF = "curves/perf.json"
COST = "curves/cost.json"
DESCRIPTORS = "meta/descriptors.json"
LAYOUT = (TABLE, PERF, COST, DESCRIPTORS)

# Quick-Tune names -> typed core of Hyperparameters; everything else goes to ``extra``.
_CORE_NUMERIC = {
    "lr": "lr",
    "batch_size": "batch_size",
    "weight_decay": "weight_decay",
    "smoothing": "label_smoothing",
    "drop": "dropout",
}
_CORE_CATEGORICAL = {"opt": "optimizer", "sched": "scheduler", "data_augmentation": "augmentation"}
# 0/1 switches in the table that are booleans in the training script.
_BOOLEAN_FLAGS = frozenset({"amp", "linear_probing", "stoch_norm"})
_INFO_KEY = "info"


@dataclass(frozen=True)
class _Row:
    """One parsed table row: hyperparameters in native types, model decoded."""

    run_id: str
    line: int
    model: str
    hyperparameters: Hyperparameters


def find_version_dir(root: Path) -> Path:
    """The folder holding ``table.csv``: ``root`` itself or its single version subfolder.

    An archive unpacks to a folder of versions; pointing at it is accepted only when one
    version is there, because the versions share runs and importing several duplicates them.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise ImportFormatError(
            f"Quick-Tune folder {root} does not exist; give the folder holding table.csv, "
            "curves/ and meta/ (e.g. .../quicktune/extended), or fetch it with "
            "`metallmix kb download-quicktune`"
        )
    if not root.is_dir():
        raise ImportFormatError(f"{root} is a file; give the Quick-Tune version folder")
    if (root / TABLE).is_file():
        return root
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and (p / TABLE).is_file())
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(str(p) for p in candidates)
        raise ImportFormatError(
            f"{root} holds several Quick-Tune versions ({names}); import one of them"
        )
    raise ImportFormatError(
        f"{root} is not a Quick-Tune folder: {TABLE} is missing; expected the layout "
        f"{', '.join(LAYOUT)}"
    )


def _load_json(path: Path, rel: str) -> Any:
    if not path.is_file():
        raise ImportFormatError(f"{path} is missing; a Quick-Tune folder needs {', '.join(LAYOUT)}")
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ImportFormatError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            f"restore {rel} from the Quick-Tune archive"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFormatError(f"cannot read {path}: {exc}") from exc


def _number(text: str) -> int | float | None:
    """CSV cell -> int when integral text, float otherwise, None when empty/NaN."""
    text = text.strip()
    if text == "" or text.lower() == "nan":
        return None
    try:
        return int(text)
    except ValueError:
        value = float(text)  # ValueError propagates to the caller, which names the cell
        return None if math.isnan(value) else value


def _category(text: str) -> Scalar:
    """A one-hot value back to a native value ('None' -> None, '3' -> 3); lists stay text."""
    if text == "None":
        return None
    if text in {"True", "False"}:
        return text == "True"
    try:
        return _number(text)
    except ValueError:
        return text


def _parse_table(path: Path) -> dict[str, _Row]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImportFormatError(f"cannot read {path}: {exc}") from exc
    if len(rows) < 2:
        raise ImportFormatError(f"{path} has no runs (header only or empty)")
    header = rows[0]
    columns = header[1:]
    groups: dict[str, list[tuple[int, str]]] = {}
    plain: list[tuple[int, str]] = []
    for index, name in enumerate(columns, start=1):
        if name.startswith("cat:"):
            parts = name.split(":", 2)
            if len(parts) != 3 or not parts[1]:
                raise ImportFormatError(
                    f"{path}: column {name!r} is not of the form cat:<name>:<value>"
                )
            groups.setdefault(parts[1], []).append((index, parts[2]))
        else:
            plain.append((index, name))
    if "model" not in groups:
        raise ImportFormatError(
            f"{path} has no cat:model:<name> columns; is it a Quick-Tune table?"
        )

    parsed: dict[str, _Row] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ImportFormatError(
                f"{path} line {line}: {len(row)} cells, the header has {len(header)}"
            )
        run_id = row[0].strip()
        if not run_id:
            raise ImportFormatError(f"{path} line {line}: empty run id in the first column")
        if run_id in parsed:
            raise ImportFormatError(
                f"{path} line {line}: run id {run_id} repeats line {parsed[run_id].line}"
            )
        values: dict[str, Scalar] = {}
        for index, name in plain:
            try:
                value: Scalar = _number(row[index])
            except ValueError as exc:
                raise ImportFormatError(
                    f"{path} line {line}, column {name!r}: {row[index]!r} is not a number"
                ) from exc
            if name in _BOOLEAN_FLAGS and value in (0, 1):
                value = bool(value)
            values[name] = value
        for group, members in groups.items():
            hot = []
            for index, value_text in members:
                cell = row[index].strip()
                if cell in {"1", "1.0"}:
                    hot.append(value_text)
                elif cell not in {"0", "0.0"}:
                    raise ImportFormatError(
                        f"{path} line {line}, column 'cat:{group}:{value_text}': one-hot cell "
                        f"is {cell!r}, expected 0 or 1"
                    )
            if len(hot) != 1:
                raise ImportFormatError(
                    f"{path} line {line}: {len(hot)} of the cat:{group}:* columns are 1, "
                    "exactly one must be"
                )
            values[f"cat:{group}"] = hot[0]
        parsed[run_id] = _Row(run_id, line, *_split_hyperparameters(path, line, values))
    return parsed


def _split_hyperparameters(
    path: Path, line: int, values: dict[str, Scalar]
) -> tuple[str, Hyperparameters]:
    model = str(values.pop("cat:model"))
    core: dict[str, Any] = {}
    extra: dict[str, Scalar] = {}
    for name, value in values.items():
        if name.startswith("cat:"):
            group = name[4:]
            text = str(value)
            if group in _CORE_CATEGORICAL:
                # 'None' here means "none used", a known choice, not a missing value.
                core[_CORE_CATEGORICAL[group]] = "none" if text == "None" else text
            else:
                extra[group] = _category(text)
        elif name in _CORE_NUMERIC:
            core[_CORE_NUMERIC[name]] = value
        else:
            extra[name] = value
    try:
        return model, Hyperparameters(**core, extra=extra)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ImportFormatError(
            f"{path} line {line}: invalid hyperparameters ({problems})"
        ) from exc


# Published curves carry floating-point noise at the bounds (a real file holds
# ``100.00000035874896`` %): a value this close to a bound is the bound, clipped and counted;
# anything further out is a broken file and stays an error.
BOUND_TOLERANCE = 1e-6


@dataclass
class ClipCount:
    """How many curve values were clipped onto a bound, and the first one (for the report)."""

    count: int = 0
    first: str | None = None

    def add(self, where: str, value: float, bound: float) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{where}: {value!r} -> {bound:g}"


def _in_bounds(number: float, upper: float | None) -> float | None:
    """``number`` itself, the bound it is within tolerance of, or None when out of range."""
    if math.isnan(number):
        return None
    if number < 0:
        return 0.0 if number >= -BOUND_TOLERANCE else None
    if upper is not None and number > upper:
        return upper if number <= upper + BOUND_TOLERANCE else None
    return number


def _curves(
    data: Any, path: Path, kind: str, upper: float | None, clipped: ClipCount | None = None
) -> dict[str, dict[str, list[float]]]:
    if not isinstance(data, dict):
        raise ImportFormatError(
            f"{path}: expected an object {{dataset: {{run_id: [{kind} per epoch]}}}}, "
            f"found {type(data).__name__}"
        )
    out: dict[str, dict[str, list[float]]] = {}
    for dataset, runs in data.items():
        if dataset == _INFO_KEY:
            continue
        if not isinstance(runs, dict):
            raise ImportFormatError(
                f"{path}, dataset {dataset!r}: expected {{run_id: [...]}}, found "
                f"{type(runs).__name__}"
            )
        curves: dict[str, list[float]] = {}
        for run_id, curve in runs.items():
            where = f"{path}, dataset {dataset!r}, run {run_id}"
            if not isinstance(curve, list) or not curve:
                raise ImportFormatError(f"{where}: expected a non-empty list of {kind} per epoch")
            values: list[float] = []
            for epoch, value in enumerate(curve, start=1):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ImportFormatError(f"{where}, epoch {epoch}: {value!r} is not a number")
                number = float(value)
                kept = _in_bounds(number, upper)
                if kept is None:
                    bound = f"[0, {upper:g}]" if upper is not None else ">= 0"
                    raise ImportFormatError(
                        f"{where}, epoch {epoch}: {kind} {value!r} is outside {bound}"
                    )
                if kept != number and clipped is not None:
                    clipped.add(f"{where}, epoch {epoch}", number, kept)
                values.append(kept)
            curves[str(run_id)] = values
        out[str(dataset)] = curves
    return out


def _descriptors(data: Any, path: Path) -> dict[str, MetaFeatures]:
    if not isinstance(data, dict):
        raise ImportFormatError(
            f"{path}: expected {{dataset: [n_samples, n_classes, resolution, channels]}}"
        )
    out: dict[str, MetaFeatures] = {}
    for dataset, values in data.items():
        if (
            not isinstance(values, list)
            or len(values) != 4
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values)
        ):
            raise ImportFormatError(
                f"{path}, dataset {dataset!r}: expected [n_samples, n_classes, resolution, "
                f"channels] as four numbers, found {values!r}"
            )
        n_images, n_classes, resolution, channels = values
        try:
            per_class = float(n_images) / float(n_classes)
            out[str(dataset)] = MetaFeatures(
                n_images=int(n_images),
                n_classes=int(n_classes),
                resolution_h=float(resolution),
                resolution_w=float(resolution),
                channels=int(channels),
                class_size_mean=per_class,
                images_per_class=per_class,
                modality=QUICKTUNE_MODALITY,
            )
        except (ValidationError, ZeroDivisionError) as exc:
            raise ImportFormatError(
                f"{path}, dataset {dataset!r}: unusable descriptors {values!r} ({exc})"
            ) from exc
    return out


@dataclass(frozen=True)
class QuickTuneSource:
    """A validated Quick-Tune version folder, ready to turn into records."""

    root: Path
    version_dir: Path
    version: str
    rows: dict[str, _Row]
    perf: dict[str, dict[str, list[float]]]
    cost: dict[str, dict[str, list[float]]]
    meta: dict[str, MetaFeatures]
    created_at: datetime
    clipped: int = 0
    clipped_example: str | None = None

    def epoch_budget(self, dataset: str) -> int:
        """The dataset's epoch budget: its longest curve (Quick-Tune's multi-fidelity search
        stops most runs early; only a run that reached the budget is a finished run)."""
        return max(len(curve) for curve in self.perf[dataset].values())

    def completed_count(self, datasets: Iterable[str] | None = None) -> int:
        return sum(
            len(curve) >= self.epoch_budget(d)
            for d in self.select(datasets)
            for curve in self.perf[d].values()
        )

    @property
    def datasets(self) -> list[str]:
        return sorted(self.perf)

    def select(self, datasets: Iterable[str] | None) -> list[str]:
        """The requested datasets, checked against those present."""
        if datasets is None:
            return self.datasets
        chosen = [d.strip() for d in datasets if d.strip()]
        unknown = [d for d in chosen if d not in self.perf]
        if unknown:
            raise ImportFormatError(
                f"dataset(s) {', '.join(unknown)} not in {self.version_dir / PERF}; "
                f"available: {', '.join(self.datasets)}"
            )
        return sorted(set(chosen))

    def count(self, datasets: Iterable[str] | None = None) -> int:
        return sum(len(self.perf[d]) for d in self.select(datasets))

    def records(
        self,
        datasets: Iterable[str] | None = None,
        on_record: Callable[[int], None] | None = None,
    ) -> list[RunRecord]:
        """One RunRecord per (dataset, run); ``on_record(1)`` after each (progress bars)."""
        table_rel = _relative(self.version_dir / TABLE, self.root)
        out: list[RunRecord] = []
        for dataset in self.select(datasets):
            budget = self.epoch_budget(dataset)
            for run_id, curve in self.perf[dataset].items():
                row = self.rows[run_id]
                seconds = self.cost[dataset][run_id]
                out.append(
                    RunRecord(
                        run_id=f"quicktune:{self.version}:{dataset}:{run_id}",
                        source="quicktune",
                        provenance=Provenance(
                            public_source=QUICKTUNE_PUBLIC_SOURCE,
                            file=table_rel,
                            row=run_id,
                            notes={"version": self.version, "table_line": row.line},
                        ),
                        dataset=dataset,
                        dataset_group=dataset,
                        meta_features=self.meta[dataset],
                        model=row.model,
                        pretrained=True,
                        hyperparameters=row.hyperparameters,
                        outcomes=Outcomes(
                            val_accuracy=curve[-1] / 100.0,
                            learning_curve=[v / 100.0 for v in curve],
                            epochs_run=len(curve),
                            epoch_budget=budget,
                            train_seconds=float(sum(seconds)),
                            seconds_per_epoch=statistics.fmean(seconds),
                        ),
                        status="ok",
                        created_at=self.created_at,
                    )
                )
                if on_record is not None:
                    on_record(1)
        return out


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _version_name(perf_raw: Any, version_dir: Path) -> str:
    """The version perf.json's ``info`` declares, else the folder name (copies get renamed)."""
    info = perf_raw.get(_INFO_KEY) if isinstance(perf_raw, dict) else None
    declared = info.get("version") if isinstance(info, dict) else None
    if isinstance(declared, str) and declared.strip() and ":" not in declared:
        return declared.strip()
    return version_dir.name


def read_quicktune(root: Path) -> QuickTuneSource:
    """Read and cross-check every file of the layout; raise on the first inconsistency."""
    root = Path(root).expanduser()
    version_dir = find_version_dir(root)
    for rel in LAYOUT:
        if not (version_dir / rel).is_file():
            raise ImportFormatError(
                f"{version_dir / rel} is missing; a Quick-Tune folder needs {', '.join(LAYOUT)}"
            )
    perf_path, cost_path, meta_path = (version_dir / p for p in (PERF, COST, DESCRIPTORS))
    perf_raw = _load_json(perf_path, PERF)
    clipped = ClipCount()
    perf = _curves(perf_raw, perf_path, "top-1 %", 100.0, clipped)
    cost = _curves(_load_json(cost_path, COST), cost_path, "seconds", None, clipped)
    meta = _descriptors(_load_json(meta_path, DESCRIPTORS), meta_path)
    rows = _parse_table(version_dir / TABLE)

    if not perf:
        raise ImportFormatError(f"{perf_path} holds no dataset")
    seen: dict[str, str] = {}
    for dataset, runs in perf.items():
        if dataset not in meta:
            raise ImportFormatError(
                f"dataset {dataset!r} has curves in {perf_path} but no entry in {meta_path}; "
                "add its [n_samples, n_classes, resolution, channels]"
            )
        for run_id, curve in runs.items():
            if run_id not in rows:
                raise ImportFormatError(
                    f"{perf_path}: run {run_id} of dataset {dataset!r} has no row in "
                    f"{version_dir / TABLE}"
                )
            if run_id in seen:
                raise ImportFormatError(
                    f"{perf_path}: run {run_id} appears under both {seen[run_id]!r} and "
                    f"{dataset!r}; a run belongs to one dataset"
                )
            seen[run_id] = dataset
            seconds = cost.get(dataset, {}).get(run_id)
            if seconds is None:
                raise ImportFormatError(
                    f"{cost_path}: no cost curve for run {run_id} of dataset {dataset!r}"
                )
            if len(seconds) != len(curve):
                raise ImportFormatError(
                    f"{cost_path}: run {run_id} of dataset {dataset!r} has {len(seconds)} "
                    f"epochs of cost but {len(curve)} of accuracy in {perf_path}"
                )
    orphans = [rid for rid in rows if rid not in seen]
    if orphans:
        first = rows[orphans[0]]
        raise ImportFormatError(
            f"{version_dir / TABLE} line {first.line}: run {first.run_id} has no curve in "
            f"{perf_path} ({len(orphans)} such row(s)); remove those rows or restore the curves"
        )
    mtime = (version_dir / TABLE).stat().st_mtime
    return QuickTuneSource(
        root=root,
        version_dir=version_dir,
        version=_version_name(perf_raw, version_dir),
        rows=rows,
        perf=perf,
        cost=cost,
        meta=meta,
        # The table's modification time: deterministic for one copy, so re-imports and
        # content hashes do not change with the clock.
        created_at=datetime.fromtimestamp(mtime, tz=UTC),
        clipped=clipped.count,
        clipped_example=clipped.first,
    )


def import_quicktune(root: Path, datasets: list[str] | None = None) -> list[RunRecord]:
    """All runs of a Quick-Tune version folder (or a chosen subset of its datasets).

    Pure: reads files, writes nothing. Raises ImportFormatError naming the file, row or key
    on any malformed input, before returning anything.
    """
    return read_quicktune(root).records(datasets)
