"""Offline EfficientNet-Lite weights: pinned files, a checked mapping, a sane forward pass."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from metallmix.errors import ModelUnavailableError
from metallmix.tools.training import pretrained as P
from metallmix.tools.training.trainer import ArraySplits, FeatureCache, TrainConfig, train

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")


@pytest.mark.parametrize("model", sorted(P.WEIGHTS))
def test_weight_file_is_pinned_and_maps_one_to_one(model: str) -> None:
    path = P.weights_path(model)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == P.WEIGHTS[model].sha256
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert len(raw) == P.WEIGHTS[model].n_tensors
    assert next(iter(raw)) == "_conv_stem.weight" and list(raw)[-1] == "_fc.bias"
    mapped = P.imagenet_state_dict(model)
    reference = timm.create_model(model, pretrained=False).state_dict()
    assert list(mapped) == list(reference)
    for (key, tensor), (src_key, src) in zip(mapped.items(), raw.items(), strict=True):
        assert tuple(tensor.shape) == tuple(reference[key].shape), key
        assert torch.equal(tensor, src), (key, src_key)


def test_mapping_refuses_a_shape_or_count_mismatch() -> None:
    target = OrderedDict(a=torch.zeros(2, 3), b=torch.zeros(4))
    with pytest.raises(ModelUnavailableError, match=r"_x .*\(5,\) does not fit b \(4,\)"):
        P.map_state_dict(OrderedDict(_w=torch.zeros(2, 3), _x=torch.zeros(5)), target)
    with pytest.raises(ModelUnavailableError, match="1 tensors, the timm model 2"):
        P.map_state_dict(OrderedDict(_w=torch.zeros(2, 3)), target)
    out = P.map_state_dict(OrderedDict(_w=torch.ones(2, 3), _x=torch.ones(4)), target)
    assert list(out) == ["a", "b"] and float(out["b"].sum()) == 4.0


def test_a_file_with_another_hash_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "efficientnet-lite0.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(ModelUnavailableError, match="expected 579344248a93"):
        P.verify("efficientnet_lite0", fake)


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match=r"metallmix\[pretrained-weights\]"):
        P.weights_path("efficientnet_lite1")
    with pytest.raises(ModelUnavailableError, match="no offline weights for resnet18"):
        P.weights_path("resnet18")


def _image_batch() -> object:
    """Smooth structured images in [-1, 1] (the weights' input range), not noise."""
    g = torch.linspace(-1, 1, 64)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    imgs = torch.stack([torch.sin(3 * xx + k) * torch.cos(2 * yy - k) for k in range(4)])
    return imgs[:, None]


def test_forward_pass_grey_stem_and_features_differ_from_random() -> None:
    torch.manual_seed(0)
    grey = timm.create_model("efficientnet_lite0", num_classes=3, in_chans=1)
    P.load_imagenet(grey, "efficientnet_lite0", 1)
    rgb = timm.create_model("efficientnet_lite0", num_classes=3, in_chans=3)
    P.load_imagenet(rgb, "efficientnet_lite0", 3)
    random = timm.create_model("efficientnet_lite0", num_classes=3, in_chans=1)
    for m in (grey, rgb, random):
        m.eval()
    x = _image_batch()
    with torch.inference_mode():
        f_grey = grey.forward_head(grey.forward_features(x), pre_logits=True)
        f_rgb = rgb.forward_head(rgb.forward_features(x.repeat(1, 3, 1, 1)), pre_logits=True)
        f_random = random.forward_head(random.forward_features(x), pre_logits=True)
        logits = grey(x)
    # summing the stem over RGB is exactly the RGB network on the grey image copied 3 times
    assert torch.allclose(f_grey, f_rgb, atol=1e-4)
    assert torch.isfinite(logits).all() and logits.shape == (4, 3)
    assert not torch.allclose(f_grey, f_random, atol=1e-2)
    # ImageNet features separate different images (a dead or half-loaded net would not)
    assert float(f_grey.std(0).mean()) > 1e-3


def test_imagenet_head_is_loaded_and_stable() -> None:
    model = timm.create_model("efficientnet_lite0")
    model.load_state_dict(P.imagenet_state_dict("efficientnet_lite0"))
    model.eval()
    x = _image_batch().repeat(1, 3, 1, 1)
    with torch.inference_mode():
        a, b = model(x), model(x)
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert torch.isfinite(a).all()
    # the 1000-way head is the file's, not a fresh one
    raw = torch.load(P.weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(model.classifier.bias, raw["_fc.bias"])


def probe_splits() -> ArraySplits:
    """24 grey 32 px images, class 1 with a bright square; val and test are halves of them."""
    rng = np.random.default_rng(0)
    n = 24
    labels = np.arange(n) % 2
    images = rng.integers(0, 40, size=(n, 32, 32), dtype=np.int64)
    images[labels == 1, 8:24, 8:24] += 200
    images = np.clip(images, 0, 255).astype(np.uint8)
    return ArraySplits(images, labels, images[:12], labels[:12], images[12:], labels[12:])


def test_linear_probe_on_cached_features_trains_and_reuses_the_cache() -> None:
    data = probe_splits()
    cache = FeatureCache()
    config = TrainConfig(
        model="efficientnet_lite0",
        pretrained=True,
        finetune="linear_probe",
        image_size=32,
        epochs=2,
        threads=1,
    )
    first = train(config, data, feature_cache=cache)
    second = train(config, data, feature_cache=cache)
    assert first.status == "ok" and not first.features_cached
    assert second.features_cached and second.feature_seconds is not None
    assert first.n_trainable == 1280 * 2 + 2  # the head only
    assert second.val_balanced_accuracy == first.val_balanced_accuracy
    assert config.hyperparameters().extra["finetune"] == "linear_probe"
