"""The pure trainer on generated arrays: metrics, learning, divergence, weights, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metallmix.errors import ConfigError, DatasetError, ModelUnavailableError
from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.training.trainer import (
    ArraySplits,
    TrainConfig,
    classification_metrics,
    train,
)


def make_arrays(
    n_train: int = 64, n_eval: int = 24, size: int = 16, seed: int = 0, classes: int = 2
) -> dict[str, np.ndarray]:
    """Separable grey images: class k has a bright square in quadrant k, plus noise."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    half = size // 2
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, size, size), dtype=np.int64)
        for i, k in enumerate(labels):
            r, c = divmod(int(k), 2)
            images[i, r * half : (r + 1) * half, c * half : (c + 1) * half] += 180
        out[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        out[f"{split}_labels"] = labels.astype(np.int64)
    return out


def write_npz(folder: Path, name: str = "toy", **kwargs: int) -> Path:
    """A MedMNIST-style ``.npz`` plus a sidecar naming a source repo and commit."""
    path = folder / f"{name}.npz"
    np.savez(path, **make_arrays(**kwargs))
    sidecar = {
        "modality": "synthetic X-ray",
        "class_names": [f"class{k}" for k in range(kwargs.get("classes", 2))],
        "source": {"repo": "example/toy-data", "commit": "0123456789abcdef", "path": "toy.npz"},
    }
    (folder / f"{name}.json").write_text(json.dumps(sidecar))
    return path


def splits(**kwargs: int) -> ArraySplits:
    a = make_arrays(**kwargs)
    return ArraySplits(
        a["train_images"],
        a["train_labels"],
        a["val_images"],
        a["val_labels"],
        a["test_images"],
        a["test_labels"],
    )


def tiny(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "model": "lcnet_050",
        "epochs": 1,
        "image_size": 16,
        "batch_size": 32,
        "threads": 1,
        "lr": 3e-3,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_one_epoch_reports_every_metric() -> None:
    data = splits()
    seen: list[int] = []
    result = train(tiny(), data, progress=lambda s: seen.append(s.epoch))
    assert result.status == "ok"
    assert seen == [1]
    assert result.epochs_run == 1 and len(result.history) == 1
    for value in (
        result.val_accuracy,
        result.test_accuracy,
        result.macro_f1,
        result.balanced_accuracy,
    ):
        assert value is not None and 0.0 <= value <= 1.0
    assert result.train_seconds > 0 and result.seconds_per_epoch is not None
    assert result.confusion is not None and int(result.confusion.sum()) == len(data.test_y)
    assert result.learning_curve == [result.history[0].val_accuracy]
    assert np.isfinite(result.history[0].train_loss)
    assert result.n_train == 64 and result.n_parameters > 0


def test_learns_a_separable_task() -> None:
    """Three epochs of resnet10t separate the quadrant classes well above chance."""
    data = splits(n_train=128, classes=4, seed=1)
    result = train(
        tiny(model="resnet10t", epochs=3, augmentation="none", lr=1e-3, batch_size=16), data
    )
    assert result.status == "ok"
    assert result.val_accuracy is not None and result.val_accuracy >= 0.7
    assert result.test_accuracy is not None and result.test_accuracy >= 0.6


def test_same_seed_same_run() -> None:
    data = splits()
    a = train(tiny(epochs=2, augmentation="medium", seed=3), data)
    b = train(tiny(epochs=2, augmentation="medium", seed=3), data)
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    assert a.learning_curve == b.learning_curve


def test_diverging_config_is_recorded_not_raised() -> None:
    result = train(tiny(model="resnet10t", optimizer="sgd", lr=1e6, epochs=3), splits())
    assert result.status == "diverged"
    assert "non-finite" in result.message
    assert result.epochs_run < 3


@pytest.mark.parametrize("augmentation", ["none", "light", "medium"])
def test_augmentation_levels_and_schedulers(augmentation: str) -> None:
    for scheduler in ("cosine", "step", "none"):
        result = train(tiny(augmentation=augmentation, scheduler=scheduler, epochs=2), splits())
        assert result.status == "ok" and result.epochs_run == 2


def test_rgb_and_resize() -> None:
    a = make_arrays(size=20)
    rgb = {
        k: np.repeat(v[..., None], 3, axis=-1) if k.endswith("images") else v for k, v in a.items()
    }
    data = ArraySplits(
        rgb["train_images"], rgb["train_labels"], rgb["val_images"], rgb["val_labels"]
    )
    assert data.channels == 3
    result = train(tiny(image_size=24, optimizer="adam"), data)
    assert result.status == "ok" and result.test_accuracy is None


def test_small_image_for_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="image_size=16"):
        train(tiny(model="convnext_atto"), splits())


def test_unknown_model_and_bad_options() -> None:
    with pytest.raises(ConfigError, match="unknown timm model"):
        train(tiny(model="no_such_net"), splits())
    with pytest.raises(ConfigError, match="optimizer"):
        tiny(optimizer="lion")
    with pytest.raises(DatasetError, match="single class"):
        a = make_arrays()
        ArraySplits(
            a["train_images"], np.zeros(64, dtype=np.int64), a["val_images"], a["val_labels"]
        )


def test_pretrained_without_weights_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match="pretrained=False"):
        train(tiny(pretrained=True), splits())


