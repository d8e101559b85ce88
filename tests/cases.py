"""Inputs several test files share, written once: meta-features of the breast-ultrasound
example, a tiny dataset's meta-features and the scripted LLM answer the code checks reject.
Fixtures built from them live in ``conftest.py``."""

from __future__ import annotations

from metallmix.agents.schemas import LLMChoice
from metallmix.tools.metafeatures import MetaFeatures

# BreastMNIST-like: 546 grey 28 px images, 2 classes, imbalance 2.7.
BREAST_MF = MetaFeatures(
    n_images=546,
    n_classes=2,
    imbalance_ratio=2.7,
    resolution_h=28,
    resolution_w=28,
    channels=1,
    class_size_mean=273,
    modality="breast ultrasound",
    images_per_class=273,
)

# The toy .npz of test_train_trainer.write_npz: 40 grey 16 px images, 2 balanced classes.
TOY_MF = MetaFeatures(
    n_images=40,
    n_classes=2,
    resolution_h=16,
    resolution_w=16,
    channels=1,
    class_size_mean=20,
    images_per_class=20,
)

# Grammar-shaped, but its words carry an invented number: rejected by code, never graded.
BAD_CHOICE = LLMChoice(
    candidate_id="c1", facts=["f1"], runs=["r1"], rationale="It surely reaches 99.9% accuracy."
)
