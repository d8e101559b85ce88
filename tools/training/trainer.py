"""Pure training: fine-tune a timm model on in-memory arrays, no MLflow, no KB.

Kept free of logging side effects so that validation runs, Optuna searches and the KB build
all share one training loop and differ only in what they record. Data lives as tensors for
the whole run (the datasets here are small), augmentation is batched tensor arithmetic, and
the loop is CPU-first: ``torch.set_num_threads`` is a parameter because the machines this
runs on are often shared.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from metallmix.atomic import read_recorded, write_recorded
from metallmix.errors import ConfigError, DatasetError, ModelUnavailableError
from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.training import checkpoint as checkpoints
from metallmix.tools.training import pretrained as pretrained_weights
from metallmix.tools.training.checkpoint import Checkpoint

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "step", "none")
AUGMENTATIONS = ("none", "light", "medium")
CLASS_WEIGHTINGS = ("none", "balanced")
# How much of a pretrained network trains: only a linear head on frozen features, the last
# stages and the head, or everything. From-scratch models always train fully.
FINETUNES = ("full", "last_stages", "linear_probe")

# Training images used to re-estimate batch-norm statistics before each evaluation.
BN_CALIBRATION_IMAGES = 256

# Used when a Hyperparameters field is unset (public records often omit some).
DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "batch_size": 64,
    "optimizer": "adamw",
    "weight_decay": 1e-4,
    "epochs": 5,
    "scheduler": "cosine",
    "augmentation": "light",
    "image_size": 32,
    "label_smoothing": 0.0,
    "dropout": 0.0,
}


class TrainConfig(BaseModel):
    """Everything that determines a training run (besides the data)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="timm model name")
    pretrained: bool = False
    weights: Path | None = Field(default=None, description="local state-dict file")
    lr: float = Field(default=DEFAULTS["lr"], gt=0)
    batch_size: int = Field(default=DEFAULTS["batch_size"], ge=1)
    optimizer: str = DEFAULTS["optimizer"]
    weight_decay: float = Field(default=DEFAULTS["weight_decay"], ge=0)
    epochs: int = Field(default=DEFAULTS["epochs"], ge=1)
    scheduler: str = DEFAULTS["scheduler"]
    augmentation: str = DEFAULTS["augmentation"]
    image_size: int = Field(default=DEFAULTS["image_size"], ge=8)
    label_smoothing: float = Field(default=DEFAULTS["label_smoothing"], ge=0, le=1)
    dropout: float = Field(default=DEFAULTS["dropout"], ge=0, le=1)
    class_weighting: str = Field(
        default="none", description="'balanced': cross-entropy weighted by 1 / class frequency"
    )
    finetune: str = Field(default="full", description="full, last_stages or linear_probe")
    early_stopping_patience: int | None = Field(
        default=3,
        ge=1,
        description="stop after this many epochs without a better val balanced accuracy",
    )
    seed: int = 0
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads")

    def model_post_init(self, __context: Any) -> None:
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("scheduler", SCHEDULERS),
            ("augmentation", AUGMENTATIONS),
            ("class_weighting", CLASS_WEIGHTINGS),
            ("finetune", FINETUNES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"{name}={value!r} is not supported by the trainer; use one of "
                    f"{', '.join(allowed)}"
                )

    @classmethod
    def from_hyperparameters(cls, model: str, hp: Hyperparameters, **settings: Any) -> TrainConfig:
        """Fill unset hyperparameters with :data:`DEFAULTS`; ``settings`` sets the rest."""
        values = {k: getattr(hp, k) for k in DEFAULTS if getattr(hp, k) is not None}
        patience = hp.extra.get("early_stopping_patience")
        if patience is not None and "early_stopping_patience" not in settings:
            settings["early_stopping_patience"] = int(patience)
        for name in ("class_weighting", "finetune"):
            value = hp.extra.get(name)
            if value is not None and name not in settings:
                settings[name] = str(value)
        try:
            return cls(model=model, **{**values, **settings})
        except ValueError as exc:
            raise ConfigError(f"invalid training configuration for {model}: {exc}") from exc

    def hyperparameters(self) -> Hyperparameters:
        """The tunable part, as recorded in the knowledge base."""
        extra: dict[str, Any] = {}
        if self.early_stopping_patience is not None:
            extra["early_stopping_patience"] = self.early_stopping_patience
        extra["class_weighting"] = self.class_weighting
        if self.pretrained or self.weights is not None:
            extra["finetune"] = self.finetune
        return Hyperparameters(**{k: getattr(self, k) for k in DEFAULTS}, extra=extra)


