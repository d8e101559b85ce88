"""Search spaces: which (model, hyperparameters) configurations a recommendation may propose.

One definition serves three readers: the shortlist samples candidates from it, the training
harness's Optuna search draws trials from it, and the judge checks that a recommended
configuration lies inside it. Two spaces ship: :data:`CPU_ZOO_SPACE` (tiny timm models we
train ourselves, from scratch, on CPU) and :data:`QUICKTUNE_SPACE` (the grid of the public
Quick-Tune meta-dataset: large pretrained models fine-tuned at 128 px).

Parameter names are :class:`~metallmix.tools.kb.records.Hyperparameters` core fields; any
other name lives in ``Hyperparameters.extra``. A hyperparameter the space does not define is
not constrained (public records carry many knobs we never tune).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from metallmix.errors import ConfigError
from metallmix.tools.kb.records import Hyperparameters, Scalar

# The typed core fields. (``Hyperparameters.CORE`` is declared as a pydantic field, so it is
# not reachable on the class; derive the list from the schema instead.)
HP_CORE: tuple[str, ...] = tuple(
    name for name in Hyperparameters.model_fields if name not in {"extra", "CORE"}
)


class FloatRange(BaseModel):
    """A continuous range; ``log`` samples uniformly in log space (learning rates, decays)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if not self.low <= self.high:
            raise ValueError(f"float range low={self.low} > high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log range needs low > 0, got {self.low}")
        return self

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def violation(self, value: Scalar) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number in [{self.low:g}, {self.high:g}], got {value!r}"
        tol = 1e-9 * max(1.0, abs(self.high))
        if not self.low - tol <= float(value) <= self.high + tol:
            return f"{value:g} is outside [{self.low:g}, {self.high:g}]"
        return None

    def describe(self) -> str:
        return f"{'log-uniform' if self.log else 'uniform'} [{self.low:g}, {self.high:g}]"


class IntRange(BaseModel):
    """An integer range, both ends included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["int"] = "int"
    low: int
    high: int

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if not self.low <= self.high:
            raise ValueError(f"int range low={self.low} > high={self.high}")
        return self

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def violation(self, value: Scalar) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected an integer in [{self.low}, {self.high}], got {value!r}"
        if float(value) != int(value):
            return f"expected an integer, got {value!r}"
        if not self.low <= int(value) <= self.high:
            return f"{value} is outside [{self.low}, {self.high}]"
        return None

    def describe(self) -> str:
        return f"integer [{self.low}, {self.high}]"


class Choice(BaseModel):
    """A finite set of values (categorical, or a numeric grid)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["choice"] = "choice"
    values: list[Scalar] = Field(min_length=1)

    def sample(self, rng: np.random.Generator) -> Scalar:
        return self.values[int(rng.integers(len(self.values)))]

    def violation(self, value: Scalar) -> str | None:
        for allowed in self.values:
            if allowed == value:
                return None
            if (
                isinstance(allowed, int | float)
                and isinstance(value, int | float)
                and not isinstance(allowed, bool)
                and math.isclose(float(allowed), float(value), rel_tol=1e-9)
            ):
                return None
        return f"{value!r} is not one of {self.values}"

    def describe(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values)


Param = Annotated[FloatRange | IntRange | Choice, Field(discriminator="kind")]


