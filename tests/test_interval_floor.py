"""bench/interval_floor.py: the seen-dataset band measures the runs' own noise (issue 26)."""

from __future__ import annotations

import pytest

from metallmix.benchmarks.scripts.interval_floor import regime_floor
from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.tools.kb.frame import records_to_frame


def floor_width(noise: float) -> float:
    frame = records_to_frame(synthetic_records(4, 60, seed=3, noise=noise))
    return float(regime_floor(frame, seed=0)["constant_band_width"])


def test_floor_is_the_planted_noise_band() -> None:
    # Gaussian noise of sd 0.1 has a 10-90% band of 2 x 1.2816 x 0.1 = 0.256; with the
    # dataset known and the planted formula learnable, the floor should sit near it.
    quiet, noisy = floor_width(0.01), floor_width(0.1)
    assert noisy == pytest.approx(0.256, abs=0.07)
    assert quiet < noisy - 0.1
