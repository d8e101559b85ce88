"""Explicit, versioned feature encoding of (dataset meta-features, model, hyperparameters).

The meta-learner, SHAP explanations and the cache all depend on the exact columns, so the
encoding is a plain JSON-serialisable object fitted on the training rows and stored beside
the model. Bump :data:`ENCODING_VERSION` whenever the meaning of a column changes; cached
models built with another version are then refitted instead of silently misread.

Unknown values at predict time are expected (the KB mixes Quick-Tune's big pretrained
transformers with our tiny CPU CNNs): a category never seen in training falls into
``__other__``, and a model is also described by family, parameter count and architecture
type, so an unseen model still lands near its relatives. Missing numbers stay NaN, which
XGBoost routes natively.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.meta.landmarks import LANDMARK_COLUMNS, landmark_columns
from metallmix.tools.meta.level import LEVEL_GROUP
from metallmix.tools.metafeatures import MetaFeatures

# 2: optional meta-features (config-only), completed runs only
# 3: meta-features on the one log scale retrieval also uses (scale_meta_feature)
# 4: resolution as the run trains at it: min(native resolution, the run's image_size)
# 5: landmarks (lm_ columns: the candidate's own, pixels, best backbone), NaN without images
ENCODING_VERSION = 5
OTHER = "__other__"
MAX_CATEGORIES = 32

# Approximate parameter counts (millions) of the models in both shipped search spaces,
# from timm's model cards; lets an unseen-but-listed model be placed by size.
MODEL_PARAMS_M: dict[str, float] = {
    "resnet10t": 5.4,
    "resnet18": 11.7,
    "resnet50": 25.6,
    "mobilenetv3_small_100": 2.5,
    "mobilenetv3_large_100": 5.5,
    "efficientnet_b0": 5.3,
    "efficientnet_lite0": 4.7,
    "efficientnet_lite1": 5.4,
    "efficientnet_lite2": 6.1,
    "convnext_atto": 3.7,
    "convnext_tiny": 28.6,
    "regnetx_002": 2.7,
    "lcnet_050": 1.9,
    "vit_tiny_patch16_224": 5.7,
    "vit_small_patch16_224": 22.1,
    "beit_base_patch16_384": 86.7,
    "beit_large_patch16_512": 305.7,
    "convnext_small_384_in22ft1k": 50.2,
    "deit3_small_patch16_384_in21ft1k": 22.2,
    "dla46x_c": 1.1,
    "edgenext_small": 5.6,
    "edgenext_x_small": 2.3,
    "edgenext_xx_small": 1.3,
    "mobilevit_xs": 2.3,
    "mobilevit_xxs": 1.3,
    "mobilevitv2_075": 2.9,
    "swinv2_base_window12to24_192to384_22kft1k": 87.9,
    "tf_efficientnet_b4_ns": 19.3,
    "tf_efficientnet_b6_ns": 43.0,
    "tf_efficientnet_b7_ns": 66.3,
    "volo_d1_384": 26.8,
    "volo_d3_448": 86.6,
    "volo_d4_448": 193.4,
    "volo_d5_448": 295.5,
    "volo_d5_512": 296.1,
    "xcit_nano_12_p8_384_dist": 3.1,
    "xcit_small_12_p8_384_dist": 26.2,
    "xcit_tiny_12_p8_384_dist": 6.7,
    "xcit_tiny_24_p8_384_dist": 12.1,
}

_TRANSFORMER_FAMILIES = {"vit", "deit", "beit", "swin", "xcit", "volo", "cait", "eva", "mobilevit"}
_HYBRID_FAMILIES = {"edgenext", "mobilevitv", "levit", "coat"}


def model_family(name: str) -> str:
    """'tf_efficientnet_b4_ns' -> 'efficientnet', 'resnet10t' -> 'resnet', 'deit3_s' -> 'deit'."""
    base = name.lower().split(".")[0]
    base = re.sub(r"^(tf_|timm_|hf_)", "", base)
    match = re.match(r"[a-z]+", base)
    family = match.group(0) if match else base
    return family or "unknown"


def model_arch(name: str) -> float:
    """1 transformer, 0.5 hybrid, 0 convolutional: coarse but known for every timm name."""
    family = model_family(name)
    if family in _HYBRID_FAMILIES:
        return 0.5
    if family in _TRANSFORMER_FAMILIES:
        return 1.0
    return 0.0


def model_params_m(name: str) -> float:
    return MODEL_PARAMS_M.get(name.split(".")[0], float("nan"))


# Meta-features that span orders of magnitude (counts, sizes, ratios) are read on one log
# scale, log10(1 + x), by the meta-learner (and so SHAP), retrieval and the nearest-dataset
# baseline alike. Trees do not care about monotone transforms; distances and people do.
LOG_META_FEATURES = frozenset(
    {
        "n_images",
        "n_classes",
        "imbalance_ratio",
        "class_size_mean",
        "class_size_std",
        "class_size_min",
        "class_size_max",
        "images_per_class",
        "resolution_h",
        "resolution_w",
    }
)
# The pipeline resizes every image to the run's image_size: a 600 px photo trained at 64 px
# is a 64 px image to the model. So the learner reads the resolution the run *saw*.
RESOLUTION_COLUMNS = frozenset({"mf_resolution_h", "mf_resolution_w"})


def seen_resolution(native: np.ndarray, train_size: np.ndarray) -> np.ndarray:
    """min(native resolution, training image size); the native value where the size is
    unknown (NaN), NaN where the native resolution is unknown."""
    native = np.asarray(native, dtype=float)
    size = np.asarray(train_size, dtype=float)
    return np.where(np.isfinite(size), np.fmin(native, size) + 0 * native, native)


# Hyperparameters on a log scale (the meta-learner's columns).
_LOG10 = {"hp_lr", "hp_weight_decay"}
_LOG2 = {"hp_batch_size"}
_SKIP = {"mf_version", "hp_x_opt_betas"}
# Meta-features and core hyperparameters are always encoded, even when constant in the KB
# (a candidate can still differ from it).
_MF_COLUMNS = [
    f"mf_{k}" for k in MetaFeatures.model_fields if k not in {"version", "modality", "landmarks"}
]
_HP_CORE_NUMERIC = [
    "hp_lr",
    "hp_batch_size",
    "hp_weight_decay",
    "hp_epochs",
    "hp_image_size",
    "hp_label_smoothing",
    "hp_dropout",
]
_HP_CORE_CATEGORICAL = ["hp_optimizer", "hp_scheduler", "hp_augmentation"]


def candidate_row(
    meta_features: MetaFeatures, model: str, hp: Hyperparameters, *, pretrained: bool = False
) -> dict[str, Any]:
    """The frame row of a hypothetical run, with the same columns as ``records_to_frame``."""
    row: dict[str, Any] = {
        "model": model,
        "pretrained": pretrained,
        "mf_modality": meta_features.modality,
    }
    row.update({f"mf_{k}": v for k, v in meta_features.numeric().items()})
    row["landmarks"] = meta_features.landmarks
    row.update(landmark_columns(meta_features.landmarks, model, pretrained))
    row.update({f"hp_{k}": v for k, v in hp.flat().items()})
    return row


def candidates_frame(
    meta_features: MetaFeatures,
    configs: Sequence[tuple[str, Hyperparameters]],
    *,
    pretrained: bool | Sequence[bool] = False,
) -> pd.DataFrame:
    flags = [pretrained] * len(configs) if isinstance(pretrained, bool) else list(pretrained)
    return pd.DataFrame(
        [
            candidate_row(meta_features, model, hp, pretrained=flag)
            for (model, hp), flag in zip(configs, flags, strict=True)
        ]
    )


def _to_float(series: pd.Series) -> np.ndarray:
    values = series.map(lambda v: float(v) if isinstance(v, bool) else v)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def _is_numeric_column(series: pd.Series) -> bool:
    values = [v for v in series.tolist() if v is not None and not _isnan(v)]
    return all(isinstance(v, bool | int | float | np.integer | np.floating) for v in values)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def scale_meta_feature(name: str, value: float) -> float:
    """The one scaling of a meta-feature's value (``name`` as in :class:`MetaFeatures`)."""
    if name in LOG_META_FEATURES and not math.isnan(value):
        return math.log10(max(value, 0.0) + 1.0)
    return value