class SearchSpace(BaseModel):
    """Models and hyperparameter ranges a recommendation may come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    models: list[str] = Field(min_length=1, description="timm model names")
    pretrained: bool = Field(description="whether these models start from pretrained weights")
    params: dict[str, Param] = Field(description="hyperparameter name -> range or choice")
    fixed: dict[str, Scalar] = Field(
        default_factory=dict, description="values set on every sampled config, not checked"
    )
    pretrained_models: list[str] = Field(
        default_factory=list,
        description="models that start from pretrained weights even in a from-scratch space",
    )
    model_params: dict[str, dict[str, Param]] = Field(
        default_factory=dict,
        description="per-model ranges replacing or adding to ``params`` for that model",
    )

    def is_pretrained(self, model: str) -> bool:
        """Whether ``model`` starts from pretrained weights in this space."""
        return self.pretrained or model in self.pretrained_models

    def params_for(self, model: str) -> dict[str, Param]:
        """The ranges that apply to ``model``: the shared ones, overridden per model."""
        return {**self.params, **self.model_params.get(model, {})}

    def image_sizes(self) -> tuple[int, int] | None:
        """(smallest, largest) training resolution (px) of the space's models, or None.

        Every run resizes its images to its ``image_size``, so a dataset's native resolution
        above the largest is invisible to the pipeline (and to what the KB knows).
        """
        fixed = self.fixed.get("image_size")
        sizes: list[float] = [float(fixed)] if isinstance(fixed, int | float) else []
        param = self.union_params().get("image_size")
        if isinstance(param, Choice):
            sizes += [float(v) for v in param.values if isinstance(v, int | float)]
        elif isinstance(param, IntRange | FloatRange):
            sizes += [float(param.low), float(param.high)]
        return (int(min(sizes)), int(max(sizes))) if sizes else None

    def union_params(self) -> dict[str, Param]:
        """One range per name covering every model's (for samplers with fixed distributions).

        A value drawn from it may lie outside one model's range: :meth:`project` it.
        """
        out: dict[str, Param] = dict(self.params)
        for model, params in self.model_params.items():
            if model not in self.models:  # a narrowed copy of the space (e.g. compare caps)
                continue
            for name, param in params.items():
                out[name] = _widen(out.get(name), param)
        return out

    def project(self, model: str, values: dict[str, Scalar]) -> dict[str, Scalar]:
        """``values`` made valid for ``model``: out-of-range values moved to the nearest
        allowed one, names the model does not use dropped (others pass through)."""
        params = self.params_for(model)
        union = self.union_params()
        out: dict[str, Scalar] = {}
        for name, value in values.items():
            if name not in params:
                if name not in union:
                    out[name] = value
                continue
            param = params[name]
            out[name] = value if param.violation(value) is None else _nearest(param, value)
        return out

    def sample(self, n: int, seed: int = 0) -> list[tuple[str, Hyperparameters]]:
        """``n`` random (model, hyperparameters) pairs; the same seed gives the same list."""
        if n < 0:
            raise ConfigError(f"cannot sample a negative number of configurations ({n})")
        rng = np.random.default_rng(seed)
        out: list[tuple[str, Hyperparameters]] = []
        for _ in range(n):
            model = self.models[int(rng.integers(len(self.models)))]
            values: dict[str, Scalar] = dict(self.fixed)
            for name, param in self.params_for(model).items():
                values[name] = param.sample(rng)
            out.append((model, make_hyperparameters(values)))
        return out

    def violations(self, model: str, hp: Hyperparameters) -> list[str]:
        """Why (model, hp) is outside this space; empty when it is inside."""
        problems: list[str] = []
        if model not in self.models:
            problems.append(
                f"model {model!r} is not in the {self.name} space ({', '.join(self.models)})"
            )
        flat = hp_values(hp)
        for name, param in self.params_for(model).items():
            value = flat.get(name)
            if value is None:
                continue
            reason = param.violation(value)
            if reason is not None:
                problems.append(f"{name}: {reason}")
        return problems

    def contains(self, model: str, hp: Hyperparameters) -> bool:
        """True when the model is in the zoo and every defined hyperparameter is in range.

        The reason for a False is given by :meth:`violations`; :meth:`check` raises it.
        """
        return not self.violations(model, hp)

    def check(self, model: str, hp: Hyperparameters) -> None:
        """Raise :class:`ConfigError` naming every out-of-space value."""
        problems = self.violations(model, hp)
        if problems:
            raise ConfigError(
                f"configuration is outside the {self.name} search space: "
                + "; ".join(problems)
                + ". Pick values inside the space (see `metallmix meta space`)."
            )

    def describe(self) -> dict[str, str]:
        """Readable ranges, for prompts and CLI output."""
        out = {"models": ", ".join(self.models), "pretrained": str(self.pretrained)}
        out.update({name: param.describe() for name, param in self.params.items()})
        if self.pretrained_models:
            out["pretrained models"] = ", ".join(self.pretrained_models)
        for model, params in self.model_params.items():
            for name, param in params.items():
                out[f"{name} ({model})"] = param.describe()
        return out


def _widen(a: Param | None, b: Param) -> Param:
    """The smallest range of ``b``'s kind covering ``a`` and ``b``."""
    if a is None:
        return b
    if isinstance(a, Choice) and isinstance(b, Choice):
        return Choice(values=list(dict.fromkeys([*a.values, *b.values])))
    if isinstance(a, IntRange) and isinstance(b, IntRange):
        return IntRange(low=min(a.low, b.low), high=max(a.high, b.high))
    if isinstance(a, FloatRange) and isinstance(b, FloatRange):
        return FloatRange(low=min(a.low, b.low), high=max(a.high, b.high), log=a.log and b.log)
    raise ConfigError(f"cannot merge a {a.kind} range with a {b.kind} range")