@dataclass
class ArraySplits:
    """Train / validation / test images (uint8, N x H x W x C) and int64 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    n_classes: int | None = None

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            x = getattr(self, f"{name}_x")
            y = getattr(self, f"{name}_y")
            if x is None and name == "test":
                continue
            if x is None or y is None:
                raise DatasetError(f"the {name} split has no images or no labels")
            if x.ndim == 3:
                x = x[..., None]
                setattr(self, f"{name}_x", x)
            if x.ndim != 4:
                raise DatasetError(
                    f"{name} images must be N x H x W (x C) arrays, got shape {x.shape}"
                )
            if len(x) != len(y):
                raise DatasetError(
                    f"{name} split has {len(x)} images but {len(y)} labels; they must match"
                )
            if len(x) == 0:
                raise DatasetError(f"the {name} split is empty")
        if self.n_classes is None:
            labels = [self.train_y, self.val_y] + ([self.test_y] if self.test_y is not None else [])
            self.n_classes = int(max(int(np.max(y)) for y in labels)) + 1
        if len(np.unique(self.train_y)) < 2:
            raise DatasetError("the training split has a single class; nothing to learn")

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[-1])


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    val_balanced_accuracy: float = 0.0
    val_macro_f1: float = 0.0


@dataclass
class TrainResult:
    """What a run achieved. Accuracies are fractions; the reported model is the best epoch.

    The best epoch is the one with the highest validation balanced accuracy; ``macro_f1``,
    ``balanced_accuracy`` and ``macro_auc`` are test-split values (``None`` without a test
    split), the ``val_*`` ones are those of the best epoch on the validation split.
    """

    status: Literal["ok", "diverged"]
    val_accuracy: float | None
    test_accuracy: float | None
    macro_f1: float | None
    balanced_accuracy: float | None
    train_seconds: float
    seconds_per_epoch: float | None
    epochs_run: int
    best_epoch: int | None
    history: list[EpochStats] = field(default_factory=list)
    confusion: np.ndarray | None = None
    n_parameters: int = 0
    n_train: int = 0
    message: str = ""
    val_balanced_accuracy: float | None = None
    val_macro_f1: float | None = None
    val_macro_auc: float | None = None
    macro_auc: float | None = None
    n_trainable: int = 0
    feature_seconds: float | None = None
    features_cached: bool = False
    paused: bool = False  # stopped at a checkpoint before its last epoch (to continue)
    # epochs restored from a checkpoint rather than trained by this call
    resumed_epochs: int = 0

    @property
    def learning_curve(self) -> list[float]:
        return [h.val_accuracy for h in self.history]

    @property
    def balanced_learning_curve(self) -> list[float]:
        return [h.val_balanced_accuracy for h in self.history]

    @property
    def test_balanced_accuracy(self) -> float | None:
        return self.balanced_accuracy


ProgressFn = Callable[[EpochStats], None]


def _set_seed(seed: int) -> None:

    import torch  # heavy: torch loads only when something trains

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def create_model(config: TrainConfig, n_classes: int, channels: int) -> Any:
    """A timm model; pretrained weights from a file, timm's cache/hub, or none.

    Unavailable weights are a :class:`ModelUnavailableError` naming the way out
    (``pretrained=False`` or ``--weights FILE``) instead of a network stack trace.
    """
    import timm  # heavy: timm (and torch) load only when a model is built
    import torch  # heavy: torch loads only when something trains

    if not timm.is_model(config.model):
        raise ConfigError(
            f"unknown timm model {config.model!r}; see `timm.list_models()` for valid names"
        )
    kwargs: dict[str, Any] = {
        "num_classes": n_classes,
        "in_chans": channels,
        "drop_rate": config.dropout,
    }
    if config.weights is not None:
        model = timm.create_model(config.model, pretrained=False, **kwargs)
        _load_weights(model, config.weights)
        return model
    if not config.pretrained:
        return timm.create_model(config.model, pretrained=False, **kwargs)
    if pretrained_weights.has_local_weights(config.model):  # offline, checked mapping
        model = timm.create_model(config.model, pretrained=False, **kwargs)
        pretrained_weights.load_imagenet(model, config.model, channels)
        return model
    try:
        return timm.create_model(config.model, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError, torch.serialization.pickle.UnpicklingError) as exc:
        raise ModelUnavailableError(
            f"pretrained weights for {config.model} are not available "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
            "train from scratch with pretrained=False, or pass a local file with --weights"
        ) from exc
    except Exception as exc:  # hub clients raise their own types when offline
        raise ModelUnavailableError(
            f"pretrained weights for {config.model} could not be fetched "
            f"({type(exc).__name__}); train from scratch with pretrained=False, "
            "or pass a local file with --weights"
        ) from exc


def _load_weights(model: Any, path: Path) -> None:
    """Load a state dict, dropping tensors whose shape differs (classifier, stem channels)."""
    import torch  # heavy: torch loads only when something trains

    if not path.is_file():
        raise ModelUnavailableError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelUnavailableError(
            f"cannot read weights file {path}: {exc}; give a torch state-dict (.pth)"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"{path} does not hold a state dict")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ModelUnavailableError(
            f"no tensor in {path} matches {type(model).__name__}; is it for another model?"
        )
    model.load_state_dict(usable, strict=False)


def _to_tensor(images: np.ndarray, size: int) -> Any:
    """uint8 N x H x W x C -> float N x C x size x size in [0, 1], resized once up front."""
    import torch  # heavy: torch loads only when something trains
    import torch.nn.functional as F  # heavy: as torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x.contiguous()


def _augment(x: Any, level: str, generator: Any) -> Any:
    """Batched augmentation: flips and padded crops (light), plus affine + intensity (medium)."""
    import torch  # heavy: torch loads only when something trains
    import torch.nn.functional as F  # heavy: as torch

    if level == "none":
        return x
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if level == "light":
        pad = max(1, h // 8)
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
        return padded[:, :, dy : dy + h, dx : dx + w]
    angle = (torch.rand(n, generator=generator) - 0.5) * (2 * math.pi * 15 / 180)
    scale = 1.0 + (torch.rand(n, generator=generator) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    contrast = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.4
    brightness = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.2
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)


def _optimizer(config: TrainConfig, model: Any) -> Any:
    import torch  # heavy: torch loads only when something trains

    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, optimizer: Any) -> Any | None:
    """Stepped once per epoch: cosine to zero, or /10 at 1/2 and 3/4 of the epochs."""
    import torch  # heavy: torch loads only when something trains

    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "step":
        milestones = sorted({max(1, config.epochs // 2), max(1, (3 * config.epochs) // 4)})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return None


def _recalibrate_batchnorm(model: Any, x: Any, batch: int) -> None:
    """Re-estimate batch-norm running statistics on training images ("precise BN").

    From scratch and over few steps, the running averages lag far behind the fast-moving
    weights, and eval-mode predictions collapse to one class even when training accuracy is
    high. One gradient-free pass with a cumulative average fixes that for a fraction of an
    epoch's cost: :func:`torch.optim.swa_utils.update_bn`.

    ``update_bn`` resets *every* batch-norm layer of the module it is given and puts that
    module in train mode. A linear probe or a partial fine-tune must keep its frozen
    backbone's pretrained statistics (they describe ImageNet features the head was trained
    on), so it is given :func:`_trainable_norms`: a module whose only submodules are the
    batch-norm layers with trainable parameters and whose forward runs the whole network,
    which is put in its training mode first (frozen blocks stay in eval, ``_freeze_modes``).
    """
    import torch  # heavy: torch loads only when something trains

    norms = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and any(p.requires_grad for p in m.parameters())  # frozen layers keep their stats
    ]
    if not norms:
        return
    model.train()
    _freeze_modes(model)
    chunks = [x[i : i + batch] for i in range(0, len(x), batch)]
    torch.optim.swa_utils.update_bn(
        [c for c in chunks if len(c) > 1],  # batch-norm cannot train on one image
        _trainable_norms(model, norms),
    )


def _trainable_norms(model: Any, norms: list[Any]) -> Any:
    """The network seen through its trainable batch-norm layers (see _recalibrate_batchnorm)."""
    import torch  # heavy: torch loads only when something trains

    class TrainableNorms(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norms = torch.nn.ModuleList(norms)  # what update_bn resets and re-estimates
            self._network = (model,)  # a tuple: not a submodule, so left as it is

        def forward(self, x: Any) -> Any:
            return self._network[0](x)

    return TrainableNorms()


def _predict(model: Any, x: Any, batch: int) -> Any:
    """Logits for all of ``x`` in eval mode, without gradients."""
    import torch  # heavy: torch loads only when something trains

    model.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            outs.append(model(x[i : i + batch]))
    return torch.cat(outs).float()


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int
) -> tuple[float, float, float, np.ndarray]:
    """Accuracy, macro-F1 and balanced accuracy (over classes present), and the confusion."""
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    tp = np.diag(confusion).astype(float)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    accuracy = float(tp.sum() / max(1, confusion.sum()))
    return accuracy, float(f1[present].mean()), float(recall[present].mean()), confusion


def macro_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC over the classes present (rank formula, ties averaged).

    ``None`` when fewer than two classes are present (AUC is undefined).
    """
    from scipy.stats import rankdata  # heavy: SciPy loads only for AUC

    aucs: list[float] = []
    for k in np.unique(y_true):
        positive = y_true == k
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(scores[:, int(k)])
        aucs.append(float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)))
    return float(np.mean(aucs)) if aucs else None