def _scaled(name: str, values: np.ndarray) -> np.ndarray:
    if name.startswith("mf_") and name[3:] in LOG_META_FEATURES:
        return np.log10(np.maximum(values, 0.0) + 1.0)  # NaN (unknown) stays NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        if name in _LOG10:
            out = np.log10(np.where(values > 0, values, np.nan))
            # weight decay 0 is a real choice: place it below the smallest positive value
            return np.where((values == 0) & (name == "hp_weight_decay"), -9.0, out)
        if name in _LOG2:
            return np.log2(np.where(values > 0, values, np.nan))
    return values


class FeatureEncoder(BaseModel):
    """Fitted encoding: which columns, which categories, and KB reference values."""

    model_config = ConfigDict(extra="forbid")

    version: int = ENCODING_VERSION
    numeric: list[str] = Field(default_factory=list, description="frame columns used as numbers")
    categorical: dict[str, list[str]] = Field(
        default_factory=dict, description="frame column -> known categories (+ __other__)"
    )
    references: dict[str, str | float] = Field(
        default_factory=dict, description="group -> KB median (numbers) or mode (categories)"
    )
    meta_features: bool = Field(
        default=True,
        description="False: no dataset column at all (the dataset-blind 'config-only' model)",
    )

    @classmethod
    def fit(cls, frame: pd.DataFrame, *, meta_features: bool = True) -> FeatureEncoder:
        """Decide columns and categories from the training rows only.

        ``meta_features=False`` leaves out every ``mf_`` column (modality included) and the
        landmarks (``lm_``): the model then cannot tell datasets apart, which is the baseline
        meta-features must beat.
        """
        # Landmarks only when some training run has them: a KB without images (Quick-Tune)
        # then encodes exactly as before landmarks existed (same columns, same trees).
        measured = any(c in frame and frame[c].notna().any() for c in LANDMARK_COLUMNS)
        dataset = [*_MF_COLUMNS, *(LANDMARK_COLUMNS if measured else ())] if meta_features else []
        numeric = dataset + list(_HP_CORE_NUMERIC)
        categorical_cols = [
            *(["mf_modality"] if meta_features else []),
            "model",
            "model_family",
            *_HP_CORE_CATEGORICAL,
        ]
        extras = sorted(c for c in frame.columns if c.startswith("hp_x_") and c not in _SKIP)
        for col in extras:
            if frame[col].isna().all():
                continue
            if _is_numeric_column(frame[col]):
                numeric.append(col)
            else:
                categorical_cols.append(col)
        work = _with_model_columns(frame)
        categorical: dict[str, list[str]] = {}
        for col in categorical_cols:
            counts = work[col].dropna().astype(str).value_counts() if col in work else None
            cats = [] if counts is None else sorted(counts.index[:MAX_CATEGORIES].tolist())
            categorical[col] = cats
        references: dict[str, str | float] = {}
        for col in numeric:
            if col in work:
                values = _to_float(work[col])
                finite = values[np.isfinite(values)]
                if finite.size:
                    references[_group(col)] = float(np.median(finite))
        for col in categorical:
            if col == "model_family":  # 'model' is referenced by its name, not its family
                continue
            if col in work and work[col].notna().any():
                references[_group(col)] = str(work[col].dropna().astype(str).mode().iloc[0])
        return cls(
            numeric=numeric,
            categorical=categorical,
            references=references,
            meta_features=meta_features,
        )

    @property
    def columns(self) -> list[str]:
        """Encoded column names, in matrix order."""
        out = [*self.numeric, "pretrained", "model_params_m", "model_arch"]
        for col, cats in self.categorical.items():
            out.extend(f"{col}={c}" for c in [*cats, OTHER])
        return out

    @property
    def groups(self) -> list[str]:
        """For each encoded column, the feature a person would name (one-hots grouped back)."""
        return [_group(c.split("=", 1)[0]) for c in self.columns]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Float32 matrix (rows x :attr:`columns`); NaN where a value is unknown."""
        work = _with_model_columns(frame)
        n = len(work)
        blocks: list[np.ndarray] = []
        train_size = _to_float(work["hp_image_size"]) if "hp_image_size" in work else None
        for col in self.numeric:
            raw = _to_float(work[col]) if col in work else np.full(n, np.nan)
            if col in RESOLUTION_COLUMNS and train_size is not None:
                raw = seen_resolution(raw, train_size)
            blocks.append(_scaled(col, raw)[:, None])
        for col in ("pretrained", "model_params_m", "model_arch"):
            blocks.append(_to_float(work[col])[:, None])
        for col, cats in self.categorical.items():
            index = {c: i for i, c in enumerate(cats)}
            onehot = np.zeros((n, len(cats) + 1))
            if col in work:
                for row, value in enumerate(work[col].tolist()):
                    if value is None or _isnan(value):
                        continue
                    onehot[row, index.get(str(value), len(cats))] = 1.0
            blocks.append(onehot)
        matrix = np.hstack(blocks) if blocks else np.zeros((n, 0))
        return matrix.astype(np.float32)

    def reference(self, group: str) -> str | float | None:
        return self.references.get(group)


def _with_model_columns(frame: pd.DataFrame) -> pd.DataFrame:
    work = frame.copy()
    models = work["model"].astype(str) if "model" in work else pd.Series([""] * len(work))
    work["model_family"] = models.map(model_family)
    work["model_params_m"] = models.map(model_params_m)
    work["model_arch"] = models.map(model_arch)
    if "pretrained" not in work:
        work["pretrained"] = False
    work["pretrained"] = work["pretrained"].astype(float)
    return work


def _group(column: str) -> str:
    """Frame column -> the name used in sentences ('hp_lr' -> 'lr', 'hp_x_mixup' -> 'mixup')."""
    if column.startswith("hp_x_"):
        return column[len("hp_x_") :]
    if column.startswith("hp_"):
        return column[len("hp_") :]
    if column.startswith("mf_"):
        return column[len("mf_") :]
    if column in {"model_params_m", "model_arch", "model_family"}:
        return "model"
    return column


def group_kind(group: str) -> str:
    """'hyperparameter', 'meta-feature' or 'model', for wording and filtering.

    The candidate's own landmark (its backbone's score on these images) differs between
    candidates like the model does; the other landmarks describe the dataset."""
    if group == LANDMARK_COLUMNS[0]:
        return "model"
    if group in MetaFeatures.model_fields or group in LANDMARK_COLUMNS or group == LEVEL_GROUP:
        return "meta-feature"
    if group in {"model", "pretrained"}:
        return "model"
    return "hyperparameter"