def _nearest(param: Param, value: Scalar) -> Scalar:
    """The allowed value of ``param`` closest to ``value`` (the first choice if not numeric)."""
    if isinstance(param, Choice):
        numeric = [
            v for v in param.values if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if numeric and isinstance(value, int | float) and not isinstance(value, bool):
            return min(numeric, key=lambda v: abs(float(v) - float(value)))
        return param.values[0]
    if not isinstance(value, int | float) or isinstance(value, bool):
        return param.low
    clipped = min(max(float(value), param.low), param.high)
    return round(clipped) if isinstance(param, IntRange) else clipped


def hp_values(hp: Hyperparameters) -> dict[str, Scalar]:
    """Core fields and extras under their own names (extras without the ``x_`` prefix)."""
    out: dict[str, Scalar] = {k: getattr(hp, k) for k in HP_CORE}
    for key, value in hp.extra.items():
        out.setdefault(key, value)
    return out


def make_hyperparameters(values: dict[str, Scalar]) -> Hyperparameters:
    """Split a flat mapping into core fields and ``extra``, validating both."""
    core = {k: v for k, v in values.items() if k in HP_CORE}
    extra = {k: v for k, v in values.items() if k not in HP_CORE}
    try:
        return Hyperparameters(**core, extra=extra)
    except ValueError as exc:  # pydantic's ValidationError: one line per problem, joined
        errors = getattr(exc, "errors", None)
        reason = (
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors())
            if callable(errors)
            else str(exc)
        )
        raise ConfigError(f"invalid hyperparameters {values}: {reason}") from exc


# EfficientNet-Lite0/1/2 start from ImageNet weights installed offline (the
# ``pretrained-weights`` extra, see tools/training/pretrained.py); the rest train from scratch.
PRETRAINED_LITE_MODELS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]

CPU_ZOO_MODELS = [
    "resnet10t",
    "resnet18",
    "mobilenetv3_small_100",
    "efficientnet_b0",
    "convnext_atto",
    "regnetx_002",
    "lcnet_050",
    *PRETRAINED_LITE_MODELS,
]

# Pretrained models run at 64-128 px (ImageNet features need some resolution) and choose how
# much of the network trains; a linear probe trains for more (cheap) epochs.
_LITE_PARAMS: dict[str, Param] = {
    "image_size": Choice(values=[64, 96, 128]),
    "finetune": Choice(values=["linear_probe", "last_stages", "full"]),
    "epochs": IntRange(low=3, high=40),
    "dropout": FloatRange(low=0.0, high=0.5),
}

