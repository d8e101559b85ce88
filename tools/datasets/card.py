"""Dataset cards: a dataset described without its images.

A card carries exactly what meta-features need (class names, per-class training counts,
image size, channels, modality), so a recommendation can be made before the data is
available, shared across sites that cannot share images, or demoed zero-shot. Cards are
plain JSON that people write by hand, hence strict validation with messages naming the field.
The sidecars shipped with ``../shared/data/medical`` carry the same facts and are accepted too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from metallmix.atomic import write_text
from metallmix.errors import DatasetError

CARD_VERSION = 1
# The largest JPEG side; bigger images (whole slides) are tiled before classification, and a
# card claiming 10^9 px would only mislead the meta-learner.
MAX_IMAGE_SIDE = 65_535


class DatasetCard(BaseModel):
    """What a dataset looks like, without its images (counts are of the training split)."""

    model_config = ConfigDict(extra="forbid")

    card_version: Literal[1] = 1
    name: str = Field(min_length=1, description="dataset name, used as its key in the KB")
    modality: str = Field(default="unknown", description="imaging modality, e.g. 'chest X-ray'")
    class_names: list[str] = Field(min_length=2, description="class names, in label order")
    train_counts: dict[str, int] = Field(
        description="training images per class name; keys are exactly the class names"
    )
    image_height: int = Field(
        gt=0, le=MAX_IMAGE_SIDE, description="typical (median) image height, pixels"
    )
    image_width: int = Field(
        gt=0, le=MAX_IMAGE_SIDE, description="typical (median) image width, pixels"
    )
    channels: Literal[1, 3] = Field(description="1 for greyscale, 3 for colour")
    pixel_mean: float | None = Field(default=None, ge=0, le=1)
    pixel_std: float | None = Field(default=None, ge=0, le=1)
    description: str | None = None
    source: dict[str, Any] = Field(default_factory=dict, description="provenance, free form")

    @model_validator(mode="after")
    def _counts_match_classes(self) -> DatasetCard:
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names repeat a name; each class must appear once")
        keys, names = set(self.train_counts), set(self.class_names)
        if keys != names:
            missing, extra = sorted(names - keys), sorted(keys - names)
            raise ValueError(
                "train_counts keys must equal class_names"
                + (f"; missing counts for {missing}" if missing else "")
                + (f"; counts for unknown classes {extra}" if extra else "")
            )
        negative = {k: v for k, v in self.train_counts.items() if v < 0}
        if negative:
            raise ValueError(f"train_counts must be non-negative, got {negative}")
        if sum(1 for v in self.train_counts.values() if v > 0) < 2:
            raise ValueError("at least two classes need training images")
        return self

    def counts(self) -> list[int]:
        """Training counts in class order."""
        return [self.train_counts[c] for c in self.class_names]

    @classmethod
    def from_sidecar(cls, data: dict[str, Any], path: Path) -> DatasetCard:
        """A card from a shared-data sidecar (``counts_per_split.train``, ``image_size``)."""
        try:
            train = data["counts_per_split"]["train"]
            height, width = data["image_size"]
            return cls(
                name=str(data.get("short_name") or path.stem),
                modality=str(data.get("modality") or "unknown"),
                class_names=[str(c) for c in data["class_names"]],
                train_counts={str(c): int(train[c]) for c in data["class_names"]},
                image_height=int(height),
                image_width=int(width),
                channels=int(data["channels"]),
                source={k: data[k] for k in ("source", "licence", "file") if k in data},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{path}: sidecar lacks what a card needs ({exc}); it needs class_names, "
                "counts_per_split.train, image_size and channels"
            ) from exc


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "card"
        parts.append(f"{where}: {err['msg']}")
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(parts) + more


def read_card(path: str | Path) -> DatasetCard:
    """Read and validate a card (or a shared-data sidecar) from JSON."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset card; check the path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc}); fix the card") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a dataset card is a JSON object with name, class_names, ...")
    if "counts_per_split" in data and "train_counts" not in data:
        return DatasetCard.from_sidecar(data, path)
    try:
        return DatasetCard.model_validate(data)
    except ValidationError as exc:
        raise DatasetError(f"{path}: invalid dataset card: {_format_validation(exc)}") from exc


def write_card(card: DatasetCard, path: str | Path) -> Path:
    """Write ``card`` as JSON atomically (temp file + rename), so a crash leaves no half card."""
    return write_text(Path(path).expanduser(), card.model_dump_json(indent=2) + "\n")
