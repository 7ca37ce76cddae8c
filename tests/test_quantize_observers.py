"""Calibration observers on known distributions: ranges, clipping of outliers, bounded memory, errors."""

from __future__ import annotations

import pytest
import torch

from nncompress.quantize.observers import (
    OBSERVERS,
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    make_observer,
)
from nncompress.quantize.primitives import QuantSpec, qparams_from_range


def uniform_batches(n: int = 3, size: int = 10_000) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(size, generator=g) * 2 - 1 for _ in range(n)]


def gaussian_with_outliers(outlier: float, n: int = 100_000, count: int = 5) -> torch.Tensor:
    x = torch.randn(n, generator=torch.Generator().manual_seed(1))
    x[:count] = outlier
    return x


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_every_observer_covers_uniform_data(name):
    obs = make_observer(name)
    for batch in uniform_batches():
        obs.update(batch.reshape(100, 100))
    lo, hi = obs.range()
    assert -1.0 - 1e-3 <= lo < -0.9 and 0.9 < hi <= 1.0 + 1e-3  # nothing to clip in a uniform[-1, 1]
    spec = QuantSpec(8, symmetric=False)
    scale, zp = obs.qparams(spec)
    assert torch.equal(scale, qparams_from_range(*obs.range(spec), spec)[0]) and scale > 0
    assert obs.batches == 3


def test_minmax_is_exact_and_moving_average_follows_batches():
    batches = uniform_batches()
    obs = MinMaxObserver()
    for b in batches:
        obs.update(b)
    assert obs.range() == (float(torch.cat(batches).min()), float(torch.cat(batches).max()))
    ema = MovingAverageMinMaxObserver(momentum=0.5)
    ema.update(torch.tensor([-1.0, 1.0]))
    ema.update(torch.tensor([-3.0, 3.0]))
    ema.update(torch.tensor([-3.0, 0.0, 3.0]))
    assert ema.range() == (-2.5, 2.5)  # 1 -> 2 -> 2.5


def test_percentile_clips_outliers_within_a_bin():
    x = gaussian_with_outliers(1000.0, count=10)
    obs = PercentileObserver(percentile=99.9)
    for chunk in x.chunk(4):
        obs.update(chunk)
    width = obs.hist.width
    lo, hi = obs.range()
    q_lo, q_hi = torch.quantile(x, torch.tensor([0.001, 0.999])).tolist()
    assert q_hi - 1e-6 <= hi <= q_hi + width and q_lo - width <= lo <= q_lo + 1e-6  # outer edge of its bin
    assert hi < 5.0  # vs max 1000
    assert obs.hist.counts.numel() == 2048 and obs.hist.counts.sum().item() == x.numel()  # bounded, nothing lost


def test_histogram_grows_without_losing_counts():
    obs = PercentileObserver(percentile=100.0, bins=64)
    obs.update(torch.linspace(0, 1, 1000))
    obs.update(torch.linspace(-4, 2, 500))  # outside the first range: re-binned
    assert obs.hist.counts.sum().item() == 1500 and obs.hist.counts.numel() == 64
    lo, hi = obs.range()
    assert lo == pytest.approx(-4.0) and hi == pytest.approx(2.0)


def test_mse_clips_outliers_when_rounding_error_dominates():
    x = gaussian_with_outliers(50.0)
    obs = MSEObserver()
    obs.update(x)
    lo, hi = obs.range(QuantSpec(4))
    # 4 bits over [-50, 50] round almost every value to 0 (MSE ~ 1 per value); clipping near 3 costs
    # ~0.02 per value plus ~47^2 for each of the 5 outliers: clipping wins.
    assert 2.0 < hi < 6.0 and lo == -hi
    # At 8 bits the rounding error is tiny and the same outliers are worth keeping.
    assert obs.range(QuantSpec(8))[1] > 40.0


def test_entropy_threshold_sits_in_the_bulk_of_gaussian_data():
    obs = EntropyObserver()
    obs.update(gaussian_with_outliers(50.0))
    lo, hi = obs.range()
    assert 3.0 < hi < 10.0 and lo == -hi  # >= 128 of 2048 bins: at least 50 / 16
    relu = EntropyObserver()
    relu.update(gaussian_with_outliers(50.0).clamp(min=0))
    assert relu.range(QuantSpec(8, symmetric=False))[0] == 0.0


def test_empty_calibration_and_bad_settings_are_rejected():
    for name in OBSERVERS:
        obs = make_observer(name)
        obs.update(torch.empty(0))
        with pytest.raises(ValueError, match="no calibration data was seen"):
            obs.qparams(QuantSpec(8))
        with pytest.raises(ValueError, match="no calibration data was seen"):
            obs.range()
    with pytest.raises(ValueError, match=r"unknown observer 'kl'; expected one of entropy, minmax, "):
        make_observer("kl")
    with pytest.raises(ValueError, match=r"momentum must be in \(0, 1\], got 0"):
        MovingAverageMinMaxObserver(momentum=0)
    with pytest.raises(ValueError, match=r"percentile must be in \(50, 100\], got 40"):
        PercentileObserver(percentile=40)
    obs = MinMaxObserver()
    obs.update(torch.ones(3))
    with pytest.raises(ValueError, match="per-tensor parameters, got granularity='channel'"):
        obs.qparams(QuantSpec(8, granularity="channel"))