CPU_ZOO_SPACE = SearchSpace(
    name="cpu-zoo",
    models=CPU_ZOO_MODELS,
    pretrained=False,
    params={
        "lr": FloatRange(low=1e-4, high=3e-2, log=True),
        "batch_size": Choice(values=[32, 64, 128]),
        "optimizer": Choice(values=["adamw", "sgd"]),
        "weight_decay": FloatRange(low=1e-6, high=1e-2, log=True),
        "epochs": IntRange(low=3, high=15),
        "scheduler": Choice(values=["cosine", "step", "none"]),
        "augmentation": Choice(values=["none", "light", "medium"]),
        "image_size": Choice(values=[28, 32, 48, 64]),
        "label_smoothing": FloatRange(low=0.0, high=0.2),
        "dropout": FloatRange(low=0.0, high=0.3),
        "class_weighting": Choice(values=["none", "balanced"]),
    },
    pretrained_models=PRETRAINED_LITE_MODELS,
    model_params={m: dict(_LITE_PARAMS) for m in PRETRAINED_LITE_MODELS},
)

QUICKTUNE_MODELS = [
    "beit_base_patch16_384",
    "beit_large_patch16_512",
    "convnext_small_384_in22ft1k",
    "deit3_small_patch16_384_in21ft1k",
    "dla46x_c",
    "edgenext_small",
    "edgenext_x_small",
    "edgenext_xx_small",
    "mobilevit_xs",
    "mobilevit_xxs",
    "mobilevitv2_075",
    "swinv2_base_window12to24_192to384_22kft1k",
    "tf_efficientnet_b4_ns",
    "tf_efficientnet_b6_ns",
    "tf_efficientnet_b7_ns",
    "volo_d1_384",
    "volo_d3_448",
    "volo_d4_448",
    "volo_d5_448",
    "volo_d5_512",
    "xcit_nano_12_p8_384_dist",
    "xcit_small_12_p8_384_dist",
    "xcit_tiny_12_p8_384_dist",
    "xcit_tiny_24_p8_384_dist",
]

# The Quick-Tune grid (table.csv of the extended meta-dataset): every knob is discrete there.
QUICKTUNE_SPACE = SearchSpace(
    name="quicktune",
    models=QUICKTUNE_MODELS,
    pretrained=True,
    params={
        "lr": Choice(values=[1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2]),
        "batch_size": Choice(values=[2, 4, 8, 16, 32, 64, 128, 256, 512]),
        "optimizer": Choice(values=["adam", "adamp", "adamw", "momentum", "sgd"]),
        "weight_decay": Choice(values=[0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1]),
        "scheduler": Choice(values=["cosine", "multistep", "plateau", "step"]),
        "augmentation": Choice(
            values=["none", "auto_augment", "random_augment", "trivial_augment"]
        ),
        "label_smoothing": Choice(values=[0.0, 0.05, 0.1]),
        "dropout": Choice(values=[0.0, 0.1, 0.2, 0.3, 0.4]),
        "mixup": Choice(values=[0.0, 0.2, 0.4, 1.0, 2.0, 4.0, 8.0]),
        "mixup_prob": Choice(values=[0.0, 0.25, 0.5, 0.75, 1.0]),
        "cutmix": Choice(values=[0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0]),
        "pct_to_freeze": Choice(values=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        "linear_probing": Choice(values=[0, 1]),
        "warmup_epochs": Choice(values=[0, 5, 10]),
    },
    fixed={"image_size": 128},
)

SPACES: dict[str, SearchSpace] = {s.name: s for s in (CPU_ZOO_SPACE, QUICKTUNE_SPACE)}


def get_space(name: str) -> SearchSpace:
    """A shipped space by name (``cpu-zoo`` or ``quicktune``)."""
    try:
        return SPACES[name]
    except KeyError:
        raise ConfigError(
            f"unknown search space {name!r}; choose one of {', '.join(SPACES)}"
        ) from None
