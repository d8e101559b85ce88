"""``metallmix features PATH``: the meta-features a recommendation is based on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from metallmix.cli.output import JsonOption, emit, progress, stderr
from metallmix.tools.datasets import load_dataset
from metallmix.tools.datasets.card import DatasetCard, read_card, write_card
from metallmix.tools.metafeatures import (
    MetaFeatures,
    card_from_dataset,
    compute_meta_features,
    meta_feature_steps,
)

_LABELS = {
    "n_images": "training images",
    "n_classes": "classes",
    "imbalance_ratio": "imbalance ratio (largest/smallest)",
    "class_entropy": "class entropy (bits)",
    "normalized_entropy": "normalised entropy (1 = balanced)",
    "resolution_h": "median height (px)",
    "resolution_w": "median width (px)",
    "channels": "channels",
    "class_size_mean": "class size mean",
    "class_size_std": "class size std",
    "class_size_min": "class size min",
    "class_size_max": "class size max",
    "modality": "modality",
    "images_per_class": "images per class",
    "min_class_fraction": "smallest class share",
    "pixel_mean": "pixel mean [0,1]",
    "pixel_std": "pixel std [0,1]",
    "version": "meta-features version",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def features(
    path: Path = typer.Argument(
        ..., metavar="DATA", help="Dataset (.npz, .csv manifest, folder) or card (.json)."
    ),
    modality: str | None = typer.Option(
        None, "--modality", help="Imaging modality (overrides the sidecar or card)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for carved splits and the pixel sample."),
    card_out: Path | None = typer.Option(
        None, "--card-out", help="Also write the dataset card (JSON, no images) to this file."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Meta-features of a dataset's training split (or of a dataset card)."""
    result: dict[str, Any] = {"path": str(path)}
    card: DatasetCard
    mf: MetaFeatures
    if path.suffix.lower() == ".json":
        card = read_card(path)
        mf = compute_meta_features(card, modality=modality)
        result.update(dataset=card.name, format="card", class_names=card.class_names)
    else:
        dataset = load_dataset(path, modality=modality, seed=seed)
        steps = meta_feature_steps(dataset)
        with progress(f"meta-features of {dataset.name}", steps) as advance:
            mf = compute_meta_features(dataset, modality=modality, seed=seed, on_progress=advance)
        train = dataset.split("train")
        result.update(
            dataset=dataset.name,
            format=dataset.format,
            class_names=dataset.class_names,
            splits={name: len(split) for name, split in dataset.splits.items()},
            skipped_images=len(train.skipped),
            source_info=dataset.source_info,
        )
        card = card_from_dataset(dataset, mf)
    if card_out is not None:
        written = write_card(card, card_out)
        result["card"] = str(written)
        stderr.print(f"dataset card written to {written}")
    result["meta_features"] = mf.model_dump()

    def render(console: Console) -> None:
        table = Table(title=f"Meta-features of {result['dataset']} (training split)")
        table.add_column("feature")
        table.add_column("value", justify="right")
        for name, value in mf.model_dump().items():
            table.add_row(_LABELS.get(name, name), _fmt(value))
        console.print(table)
        if "splits" in result:
            sizes = ", ".join(f"{k} {v}" for k, v in result["splits"].items())
            console.print(f"splits: {sizes}; classes: {', '.join(result['class_names'])}")
        outside = (result.get("source_info") or {}).get("outside_manifest_folder")
        if outside:
            console.print(
                f"[yellow]{outside['count']} image path(s) outside the manifest's folder:[/] "
                + ", ".join(outside["rows"])
            )
        for note in (result.get("source_info") or {}).get("notes", []):
            console.print(f"[yellow]note:[/] {note}")
        if result.get("skipped_images"):
            console.print(f"[yellow]{result['skipped_images']} unreadable images skipped[/]")

    emit(result, as_json, render)


def register(app: typer.Typer) -> None:
    app.command("features")(features)