@dataclass
class Evaluation:
    """Metrics of one set of logits against labels."""

    loss: float
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    auc: float | None
    confusion: np.ndarray

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss)


def evaluate(logits: Any, labels: np.ndarray, n_classes: int) -> Evaluation:
    """Loss, accuracy, balanced accuracy, macro-F1 and macro AUC of ``logits``."""
    import torch  # heavy: torch loads only when something trains
    import torch.nn.functional as F  # heavy: as torch

    loss = float(F.cross_entropy(logits, torch.from_numpy(labels)))
    if not math.isfinite(float(logits.sum())):
        loss = math.nan
    probs = torch.softmax(logits, 1).numpy()
    acc, f1, bal, confusion = classification_metrics(labels, probs.argmax(1), n_classes)
    auc = macro_auc(labels, probs) if math.isfinite(loss) else None
    return Evaluation(loss, acc, bal, f1, auc, confusion)


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``n / (k * count_c)`` for each class present in ``labels`` (1 for absent classes)."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def _trainable_prefixes(model: Any, finetune: str) -> list[str] | None:
    """Parameter-name prefixes that train under ``finetune``; ``None`` means everything."""
    if finetune == "full":
        return None
    head = [n for n, _ in model.named_parameters() if n.startswith(_classifier_name(model))]
    if finetune == "linear_probe":
        return head
    if hasattr(model, "blocks") and hasattr(model, "conv_head"):  # EfficientNet family
        last = len(model.blocks)
        return [f"blocks.{last - 2}.", f"blocks.{last - 1}.", "conv_head.", "bn2.", *head]
    if hasattr(model, "stages"):
        return [f"stages.{len(model.stages) - 1}.", "head", "norm", *head]
    names = [n for n, _ in model.named_parameters()]
    return names[-max(1, len(names) // 4) :] + head


def _classifier_name(model: Any) -> str:
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier:
            return name
    return "classifier"


def _freeze(model: Any, finetune: str) -> int:
    """Freeze what ``finetune`` does not train; the number of trainable parameters."""
    prefixes = _trainable_prefixes(model, finetune)
    trainable = 0
    for name, param in model.named_parameters():
        train = prefixes is None or any(name.startswith(p) for p in prefixes)
        param.requires_grad_(train)
        trainable += param.numel() if train else 0
    return trainable


def _freeze_modes(model: Any) -> None:
    """Batch-norm layers whose parameters are all frozen stay in eval mode while training."""
    import torch  # heavy: torch loads only when something trains

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()


def _normaliser(config: TrainConfig, model: Any, train_x: Any) -> tuple[Any, Any]:
    """Input mean/std: the pretrained weights' own, else the training split's per channel."""
    import torch  # heavy: torch loads only when something trains

    channels = train_x.shape[1]
    if config.pretrained and config.weights is None:
        if pretrained_weights.has_local_weights(config.model):
            m, s = pretrained_weights.normalisation(config.model)
            mean_v, std_v = [m] * channels, [s] * channels
        else:
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            mean_v = list(cfg.get("mean", (0.5,) * 3))
            std_v = list(cfg.get("std", (0.5,) * 3))
            if channels != len(mean_v):
                mean_v = [float(np.mean(mean_v))] * channels
                std_v = [float(np.mean(std_v))] * channels
        mean = torch.tensor(mean_v, dtype=torch.float32).view(1, channels, 1, 1)
        std = torch.tensor(std_v, dtype=torch.float32).view(1, channels, 1, 1)
        return mean, std
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
    return mean, std


class FeatureCache:
    """Frozen-backbone features per image, so many linear-probe configurations are cheap.

    Keyed by (model, weights, image size, channels) and, within that, by a digest of each
    raw image, so derived tasks (class subsets, subsamples) reuse their source's features.
    Features only depend on the image because pretrained inputs use the weights' fixed
    normalisation. ``directory`` also keeps them on disk across processes (a resumed build).
    Extraction cost per image is remembered so a cached run can report what it would cost.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._store: dict[str, dict[bytes, np.ndarray]] = {}
        self._seconds_per_image: dict[str, float] = {}

    @staticmethod
    def digests(images: np.ndarray) -> list[bytes]:

        return [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images]

    def _file(self, key: str) -> Path | None:
        if self.directory is None:
            return None

        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".npz")

    def _table(self, key: str) -> dict[bytes, np.ndarray]:
        if key not in self._store:
            table: dict[bytes, np.ndarray] = {}
            path = self._file(key)
            if path is not None and path.is_file():
                self._read(path, key, table)
            self._store[key] = table
        return self._store[key]

    def features(
        self, key: str, images: np.ndarray, extract: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray, float, bool]:
        """Features of ``images`` (N x D), the extraction seconds they cost, whether all hit.

        Missing rows are extracted in one call; the seconds of cached rows are estimated at
        the measured per-image rate.
        """
        table = self._table(key)
        digests = self.digests(images)
        missing = list(dict.fromkeys(d for d in digests if d not in table))
        spent = 0.0
        if missing:
            index = {d: i for i, d in reversed(list(enumerate(digests)))}
            rows = [index[d] for d in missing]
            start = time.perf_counter()
            feats = extract(images[rows])
            spent = time.perf_counter() - start
            self._seconds_per_image[key] = spent / len(rows)
            for d, row in zip(missing, feats, strict=True):
                table[d] = row
            self._save(key)
        rate = self._seconds_per_image.get(key, 0.0)
        seconds = spent + rate * (len(images) - len(missing))
        return np.stack([table[d] for d in digests]), seconds, not missing

    def _read(self, path: Path, key: str, table: dict[bytes, np.ndarray]) -> None:
        """Fill ``table`` from ``path`` only if we wrote it and it is unchanged since (its
        sha256 in the folder's manifest, see :func:`metallmix.atomic.read_recorded`), read
        without pickles; otherwise the features are extracted again and the file rewritten.
        A planted or swapped file would feed a run wrong features, or run code."""
        import io
        import logging

        blob, refused = read_recorded(path)
        if blob is not None:
            try:
                with np.load(io.BytesIO(blob), allow_pickle=False) as data:
                    rows: dict[bytes, np.ndarray] = {}
                    for digest, row in zip(data["digests"], data["features"], strict=True):
                        rows[bytes(digest)] = row
                    self._seconds_per_image[key] = float(data["seconds_per_image"])
                table.update(rows)
                return
            except (OSError, ValueError, KeyError) as exc:
                refused = f"{path} is not a feature cache ({exc})"
        logging.getLogger(__name__).warning(
            "feature cache %s not used (%s); extracting again", path, refused
        )

    def _save(self, key: str) -> None:
        import io

        path = self._file(key)
        if path is None:
            return
        table = self._store[key]
        buffer = io.BytesIO()
        np.savez(
            buffer,
            digests=np.array([np.frombuffer(d, dtype=np.uint8) for d in table]),
            features=np.stack(list(table.values())),
            seconds_per_image=np.array(self._seconds_per_image.get(key, 0.0)),
        )
        write_recorded(path, buffer.getvalue())


# The process-wide cache used when :func:`train` is not given one.
FEATURE_CACHE = FeatureCache()


def _extractor(model: Any, size: int, mean: Any, std: Any, batch: int) -> Any:
    """uint8 images -> pooled pre-logit features of the frozen ``model`` (numpy, float32)."""
    import torch  # heavy: torch loads only when something trains

    def extract(images: np.ndarray) -> np.ndarray:
        model.eval()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = (_to_tensor(images[i : i + batch], size) - mean) / std
                feats = model.forward_head(model.forward_features(x), pre_logits=True)
                outs.append(feats.float().numpy())
        return np.concatenate(outs).astype(np.float32)

    return extract


def frozen_features(
    model_name: str,
    images: np.ndarray,
    *,
    image_size: int,
    cache: FeatureCache | None = None,
    batch: int = 128,
) -> tuple[np.ndarray, float]:
    """Pooled pre-logit features (N x D) of the ImageNet-pretrained ``model_name`` for uint8
    ``images`` (N x H x W x C), and the seconds they cost.

    The linear probe's own extraction (same model, normalisation and cache key), so a
    dataset's landmarks (tools/meta/landmarks.py) and a later probe of the same images share
    one extraction instead of two extractors drifting apart.
    """
    config = TrainConfig(
        model=model_name, pretrained=True, image_size=image_size, finetune="linear_probe"
    )
    channels = int(images.shape[-1])
    model = create_model(config, 2, channels)  # the head is unused: pre-logit features
    mean, std = _normaliser(config, model, _to_tensor(images[:2], image_size))
    key = f"{config.model}|imagenet|{image_size}|{channels}"  # as in _train_probe
    extract = _extractor(model, image_size, mean, std, batch)
    feats, seconds, _ = (cache if cache is not None else FEATURE_CACHE).features(
        key, images, extract
    )
    return feats, seconds


class _BestEpoch:
    """Tracks the best epoch by validation balanced accuracy and decides early stopping."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.score = -1.0
        self.epoch: int | None = None
        self.state: Any = None
        self.val: Evaluation | None = None

    def update(self, epoch: int, val: Evaluation, state: Callable[[], Any]) -> bool:
        """Record ``epoch``; True when training should stop."""
        if val.balanced_accuracy > self.score:
            self.score, self.epoch, self.val = val.balanced_accuracy, epoch, val
            self.state = copy.deepcopy(state())
            return False
        return (
            self.patience is not None
            and self.epoch is not None
            and epoch - self.epoch >= self.patience
        )


def train(
    config: TrainConfig,
    data: ArraySplits,
    *,
    progress: ProgressFn | None = None,
    feature_cache: FeatureCache | None = None,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``data``; the reported metrics are those of the best epoch.

    The validation split's balanced accuracy picks the best epoch and drives early stopping;
    the test split is evaluated once, with the best weights. A non-finite loss ends the run
    as ``diverged``. ``finetune='linear_probe'`` (pretrained models) trains a linear head on
    frozen features, taken from ``feature_cache`` when already computed. ``checkpoint``
    continues a paused run of this configuration and/or pauses it after some epochs
    (:mod:`~metallmix.tools.training.checkpoint`): what successive halving promotes goes on
    instead of starting over.
    """
    import torch  # heavy: torch loads only when something trains

    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        _set_seed(config.seed)
        n_classes = int(data.n_classes or 0)
        model = create_model(config, n_classes, data.channels)
        pretrained = config.pretrained or config.weights is not None
        finetune = config.finetune if pretrained else "full"
        if finetune == "linear_probe":
            return _train_probe(
                config, data, model, progress, feature_cache or FEATURE_CACHE, checkpoint
            )
        n_trainable = _freeze(model, finetune)
        return _train_network(config, data, model, progress, n_trainable, checkpoint)
    finally:
        torch.set_num_threads(previous_threads)


def _loss_fn(config: TrainConfig, labels: np.ndarray, n_classes: int) -> Any:
    import torch  # heavy: torch loads only when something trains
    import torch.nn.functional as F  # heavy: as torch

    weight = None
    if config.class_weighting == "balanced":
        weight = torch.tensor(class_weights(labels, n_classes), dtype=torch.float32)

    def loss(logits: Any, target: Any) -> Any:
        return F.cross_entropy(
            logits, target, weight=weight, label_smoothing=config.label_smoothing
        )

    return loss


def _stats(
    epoch: int, loss: float, correct: int, seen: int, val: Evaluation, lr: float, start: float
) -> EpochStats:
    return EpochStats(
        epoch=epoch,
        train_loss=loss / max(1, seen),
        train_accuracy=correct / max(1, seen),
        val_loss=val.loss,
        val_accuracy=val.accuracy,
        lr=lr,
        seconds=time.perf_counter() - start,
        val_balanced_accuracy=val.balanced_accuracy,
        val_macro_f1=val.macro_f1,
    )


def _result(
    status: Literal["ok", "diverged"],
    message: str,
    best: _BestEpoch,
    history: list[EpochStats],
    started: float,
    n_parameters: int,
    n_trainable: int,
    n_train: int,
    loop: _Loop | None = None,
) -> TrainResult:
    val = best.val
    restored = loop.restored if loop is not None else 0
    before = sum(h.seconds for h in history[:restored])  # trained by the paused run
    return TrainResult(
        status=status,
        val_accuracy=val.accuracy if val is not None else None,
        test_accuracy=None,
        macro_f1=None,
        balanced_accuracy=None,
        train_seconds=time.perf_counter() - started + before,
        seconds_per_epoch=(sum(h.seconds for h in history) / len(history)) if history else None,
        epochs_run=len(history),
        best_epoch=best.epoch,
        history=history,
        n_parameters=n_parameters,
        n_trainable=n_trainable,
        n_train=n_train,
        message=message,
        val_balanced_accuracy=val.balanced_accuracy if val is not None else None,
        val_macro_f1=val.macro_f1 if val is not None else None,
        val_macro_auc=val.auc if val is not None else None,
        paused=loop.paused if loop is not None else False,
        resumed_epochs=restored,
    )


def _set_test(result: TrainResult, test: Evaluation) -> None:
    result.test_accuracy = test.accuracy
    result.macro_f1 = test.macro_f1
    result.balanced_accuracy = test.balanced_accuracy
    result.macro_auc = test.auc
    result.confusion = test.confusion


@dataclass
class _Loop:
    """How the epoch loop ended: status, message, best epoch, history, and checkpointing."""

    status: Literal["ok", "diverged"]
    message: str
    best: _BestEpoch
    history: list[EpochStats]
    paused: bool = False
    restored: int = 0  # leading epochs of ``history`` that came from a checkpoint


def _rng_states(generator: Any) -> dict[str, Any]:
    import torch  # heavy: torch loads only when something trains

    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_states(generator: Any, states: dict[str, Any]) -> None:
    import torch  # heavy: torch loads only when something trains

    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def _run_epochs(
    config: TrainConfig,
    data: ArraySplits,
    trained: Any,
    *,
    train_mode: Callable[[], Any],
    forward: Callable[[Any, Any], Any],
    validate: Callable[[Any], Evaluation],
    progress: ProgressFn | None,
    min_batch: int = 1,
    checkpoint: Checkpoint | None = None,
) -> _Loop:
    """The one epoch loop of the network and the probe: shuffle, step, validate, stop early.

    ``trained`` is the module whose parameters are optimised (and whose best weights are
    kept). ``forward(indices, generator)`` gives the training logits of a batch,
    ``validate(order)`` the validation evaluation after the epoch (``order`` is the epoch's
    shuffle). The seeded generator is drawn in the same order as ever (one permutation per
    epoch, then whatever ``forward`` draws), so seeded runs stay identical. With a
    ``checkpoint`` the loop first restores a paused state of this run (weights, optimiser,
    schedule, best epoch, history, every random stream: the continuation equals an
    uninterrupted run) and saves its state when it pauses or ends.
    """
    import torch  # heavy: torch loads only when something trains

    train_y_np = np.asarray(data.train_y, dtype=np.int64)
    train_y = torch.from_numpy(train_y_np)
    loss_fn = _loss_fn(config, train_y_np, int(data.n_classes or 0))
    optimizer = _optimizer(config, trained)
    scheduler = _scheduler(config, optimizer)
    generator = torch.Generator().manual_seed(config.seed)
    batch = min(config.batch_size, len(train_y))
    loop = _Loop("ok", "", _BestEpoch(config.early_stopping_patience), [])
    best, history = loop.best, loop.history
    key = ""
    finished = False
    if checkpoint is not None:
        key = checkpoints.fingerprint(
            config.model_dump(mode="json"), train_y_np, tuple(data.train_x.shape)
        )
        state = checkpoints.load(
            checkpoint.path,
            key=key,
            classes={"EpochStats": EpochStats, "Evaluation": Evaluation},
        )
        if state is not None:
            trained.load_state_dict(state["trained"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state["scheduler"] is not None:
                scheduler.load_state_dict(state["scheduler"])
            _set_rng_states(generator, state["rng"])
            best.score, best.epoch = state["best_score"], state["best_epoch"]
            best.state, best.val = state["best_state"], state["best_val"]
            history.extend(state["history"])
            loop.status, loop.message = state["status"], state["message"]
            loop.restored = len(history)
            finished = bool(state["finished"])
            if progress is not None:  # the continued run's record carries the whole curve
                for stats in history:
                    progress(stats)
    stop_after = checkpoint.stop_after if checkpoint is not None else None
    first = len(history) + 1
    if not finished and stop_after is not None and len(history) >= stop_after:
        finished = True  # a retried first rung: its pause is already saved, nothing to train
        loop.paused = True
    for epoch in range(first, 0 if finished else config.epochs + 1):
        epoch_start = time.perf_counter()
        train_mode()
        order = torch.randperm(len(train_y), generator=generator)
        total_loss, correct, seen = 0.0, 0, 0
        lr = float(optimizer.param_groups[0]["lr"])
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            if len(idx) < min_batch and seen > 0:
                continue
            yb = train_y[idx]
            logits = forward(idx, generator)
            loss = loss_fn(logits, yb)
            if not torch.isfinite(loss):
                loop.status, loop.message = "diverged", f"non-finite loss in epoch {epoch}"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == yb).sum())
            seen += len(idx)
        if loop.status == "diverged":
            finished = True
            break
        if scheduler is not None:
            scheduler.step()
        val = validate(order)
        if not val.finite:
            loop.status = "diverged"
            loop.message = f"non-finite validation output in epoch {epoch}"
            finished = True
            break
        stats = _stats(epoch, total_loss, correct, seen, val, lr, epoch_start)
        history.append(stats)
        if progress is not None:
            progress(stats)
        if best.update(epoch, val, trained.state_dict):
            loop.message = f"early stop after epoch {epoch} (best {best.epoch})"
            finished = True
            break
        if stop_after is not None and epoch >= stop_after and epoch < config.epochs:
            loop.paused = True
            loop.message = f"paused after epoch {epoch} of {config.epochs} (checkpoint saved)"
            break
    else:
        finished = not loop.paused
    if checkpoint is not None and stop_after is not None and len(history) > loop.restored:
        checkpoints.save(
            checkpoint.path,
            {
                "trained": trained.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": _rng_states(generator),
                "best_score": best.score,
                "best_epoch": best.epoch,
                "best_state": best.state,
                "best_val": best.val,
                "history": history,
                "status": loop.status,
                "message": loop.message,
                "finished": finished,
            },
            key=key,
        )
    return loop


def _train_network(
    config: TrainConfig,
    data: ArraySplits,
    model: Any,
    progress: ProgressFn | None,
    n_trainable: int,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Gradient training of the (partly frozen) network on augmented batches."""

    n_classes = int(data.n_classes or 0)
    size = config.image_size
    train_x = _to_tensor(data.train_x, size)
    val_x = _to_tensor(data.val_x, size)
    mean, std = _normaliser(config, model, train_x)
    val_y = np.asarray(data.val_y, dtype=np.int64)
    batch = min(config.batch_size, len(train_x))
    started = time.perf_counter()
    try:  # fail fast (before any training) when the image size is too small
        _predict(model, (train_x[:2] - mean) / std, 2)
    except RuntimeError as exc:
        raise ConfigError(
            f"{config.model} cannot run at image_size={size} "
            f"({str(exc).splitlines()[0][:120]}); choose a larger image_size"
        ) from exc

    def train_mode() -> None:
        model.train()
        _freeze_modes(model)

    def validate(order: Any) -> Evaluation:
        calib = order[:BN_CALIBRATION_IMAGES]
        _recalibrate_batchnorm(model, (train_x[calib] - mean) / std, max(batch, 64))
        return evaluate(_predict(model, (val_x - mean) / std, max(batch, 128)), val_y, n_classes)

    loop = _run_epochs(
        config,
        data,
        model,
        train_mode=train_mode,
        forward=lambda idx, generator: model(
            (_augment(train_x[idx], config.augmentation, generator) - mean) / std
        ),
        validate=validate,
        progress=progress,
        min_batch=2,  # batch-norm cannot train on one image
        checkpoint=checkpoint,
    )
    best = loop.best
    result = _result(
        loop.status,
        loop.message,
        best,
        loop.history,
        started,
        sum(p.numel() for p in model.parameters()),
        n_trainable,
        len(train_x),
        loop,
    )
    if best.state is not None and data.test_x is not None and data.test_y is not None:
        model.load_state_dict(best.state)
        test_x = (_to_tensor(data.test_x, size) - mean) / std
        test_y = np.asarray(data.test_y, dtype=np.int64)
        _set_test(result, evaluate(_predict(model, test_x, max(batch, 128)), test_y, n_classes))
    return result


def _train_probe(
    config: TrainConfig,
    data: ArraySplits,
    model: Any,
    progress: ProgressFn | None,
    cache: FeatureCache,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """A linear head (with dropout) on frozen, cached backbone features.

    Augmentation does not apply (features are computed once per image); the head is
    trained with the configured optimiser, schedule, loss and early stopping.
    """
    import torch  # heavy: torch loads only when something trains

    n_classes = int(data.n_classes or 0)
    size = config.image_size
    mean, std = _normaliser(config, model, _to_tensor(data.train_x[:2], size))
    try:
        _predict(model, (_to_tensor(data.train_x[:2], size) - mean) / std, 2)
    except RuntimeError as exc:
        raise ConfigError(
            f"{config.model} cannot run at image_size={size} "
            f"({str(exc).splitlines()[0][:120]}); choose a larger image_size"
        ) from exc
    weights = str(config.weights) if config.weights is not None else "imagenet"
    key = f"{config.model}|{weights}|{size}|{data.channels}"
    extract = _extractor(model, size, mean, std, 128)
    feature_seconds = 0.0
    cached = True
    splits: dict[str, Any] = {}
    for name in ("train", "val", "test"):
        images = getattr(data, f"{name}_x")
        if images is None:
            continue
        feats, seconds, hit = cache.features(key, images, extract)
        feature_seconds += seconds
        cached = cached and hit
        splits[name] = torch.from_numpy(feats)
    head_start = time.perf_counter()
    train_f, val_f = splits["train"], splits["val"]
    f_mean = train_f.mean(0, keepdim=True)
    f_std = train_f.std(0, keepdim=True).clamp_min(1e-4)
    head = torch.nn.Sequential(
        torch.nn.Dropout(config.dropout), torch.nn.Linear(train_f.shape[1], n_classes)
    )
    val_y = np.asarray(data.val_y, dtype=np.int64)
    x_train = (train_f - f_mean) / f_std
    x_val = (val_f - f_mean) / f_std

    def validate(order: Any) -> Evaluation:
        head.eval()
        with torch.inference_mode():
            return evaluate(head(x_val).float(), val_y, n_classes)

    loop = _run_epochs(
        config,
        data,
        head,
        train_mode=head.train,
        forward=lambda idx, generator: head(x_train[idx]),
        validate=validate,
        progress=progress,
        checkpoint=checkpoint,
    )
    best = loop.best
    backbone = sum(p.numel() for p in model.parameters())
    head_params = sum(p.numel() for p in head.parameters())
    result = _result(
        loop.status,
        loop.message,
        best,
        loop.history,
        head_start,
        backbone,
        head_params,
        len(train_f),
        loop,
    )
    # Cost as a user would pay it: extraction (measured, or estimated at the measured rate
    # when the features were cached) plus the head's training.
    restored = sum(h.seconds for h in loop.history[: loop.restored])  # the paused run's
    result.train_seconds = feature_seconds + (time.perf_counter() - head_start) + restored
    result.feature_seconds = feature_seconds
    result.features_cached = cached
    if best.state is not None and "test" in splits and data.test_y is not None:
        head.load_state_dict(best.state)
        head.eval()
        with torch.inference_mode():
            logits = head((splits["test"] - f_mean) / f_std).float()
        _set_test(result, evaluate(logits, np.asarray(data.test_y, dtype=np.int64), n_classes))
    return result
