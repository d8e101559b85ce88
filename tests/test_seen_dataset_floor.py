"""bench/seen_dataset_floor.py: what a model that has seen the dataset reaches (issues 26, 29)."""

from __future__ import annotations

from typing import Any

import pytest

from metallmix.benchmarks.scripts.seen_dataset_floor import regime_floor
from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.tools.kb.frame import records_to_frame


def floor(noise: float) -> dict[str, Any]:
    return regime_floor(records_to_frame(synthetic_records(4, 60, seed=3, noise=noise)), seed=0)


def test_floor_measures_the_planted_noise() -> None:
    quiet, noisy = floor(0.01), floor(0.1)
    # Gaussian noise of sd 0.1 has a 10-90% band of 2 x 1.2816 x 0.1 = 0.256; with the
    # dataset known and the planted formula learnable, the floor sits near it.
    assert noisy["constant_band_width"] == pytest.approx(0.256, abs=0.07)
    assert quiet["constant_band_width"] < noisy["constant_band_width"] - 0.1
    # A learnable formula with little noise: the pick beats random best-of-5; noise as
    # large as the configurations' gaps takes that away.
    assert quiet["pick_regret"] < quiet["random_best_of_5"]
    assert noisy["pick_regret"] > quiet["pick_regret"]
    assert quiet["random_best_of_1"] > quiet["random_best_of_5"] and quiet["datasets"] == 4
