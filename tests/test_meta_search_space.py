"""Search spaces: deterministic sampling, membership with reasons, validation."""

from __future__ import annotations

import pytest

from metallmix.errors import ConfigError
from metallmix.tools.meta.search_space import (
    CPU_ZOO_SPACE,
    QUICKTUNE_SPACE,
    Choice,
    FloatRange,
    SearchSpace,
    get_space,
    make_hyperparameters,
)


def test_sampling_is_deterministic_and_inside_the_space() -> None:
    first = CPU_ZOO_SPACE.sample(50, seed=3)
    assert first == CPU_ZOO_SPACE.sample(50, seed=3)
    assert first != CPU_ZOO_SPACE.sample(50, seed=4)
    assert all(CPU_ZOO_SPACE.contains(m, hp) for m, hp in first)
    assert all(QUICKTUNE_SPACE.contains(m, hp) for m, hp in QUICKTUNE_SPACE.sample(50, seed=0))
    lrs = [hp.lr for _, hp in CPU_ZOO_SPACE.sample(400, seed=1)]
    assert all(lr is not None and 1e-4 <= lr <= 3e-2 for lr in lrs)
    # log-uniform: about half the draws below the geometric midpoint
    below = sum(1 for lr in lrs if lr is not None and lr < (1e-4 * 3e-2) ** 0.5)
    assert 150 < below < 250


def test_out_of_space_values_are_named() -> None:
    hp = make_hyperparameters({"lr": 0.5, "optimizer": "lamb", "batch_size": 64})
    problems = CPU_ZOO_SPACE.violations("vit_huge_patch14", hp)
    assert not CPU_ZOO_SPACE.contains("vit_huge_patch14", hp)
    text = " ".join(problems)
    assert "vit_huge_patch14" in text and "lr" in text and "lamb" in text
    assert not any("batch_size" in p for p in problems)
    with pytest.raises(ConfigError, match="outside the cpu-zoo search space"):
        CPU_ZOO_SPACE.check("vit_huge_patch14", hp)


def test_quicktune_extras_are_checked() -> None:
    good = make_hyperparameters({"lr": 1e-3, "mixup": 0.2})
    bad = make_hyperparameters({"lr": 1e-3, "mixup": 0.3})
    assert QUICKTUNE_SPACE.contains("dla46x_c", good)
    assert any("mixup" in p for p in QUICKTUNE_SPACE.violations("dla46x_c", bad))


def test_invalid_space_definitions_are_rejected() -> None:
    with pytest.raises(ValueError):
        FloatRange(low=0.0, high=1.0, log=True)
    with pytest.raises(ValueError):
        FloatRange(low=2.0, high=1.0)
    with pytest.raises(ValueError):
        SearchSpace(name="x", models=[], pretrained=False, params={})
    with pytest.raises(ValueError):
        Choice(values=[])
    with pytest.raises(ConfigError, match="unknown search space"):
        get_space("nope")


def test_space_round_trips_through_json() -> None:
    again = SearchSpace.model_validate_json(CPU_ZOO_SPACE.model_dump_json())
    assert again == CPU_ZOO_SPACE
    assert again.sample(5, seed=0) == CPU_ZOO_SPACE.sample(5, seed=0)


@pytest.mark.real
def test_cpu_zoo_models_exist_in_timm() -> None:
    timm = pytest.importorskip("timm")
    available = set(timm.list_models())
    assert set(CPU_ZOO_SPACE.models) <= available


def test_cpu_zoo_has_pretrained_lite_models_with_their_own_ranges() -> None:
    from metallmix.tools.meta.search_space import CPU_ZOO_SPACE, PRETRAINED_LITE_MODELS

    space = CPU_ZOO_SPACE
    assert not space.pretrained
    assert all(space.is_pretrained(m) for m in PRETRAINED_LITE_MODELS)
    assert not space.is_pretrained("resnet10t")
    sampled = space.sample(200, seed=1)
    lite = [(m, hp) for m, hp in sampled if m in PRETRAINED_LITE_MODELS]
    scratch = [(m, hp) for m, hp in sampled if m not in PRETRAINED_LITE_MODELS]
    assert lite and scratch
    assert {hp.image_size for _, hp in lite} <= {64, 96, 128}
    assert {hp.extra["finetune"] for _, hp in lite} == {"linear_probe", "last_stages", "full"}
    assert all("finetune" not in hp.extra for _, hp in scratch)
    assert {hp.extra["class_weighting"] for _, hp in sampled} == {"none", "balanced"}
    assert all(space.contains(m, hp) for m, hp in sampled)
    bad = lite[0][1].model_copy(update={"image_size": 28})
    assert any("image_size" in v for v in space.violations(lite[0][0], bad))
    assert space.contains(scratch[0][0], scratch[0][1].model_copy(update={"image_size": 28}))


def test_union_and_projection_for_fixed_distribution_samplers() -> None:
    from metallmix.tools.meta.search_space import CPU_ZOO_SPACE

    union = CPU_ZOO_SPACE.union_params()
    assert set(union["image_size"].values) == {28, 32, 48, 64, 96, 128}  # type: ignore[union-attr]
    drawn = {"image_size": 28, "finetune": "full", "epochs": 40, "lr": 0.01}
    lite = CPU_ZOO_SPACE.project("efficientnet_lite0", drawn)
    assert lite == {"image_size": 64, "finetune": "full", "epochs": 40, "lr": 0.01}
    scratch = CPU_ZOO_SPACE.project("lcnet_050", drawn)
    assert scratch == {"image_size": 28, "epochs": 15, "lr": 0.01}
    narrowed = CPU_ZOO_SPACE.model_copy(update={"models": ["lcnet_050"]})
    assert narrowed.union_params() == narrowed.params  # other models' ranges do not leak in