def test_weights_file(tmp_path: Path) -> None:
    import timm
    import torch

    source = timm.create_model("lcnet_050", pretrained=False, num_classes=10, in_chans=1)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    result = train(tiny(weights=path), splits())
    assert result.status == "ok"
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailableError, match=r"bad\.pth"):
        train(tiny(weights=tmp_path / "bad.pth"), splits())
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        train(tiny(weights=tmp_path / "missing.pth"), splits())


def test_from_hyperparameters_fills_defaults_and_round_trips() -> None:
    hp = Hyperparameters(lr=0.01, epochs=2, extra={"early_stopping_patience": 1})
    config = TrainConfig.from_hyperparameters("resnet10t", hp, seed=5)
    assert config.lr == 0.01 and config.epochs == 2 and config.seed == 5
    assert config.early_stopping_patience == 1
    back = config.hyperparameters()
    assert back.lr == 0.01 and back.batch_size == config.batch_size
    assert back.extra["early_stopping_patience"] == 1
    with pytest.raises(ConfigError):
        TrainConfig.from_hyperparameters("resnet10t", Hyperparameters(scheduler="plateau"))


def test_classification_metrics() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 1, 0])
    acc, f1, bal, cm = classification_metrics(y, p, 3)
    assert acc == pytest.approx(4 / 6)
    assert bal == pytest.approx((2 / 3 + 1 + 0) / 3)
    f1_0 = 2 * (2 / 3) * (2 / 3) / (4 / 3)
    f1_1 = 2 * (2 / 3) * 1 / (5 / 3)
    assert f1 == pytest.approx((f1_0 + f1_1 + 0) / 3)
    assert cm.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_macro_auc_rank_formula() -> None:
    from metallmix.tools.training.trainer import macro_auc

    y = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.eye(3)[y] + 0.01
    assert macro_auc(y, perfect) == pytest.approx(1.0)
    assert macro_auc(y, -perfect) == pytest.approx(0.0)
    ties = np.ones((6, 3))
    assert macro_auc(y, ties) == pytest.approx(0.5)
    assert macro_auc(np.zeros(4, dtype=int), np.ones((4, 2))) is None
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = rng.random((6, 3))
    scores /= scores.sum(1, keepdims=True)
    expected = sklearn.roc_auc_score(y, scores, multi_class="ovr", average="macro")
    assert macro_auc(y, scores) == pytest.approx(expected)


def test_best_epoch_and_early_stop_follow_balanced_accuracy() -> None:
    """An epoch with higher accuracy but lower balanced accuracy is neither best nor progress."""
    from metallmix.tools.training.trainer import _BestEpoch, evaluate

    torch = pytest.importorskip("torch")
    labels = np.array([0] * 9 + [1])
    majority = torch.tensor([[1.0, 0.0]] * 10)  # accuracy 0.9, balanced 0.5
    balanced = torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 3 + [[0.0, 1.0]])  # 0.7 / 0.83
    e_bal, e_maj = evaluate(balanced, labels, 2), evaluate(majority, labels, 2)
    assert e_maj.accuracy > e_bal.accuracy and e_maj.balanced_accuracy < e_bal.balanced_accuracy
    best = _BestEpoch(patience=2)
    assert not best.update(1, e_bal, lambda: {"epoch": 1})
    assert not best.update(2, e_maj, lambda: {"epoch": 2})
    assert best.update(3, e_maj, lambda: {"epoch": 3})  # 2 epochs without a better balanced acc
    assert best.epoch == 1 and best.state == {"epoch": 1}


