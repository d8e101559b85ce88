"""A synthetic knowledge base with *known* effects, for tests and scaling benchmarks.

Accuracy follows a stated formula (dataset difficulty + a learning-rate optimum at 1e-3 +
a model bonus + noise), so a test can check that the meta-learner, SHAP and retrieval
recover what was planted. Never used for recommendations.
"""

from __future__ import annotations

import math

import numpy as np

from metallmix.tools.kb.records import Outcomes, Provenance, RunRecord
from metallmix.tools.meta.search_space import CPU_ZOO_SPACE, SearchSpace
from metallmix.tools.metafeatures import MetaFeatures

# The from-scratch part of the CPU zoo as it was when the planted effects were calibrated:
# later additions to the zoo (pretrained models, class weighting) must not move the draws.
SYNTHETIC_SPACE = CPU_ZOO_SPACE.model_copy(
    update={
        "name": "cpu-zoo-synthetic",
        "models": [m for m in CPU_ZOO_SPACE.models if m not in CPU_ZOO_SPACE.pretrained_models],
        "pretrained_models": [],
        "model_params": {},
        "params": {k: v for k, v in CPU_ZOO_SPACE.params.items() if k != "class_weighting"},
    }
)

LR_OPTIMUM = 1e-3
MODEL_BONUS = {"resnet18": 0.05, "lcnet_050": -0.05}


def synthetic_meta_features(rng: np.random.Generator, modality: str = "synthetic") -> MetaFeatures:
    n_classes = int(rng.integers(2, 12))
    n_images = int(rng.integers(200, 20000))
    res = float(rng.choice([28, 64, 128, 224]))
    imbalance = float(rng.uniform(1.0, 8.0))
    return MetaFeatures(
        n_images=n_images,
        n_classes=n_classes,
        imbalance_ratio=imbalance,
        class_entropy=math.log2(n_classes) * 0.9,
        normalized_entropy=0.9,
        resolution_h=res,
        resolution_w=res,
        channels=int(rng.choice([1, 3])),
        class_size_mean=n_images / n_classes,
        class_size_std=n_images / n_classes / 3,
        class_size_min=max(1, int(n_images / n_classes / imbalance)),
        class_size_max=int(n_images / n_classes * 1.5),
        modality=modality,
        images_per_class=n_images / n_classes,
        min_class_fraction=1.0 / (n_classes * imbalance),
    )


def true_accuracy(difficulty: float, model: str, lr: float) -> float:
    """The planted formula: an lr optimum at 1e-3 worth up to ~25 points."""
    lr_term = -0.12 * abs(math.log10(lr) - math.log10(LR_OPTIMUM))
    return float(np.clip(difficulty + lr_term + MODEL_BONUS.get(model, 0.0), 0.01, 0.99))


def synthetic_records(
    n_datasets: int = 6,
    runs_per_dataset: int = 30,
    *,
    seed: int = 0,
    space: SearchSpace = SYNTHETIC_SPACE,
    noise: float = 0.01,
    groups: dict[str, str] | None = None,
) -> list[RunRecord]:
    """``n_datasets`` x ``runs_per_dataset`` runs sampled from ``space``."""
    rng = np.random.default_rng(seed)
    records: list[RunRecord] = []
    for d in range(n_datasets):
        name = f"synth{d:02d}"
        mf = synthetic_meta_features(rng)
        difficulty = float(rng.uniform(0.55, 0.9))
        configs = space.sample(runs_per_dataset, seed=seed * 1000 + d)
        for i, (model, hp) in enumerate(configs):
            lr = hp.lr if hp.lr is not None else LR_OPTIMUM
            acc = true_accuracy(difficulty, model, lr) + float(rng.normal(0, noise))
            epochs = hp.epochs or 5
            seconds = mf.n_images * epochs * (1 + 0.1 * (hp.image_size or 32)) / 500.0
            records.append(
                RunRecord(
                    run_id=f"synthetic:{name}:{i:04d}",
                    source="csv",
                    provenance=Provenance(notes={"synthetic": True}),
                    dataset=name,
                    dataset_group=(groups or {}).get(name, name),
                    meta_features=mf,
                    model=model,
                    pretrained=space.is_pretrained(model),
                    hyperparameters=hp,
                    outcomes=Outcomes(
                        val_accuracy=float(np.clip(acc, 0.0, 1.0)),
                        train_seconds=seconds * float(rng.uniform(0.9, 1.1)),
                        epochs_run=epochs,
                    ),
                    seed=seed,
                )
            )
    return records
