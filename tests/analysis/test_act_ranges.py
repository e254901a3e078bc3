"""Activation range methods (``onnxcomp/analysis/act_ranges.py``) on synthetic distributions with known answers:
minmax, percentile, entropy (KL), MSE, quantization parameters. The streaming histogram they read is
``tests/calibration/test_stats.py``'s."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.analysis.act_ranges import (
    INT8_SYMMETRIC,
    METHODS,
    UINT8_ASYMMETRIC,
    activation_range,
    expected_mse,
    kl_threshold,
    quant_params,
)
from onnxcomp.calibration.stats import RunningStats
from tests.helpers import streamed_stats

GRIDS = [UINT8_ASYMMETRIC, INT8_SYMMETRIC]


def _gauss_with_outliers(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(200_000)
    x[:10] = rng.uniform(8.0, 30.0, 10) * rng.choice([-1, 1], 10)  # rare large outliers
    return x


@pytest.mark.parametrize("grid", GRIDS)
def test_minmax_is_exact(grid) -> None:
    x = np.random.default_rng(2).normal(1.0, 2.0, 10_000)
    assert activation_range(streamed_stats(x), "minmax", grid) == (x.min(), x.max())
    relu = np.maximum(x, 0)
    assert activation_range(streamed_stats(relu), "minmax", grid) == (0.0, relu.max())  # 0 always in the range
    positive = np.abs(x) + 1.0
    assert activation_range(streamed_stats(positive), "minmax", grid) == (0.0, positive.max())


def test_percentile_within_one_bin() -> None:
    x = np.random.default_rng(3).gamma(2.0, 1.5, 50_000) - 1.0  # skewed, signed
    stats = streamed_stats(x)
    width = stats.hist_range / stats.bins
    lo, hi = activation_range(stats, "percentile", UINT8_ASYMMETRIC, percentile=99.0)
    assert abs(lo - np.percentile(x, 1.0)) <= width and abs(hi - np.percentile(x, 99.0)) <= width
    lo, hi = activation_range(stats, "percentile", INT8_SYMMETRIC, percentile=99.0)
    t = np.percentile(np.abs(x), 99.0)
    assert abs(hi - t) <= width and lo == pytest.approx(max(x.min(), -hi))


@pytest.mark.parametrize("grid", GRIDS)
def test_entropy_and_mse_clip_outlier_tails(grid) -> None:
    x = _gauss_with_outliers()
    stats = streamed_stats(x)
    for method in ("entropy", "mse"):
        lo, hi = activation_range(stats, method, grid)
        assert 3.0 < hi < 0.9 * x.max() and 0.9 * x.min() < lo < -3.0, (method, lo, hi)


def test_entropy_keeps_a_uniform_distribution_whole() -> None:
    hist = np.full(2048, 100.0)
    assert kl_threshold(hist, 1.0, 128) >= 0.95 * 2048
    assert kl_threshold(np.zeros(2048), 1.0, 128) == 0.0


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("seed", range(4))
def test_mse_never_worse_than_minmax(grid, seed) -> None:
    rng = np.random.default_rng(seed)
    x = [
        _gauss_with_outliers(seed),
        rng.laplace(0, 1, 50_000),
        np.maximum(rng.standard_normal(50_000), 0),
        rng.uniform(-1, 3, 50_000),
    ][seed]
    stats = streamed_stats(x)
    mse_range = activation_range(stats, "mse", grid)
    assert expected_mse(stats, *mse_range, grid) <= expected_mse(
        stats, *activation_range(stats, "minmax", grid), grid
    ) * (1 + 1e-12)


def test_expected_mse_matches_simulated_rounding() -> None:
    x = np.random.default_rng(5).laplace(0, 1, 100_000)
    stats = streamed_stats(x)
    lo, hi = activation_range(stats, "mse", UINT8_ASYMMETRIC)
    scale, zp = quant_params(lo, hi, UINT8_ASYMMETRIC)
    q = np.clip(np.round(x / scale) + zp, 0, 255)
    simulated = np.mean(((q - zp) * scale - x) ** 2)
    assert expected_mse(stats, lo, hi, UINT8_ASYMMETRIC) == pytest.approx(simulated, rel=0.1)


def test_quant_params() -> None:
    scale, zp = quant_params(-1.0, 3.0, UINT8_ASYMMETRIC)
    assert scale == np.float32(4.0 / 255) and zp == round(1.0 / (4.0 / 255))
    assert abs((0 - zp) * scale - -1.0) <= scale / 2 and abs((255 - zp) * scale - 3.0) <= scale / 2
    scale, zp = quant_params(-1.0, 3.0, INT8_SYMMETRIC)
    assert scale == np.float32(3.0 / 127) and zp == 0
    assert quant_params(0.0, 0.0, UINT8_ASYMMETRIC) == (1.0, 0)  # an all-zero tensor
    assert quant_params(0.0, 5.0, UINT8_ASYMMETRIC)[1] == 0  # ReLU outputs: zero point at the bottom


@pytest.mark.parametrize("method", METHODS)
def test_empty_and_constant_tensors(method) -> None:
    assert activation_range(RunningStats(), method, UINT8_ASYMMETRIC) == (0.0, 0.0)
    lo, hi = activation_range(streamed_stats(np.full(100, 2.5)), method, UINT8_ASYMMETRIC)
    assert lo == 0.0 and 0.0 < hi <= 2.5 + 1e-9


def test_bad_method() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        activation_range(streamed_stats(np.ones(10)), "kl", UINT8_ASYMMETRIC)