def test_reported_epoch_is_the_best_balanced_one() -> None:
    result = train(tiny(epochs=4, early_stopping_patience=None, lr=1e-2), splits(seed=2))
    curve = result.balanced_learning_curve
    assert len(curve) == 4 and result.best_epoch == int(np.argmax(curve)) + 1
    assert result.val_balanced_accuracy == pytest.approx(max(curve))
    assert result.val_accuracy == pytest.approx(result.learning_curve[result.best_epoch - 1])
    assert result.macro_auc is not None and 0.0 <= result.macro_auc <= 1.0
    assert result.test_balanced_accuracy == result.balanced_accuracy


def test_class_weighting_changes_the_loss() -> None:
    from metallmix.tools.training.trainer import _loss_fn, class_weights

    torch = pytest.importorskip("torch")
    labels = np.array([0] * 6 + [1] * 2)
    assert class_weights(labels, 3).tolist() == pytest.approx([8 / 12, 8 / 4, 1.0])
    logits = torch.tensor([[2.0, 0.0, 0.0]] * 8)
    target = torch.from_numpy(labels)
    plain = float(_loss_fn(tiny(), labels, 3)(logits, target))
    weighted = float(_loss_fn(tiny(class_weighting="balanced"), labels, 3)(logits, target))
    assert weighted > plain  # the misclassified minority class counts more
    data = splits(n_train=64, seed=4)
    keep = np.r_[np.flatnonzero(data.train_y == 0), np.flatnonzero(data.train_y == 1)[:6]]
    data.train_x, data.train_y = data.train_x[keep], data.train_y[keep]
    a = train(tiny(epochs=1), data)
    b = train(tiny(epochs=1, class_weighting="balanced"), data)
    assert a.history[0].train_loss != b.history[0].train_loss
    hp = tiny(class_weighting="balanced").hyperparameters()
    assert hp.extra["class_weighting"] == "balanced" and "finetune" not in hp.extra
    again = TrainConfig.from_hyperparameters("lcnet_050", hp)
    assert again.class_weighting == "balanced"
    with pytest.raises(ConfigError, match="class_weighting"):
        tiny(class_weighting="focal")


def test_feature_cache_reuses_rows_and_persists(tmp_path: Path) -> None:
    from metallmix.tools.training.trainer import FeatureCache

    calls: list[int] = []

    def extract(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :3].astype(np.float32)

    images = np.random.default_rng(0).integers(0, 255, size=(6, 4, 4, 1), dtype=np.uint8)
    cache = FeatureCache(tmp_path)
    feats, _, hit = cache.features("k", images, extract)
    assert calls == [6] and not hit and feats.shape == (6, 3)
    sub, _, hit = cache.features("k", images[[4, 1]], extract)  # a derived task's subset
    assert calls == [6] and hit and np.array_equal(sub, feats[[4, 1]])
    again, _, hit = FeatureCache(tmp_path).features("k", images, extract)  # another process
    assert calls == [6] and hit and np.array_equal(again, feats)
    cache.features("other-size", images[:2], extract)
    assert calls == [6, 2]


def test_batchnorm_recalibration_keeps_frozen_statistics() -> None:
    """Precise BN through ``update_bn`` re-estimates only the layers that train: a frozen
    (pretrained) layer keeps its running statistics and stays in eval mode, a trainable one
    ends at the plain average of its per-batch means over the calibration images."""
    import torch

    from metallmix.tools.training.trainer import _freeze_modes, _recalibrate_batchnorm

    torch.manual_seed(0)
    frozen = torch.nn.BatchNorm2d(4)
    trainable = torch.nn.BatchNorm2d(4)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), frozen, torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), trainable
    )
    for p in [*model[0].parameters(), *frozen.parameters()]:
        p.requires_grad_(False)
    with torch.no_grad():
        frozen.running_mean.fill_(0.25)
        frozen.running_var.fill_(2.0)
    x = torch.randn(10, 1, 8, 8)
    model.train()
    _freeze_modes(model)
    with torch.no_grad():  # what the trainable layer sees, in batches of 4, 4 and 2
        features = model[:4](x)
    expected = torch.stack([features[i : i + 4].mean(dim=(0, 2, 3)) for i in (0, 4, 8)]).mean(0)

    _recalibrate_batchnorm(model, x, batch=4)

    assert torch.equal(frozen.running_mean, torch.full((4,), 0.25))
    assert torch.equal(frozen.running_var, torch.full((4,), 2.0))
    assert not frozen.training and trainable.training
    assert torch.allclose(trainable.running_mean, expected, atol=1e-6)
    assert trainable.momentum == 0.1  # restored after the cumulative pass
