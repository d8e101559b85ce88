"""Dataset meta-features: the description of a dataset that the meta-learner generalises over.

The paper's seven (size, classes, imbalance, entropy, resolution, class-size statistics,
modality) plus cheap extras. They are always computed on the *training* split so that a
recommendation never peeks at validation or test data. The model is versioned: records in
the knowledge base carry the version they were computed with. Class-distribution fields are
optional because public meta-datasets often publish only size, classes and resolution;
unknown stays ``None`` (NaN for the meta-learner) rather than an invented value.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

META_FEATURES_VERSION = 1


class MetaFeatures(BaseModel):
    """Meta-features of one dataset (training split)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = META_FEATURES_VERSION
    n_images: int = Field(ge=0, description="number of training images")
    n_classes: int = Field(ge=1, description="number of classes present in training")
    imbalance_ratio: float | None = Field(
        default=None, ge=1.0, description="largest / smallest class size"
    )
    class_entropy: float | None = Field(
        default=None, ge=0.0, description="Shannon entropy of class sizes, bits"
    )
    normalized_entropy: float | None = Field(
        default=None, ge=0.0, le=1.0, description="class entropy / log2(n_classes); 1 = balanced"
    )
    resolution_h: float = Field(gt=0, description="median image height, pixels")
    resolution_w: float = Field(gt=0, description="median image width, pixels")
    channels: int = Field(ge=1, description="image channels (1 grey, 3 RGB)")
    class_size_mean: float = Field(ge=0)
    class_size_std: float | None = Field(default=None, ge=0)
    class_size_min: int | None = Field(default=None, ge=0)
    class_size_max: int | None = Field(default=None, ge=0)
    modality: str = Field(default="unknown", description="imaging modality, user-given")
    images_per_class: float = Field(ge=0, description="n_images / n_classes")
    min_class_fraction: float | None = Field(
        default=None, ge=0, le=1, description="smallest class share"
    )
    pixel_mean: float | None = Field(default=None, description="mean intensity in [0, 1]")
    pixel_std: float | None = Field(default=None, description="intensity std in [0, 1]")

    @property
    def resolution(self) -> float:
        """Geometric mean of median height and width, a single size figure for reports."""
        return float((self.resolution_h * self.resolution_w) ** 0.5)

    def numeric(self) -> dict[str, float]:
        """Numeric view for the meta-learner and retrieval (modality excluded, None -> NaN)."""
        out: dict[str, float] = {}
        for name, value in self.model_dump().items():
            if name in {"version", "modality"}:
                continue
            out[name] = float("nan") if value is None else float(value)
        return out
