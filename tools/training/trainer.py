"""Pure training: fine-tune a timm model on in-memory arrays, no MLflow, no KB.

Kept free of logging side effects so that validation runs, Optuna searches and the KB build
all share one training loop and differ only in what they record. Data lives as tensors for
the whole run (the datasets here are small), augmentation is batched tensor arithmetic, and
the loop is CPU-first: ``torch.set_num_threads`` is a parameter because the machines this
runs on are often shared.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from metallmix.errors import ConfigError, DatasetError, ModelUnavailableError
from metallmix.tools.kb.records import Hyperparameters

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "step", "none")
AUGMENTATIONS = ("none", "light", "medium")

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
    early_stopping_patience: int | None = Field(
        default=3, ge=1, description="stop after this many epochs without a better val accuracy"
    )
    seed: int = 0
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads")

    def model_post_init(self, __context: Any) -> None:
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("scheduler", SCHEDULERS),
            ("augmentation", AUGMENTATIONS),
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
        try:
            return cls(model=model, **{**values, **settings})
        except ValueError as exc:
            raise ConfigError(f"invalid training configuration for {model}: {exc}") from exc

    def hyperparameters(self) -> Hyperparameters:
        """The tunable part, as recorded in the knowledge base."""
        extra: dict[str, Any] = {}
        if self.early_stopping_patience is not None:
            extra["early_stopping_patience"] = self.early_stopping_patience
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


@dataclass
class TrainResult:
    """What a run achieved. Accuracies are fractions; the reported model is the best epoch."""

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

    @property
    def learning_curve(self) -> list[float]:
        return [h.val_accuracy for h in self.history]


ProgressFn = Callable[[EpochStats], None]


def _set_seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def create_model(config: TrainConfig, n_classes: int, channels: int) -> Any:
    """A timm model; pretrained weights from a file, timm's cache/hub, or none.

    Unavailable weights are a :class:`ModelUnavailableError` naming the way out
    (``pretrained=False`` or ``--weights FILE``) instead of a network stack trace.
    """
    import timm
    import torch

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
    import torch

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
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x.contiguous()


def _augment(x: Any, level: str, generator: Any) -> Any:
    """Batched augmentation: flips and padded crops (light), plus affine + intensity (medium)."""
    import torch
    import torch.nn.functional as F

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
    import torch

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
    import torch

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
    epoch's cost.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            chunk = x[i : i + batch]
            if len(chunk) > 1:
                model(chunk)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum


def _predict(model: Any, x: Any, batch: int) -> Any:
    """Logits for all of ``x`` in eval mode, without gradients."""
    import torch

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


def train(
    config: TrainConfig,
    data: ArraySplits,
    *,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``data``; the reported metrics are those of the best epoch.

    The validation split picks the best epoch and drives early stopping; the test split is
    evaluated once, with the best weights. A non-finite loss ends the run as ``diverged``.
    """
    import torch
    import torch.nn.functional as F

    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        _set_seed(config.seed)
        n_classes = int(data.n_classes or 0)
        model = create_model(config, n_classes, data.channels)
        size = config.image_size
        train_x = _to_tensor(data.train_x, size)
        val_x = _to_tensor(data.val_x, size)
        mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
        train_y = torch.from_numpy(np.asarray(data.train_y, dtype=np.int64))
        val_y = np.asarray(data.val_y, dtype=np.int64)
        optimizer = _optimizer(config, model)
        scheduler = _scheduler(config, optimizer)
        generator = torch.Generator().manual_seed(config.seed)
        batch = min(config.batch_size, len(train_x))
        history: list[EpochStats] = []
        best_acc, best_epoch, best_state = -1.0, None, None
        status: Literal["ok", "diverged"] = "ok"
        message = ""
        started = time.perf_counter()
        try:  # fail fast (before any training) when the image size is too small
            _predict(model, (train_x[:2] - mean) / std, 2)
        except RuntimeError as exc:
            raise ConfigError(
                f"{config.model} cannot run at image_size={size} "
                f"({str(exc).splitlines()[0][:120]}); choose a larger image_size"
            ) from exc
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            order = torch.randperm(len(train_x), generator=generator)
            total_loss, correct, seen = 0.0, 0, 0
            lr = float(optimizer.param_groups[0]["lr"])
            for i in range(0, len(order), batch):
                idx = order[i : i + batch]
                if len(idx) < 2 and seen > 0:  # batch-norm cannot train on one image
                    continue
                xb = (_augment(train_x[idx], config.augmentation, generator) - mean) / std
                yb = train_y[idx]
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
                if not torch.isfinite(loss):
                    status, message = "diverged", f"non-finite loss in epoch {epoch}"
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == yb).sum())
                seen += len(idx)
            if status == "diverged":
                break
            if scheduler is not None:
                scheduler.step()
            calib = order[:BN_CALIBRATION_IMAGES]
            _recalibrate_batchnorm(model, (train_x[calib] - mean) / std, max(batch, 64))
            logits = _predict(model, (val_x - mean) / std, max(batch, 128))
            val_loss = float(F.cross_entropy(logits, torch.from_numpy(val_y)))
            val_acc = float((logits.argmax(1).numpy() == val_y).mean())
            if not math.isfinite(val_loss) or not math.isfinite(float(logits.sum())):
                status, message = "diverged", f"non-finite validation output in epoch {epoch}"
                break
            stats = EpochStats(
                epoch=epoch,
                train_loss=total_loss / max(1, seen),
                train_accuracy=correct / max(1, seen),
                val_loss=val_loss,
                val_accuracy=val_acc,
                lr=lr,
                seconds=time.perf_counter() - epoch_start,
            )
            history.append(stats)
            if progress is not None:
                progress(stats)
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch
                best_state = copy.deepcopy(model.state_dict())
            elif (
                config.early_stopping_patience is not None
                and best_epoch is not None
                and epoch - best_epoch >= config.early_stopping_patience
            ):
                message = f"early stop after epoch {epoch} (best {best_epoch})"
                break
        train_seconds = time.perf_counter() - started
        result = TrainResult(
            status=status,
            val_accuracy=best_acc if best_epoch is not None else None,
            test_accuracy=None,
            macro_f1=None,
            balanced_accuracy=None,
            train_seconds=train_seconds,
            seconds_per_epoch=(sum(h.seconds for h in history) / len(history)) if history else None,
            epochs_run=len(history),
            best_epoch=best_epoch,
            history=history,
            n_parameters=sum(p.numel() for p in model.parameters()),
            n_train=len(train_x),
            message=message,
        )
        if best_state is not None and data.test_x is not None and data.test_y is not None:
            model.load_state_dict(best_state)
            test_x = (_to_tensor(data.test_x, size) - mean) / std
            logits = _predict(model, test_x, max(batch, 128))
            pred = logits.argmax(1).numpy()
            acc, f1, bal, confusion = classification_metrics(
                np.asarray(data.test_y, dtype=np.int64), pred, n_classes
            )
            result.test_accuracy, result.macro_f1, result.balanced_accuracy = acc, f1, bal
            result.confusion = confusion
        return result
    finally:
        torch.set_num_threads(previous_threads)
