"""Meta-features against hand-computed values, dataset cards, and the real breastmnist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metallmix.errors import DatasetError
from metallmix.tools.datasets import load_dataset
from metallmix.tools.datasets.card import read_card, write_card
from metallmix.tools.metafeatures import (
    MetaFeatures,
    card_from_dataset,
    compute_meta_features,
    meta_features_from_counts,
)


def counts_npz(path: Path, counts: list[int], values: list[int] | None = None) -> Path:
    """npz whose class k has counts[k] constant images of grey level values[k]."""
    values = values or [0] * len(counts)
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    imgs = np.stack([np.full((8, 10), values[k], dtype=np.uint8) for k in labels])
    np.savez(path, train_images=imgs, train_labels=labels)
    return path


def test_hand_computed_values_for_counts_6_3_1(tmp_path: Path) -> None:
    path = counts_npz(tmp_path / "ds.npz", [6, 3, 1])

    mf = compute_meta_features(load_dataset(path, val_fraction=0, test_fraction=0))

    # p = 0.6, 0.3, 0.1: H = -(0.6 log2 0.6 + 0.3 log2 0.3 + 0.1 log2 0.1) = 1.295462 bits
    assert mf.n_images == 10
    assert mf.n_classes == 3
    assert mf.imbalance_ratio == pytest.approx(6.0)
    assert mf.class_entropy == pytest.approx(1.295462, abs=1e-6)
    assert mf.normalized_entropy == pytest.approx(1.295462 / 1.584963, abs=1e-6)
    assert mf.class_size_mean == pytest.approx(10 / 3)
    assert mf.class_size_std == pytest.approx(2.054805, abs=1e-6)  # sqrt(38/9), ddof=0
    assert (mf.class_size_min, mf.class_size_max) == (1, 6)
    assert mf.images_per_class == pytest.approx(10 / 3)
    assert mf.min_class_fraction == pytest.approx(0.1)
    assert (mf.resolution_h, mf.resolution_w, mf.channels) == (8.0, 10.0, 1)
    assert mf.modality == "unknown"
    assert mf.version == 1


def test_pixel_statistics_from_known_intensities(tmp_path: Path) -> None:
    # half the images at 51 (0.2), half at 204 (0.8): mean 0.5, std 0.3
    path = counts_npz(tmp_path / "px.npz", [5, 5], values=[51, 204])
    ds = load_dataset(path, val_fraction=0, test_fraction=0)

    mf = compute_meta_features(ds)

    assert mf.pixel_mean == pytest.approx(0.5)
    assert mf.pixel_std == pytest.approx(0.3)
    assert compute_meta_features(ds, pixel_sample=0).pixel_mean is None


def test_median_resolution_and_majority_channels(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    sizes = {"a": [(10, 20), (10, 20), (30, 40)], "b": [(50, 60), (12, 16)]}
    for cls, shapes in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            mode_rgb = cls == "a"
            shape = (h, w, 3) if mode_rgb else (h, w)
            Image.fromarray(np.zeros(shape, np.uint8)).save(root / cls / f"{i}.png")

    mf = compute_meta_features(load_dataset(root, val_fraction=0, test_fraction=0))

    assert (mf.resolution_h, mf.resolution_w) == (12.0, 20.0)  # medians of 10,10,12,30,50 etc.
    assert mf.channels == 3  # three colour images against two grey ones


def test_only_the_training_split_counts(tmp_path: Path) -> None:
    path = tmp_path / "split.npz"
    np.savez(
        path,
        train_images=np.zeros((4, 3, 3), np.uint8),
        train_labels=np.array([0, 0, 0, 1]),
        val_images=np.zeros((5, 3, 3), np.uint8),
        val_labels=np.array([1, 1, 1, 1, 1]),
        test_images=np.zeros((6, 3, 3), np.uint8),
        test_labels=np.array([1] * 6),
    )
    mf = compute_meta_features(path)
    assert mf.n_images == 4
    assert mf.imbalance_ratio == pytest.approx(3.0)


def test_modality_precedence(tmp_path: Path) -> None:
    path = counts_npz(tmp_path / "m.npz", [3, 3])
    assert compute_meta_features(path).modality == "unknown"
    (tmp_path / "m.json").write_text(json.dumps({"modality": "dermoscopy"}))
    assert compute_meta_features(path).modality == "dermoscopy"
    assert compute_meta_features(path, modality="CT").modality == "CT"


def test_seeded_pixel_sample_is_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "r.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 256, (200, 6, 6), dtype=np.uint8),
        train_labels=np.array([0, 1] * 100),
    )
    ds = load_dataset(path, val_fraction=0, test_fraction=0)
    a = compute_meta_features(ds, seed=3, pixel_sample=20)
    b = compute_meta_features(ds, seed=3, pixel_sample=20)
    c = compute_meta_features(ds, seed=4, pixel_sample=20)
    assert a == b
    assert a.pixel_mean != c.pixel_mean


def test_progress_reports_every_step(tmp_path: Path) -> None:
    from metallmix.tools.metafeatures import meta_feature_steps

    ds = load_dataset(counts_npz(tmp_path / "p.npz", [4, 4]), val_fraction=0, test_fraction=0)
    seen: list[int] = []
    compute_meta_features(ds, on_progress=seen.append)
    assert sum(seen) == meta_feature_steps(ds) == 16


def test_meta_features_serialise_round_trip(tmp_path: Path) -> None:
    mf = compute_meta_features(counts_npz(tmp_path / "s.npz", [2, 5]))
    again = MetaFeatures.model_validate_json(mf.model_dump_json())
    assert again == mf


# --- dataset cards ---------------------------------------------------------------------------


def card_dict(**overrides: object) -> dict:
    card = {
        "name": "derm-demo",
        "modality": "dermoscopy",
        "class_names": ["nevus", "melanoma", "bcc"],
        "train_counts": {"nevus": 6, "melanoma": 3, "bcc": 1},
        "image_height": 8,
        "image_width": 10,
        "channels": 3,
    }
    card.update(overrides)
    return card


def test_card_path_gives_the_same_features_as_the_dataset(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card_dict()))

    from_card = compute_meta_features(path)
    data = load_dataset(counts_npz(tmp_path / "d.npz", [6, 3, 1]), val_fraction=0, test_fraction=0)
    from_data = compute_meta_features(data, pixel_sample=0)

    assert from_card.model_dump(exclude={"channels", "modality"}) == from_data.model_dump(
        exclude={"channels", "modality"}
    )
    assert from_card.modality == "dermoscopy" and from_card.channels == 3
    assert compute_meta_features(path, modality="other").modality == "other"


def test_card_written_from_a_dataset_round_trips(tmp_path: Path) -> None:
    ds = load_dataset(counts_npz(tmp_path / "rt.npz", [4, 2], values=[10, 200]))
    card = card_from_dataset(ds)
    written = write_card(card, tmp_path / "out" / "rt.card.json")

    assert read_card(written) == card
    train_counts = np.bincount(ds.split("train").labels).tolist()
    assert card.train_counts == {"0": train_counts[0], "1": train_counts[1]}
    assert (card.image_height, card.image_width, card.channels) == (8, 10, 1)
    assert compute_meta_features(written) == compute_meta_features(ds)
    assert not list((tmp_path / "out").glob(".*"))  # no temp file left behind


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_counts": {"nevus": 6, "melanoma": 3}}, r"missing counts for \['bcc'\]"),
        ({"train_counts": {"nevus": 6, "melanoma": 3, "bcc": 1, "x": 2}}, "unknown classes"),
        ({"class_names": ["nevus"], "train_counts": {"nevus": 3}}, "class_names"),
        ({"train_counts": {"nevus": 6, "melanoma": 0, "bcc": 0}}, "at least two classes"),
        ({"train_counts": {"nevus": 6, "melanoma": -3, "bcc": 1}}, "non-negative"),
        ({"channels": 2}, "channels"),
        ({"image_height": 0}, "image_height"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_cards_name_the_field(tmp_path: Path, overrides: dict, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(card_dict(**overrides)))
    with pytest.raises(DatasetError, match=rf"bad\.json: invalid dataset card: .*{message}"):
        compute_meta_features(path)


def test_card_not_json_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        compute_meta_features(path)
    with pytest.raises(DatasetError, match="no such dataset card"):
        compute_meta_features(tmp_path / "absent.json")


def test_counts_without_images_fail() -> None:
    with pytest.raises(DatasetError, match="no training images"):
        meta_features_from_counts([0, 0], resolution_h=1, resolution_w=1, channels=1)


# --- real data -------------------------------------------------------------------------------


@pytest.mark.data
def test_breastmnist_matches_its_sidecar(shared_data: Path) -> None:
    path = shared_data / "medical" / "breastmnist.npz"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    train = sidecar["counts_per_split"]["train"]

    mf = compute_meta_features(path)

    assert mf.n_images == train["total"] == 546
    assert mf.n_classes == sidecar["num_classes"] == 2
    assert (mf.class_size_min, mf.class_size_max) == (147, 399)
    assert (train["malignant"], train["normal_or_benign"]) == (147, 399)
    assert mf.imbalance_ratio == pytest.approx(399 / 147)
    assert (mf.resolution_h, mf.resolution_w) == tuple(float(v) for v in sidecar["image_size"])
    assert mf.channels == sidecar["channels"] == 1
    assert mf.modality == sidecar["modality"]
    assert mf.pixel_mean is not None and 0.0 < mf.pixel_mean < 1.0
    # the sidecar read as a card gives the same counts-based features
    assert compute_meta_features(path.with_suffix(".json")).model_dump(
        exclude={"pixel_mean", "pixel_std"}
    ) == mf.model_dump(exclude={"pixel_mean", "pixel_std"})


@pytest.mark.data
@pytest.mark.parametrize(
    "name", ["pneumoniamnist_mod", "brain_tumor_mri", "lc25000_lung", "covid_ct", "knee_oa_kl"]
)
def test_shared_datasets_match_their_sidecars(shared_data: Path, name: str) -> None:
    path = shared_data / "medical" / f"{name}.npz"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    train = sidecar["counts_per_split"]["train"]
    ds = load_dataset(path)
    counts = np.bincount(ds.split("train").labels, minlength=ds.n_classes)

    mf = compute_meta_features(ds, pixel_sample=16)

    assert counts.tolist() == [train[c] for c in sidecar["class_names"]]
    assert mf.n_images == train["total"]
    assert mf.channels == sidecar["channels"]
    assert {k: len(v) for k, v in ds.splits.items()} == {
        s: sidecar["counts_per_split"][s]["total"] for s in ("train", "val", "test")
    }
