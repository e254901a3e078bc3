"""Activation ranges for 8-bit quantization, from streaming statistics (analysis only, no graph change).

Every method reads one :class:`~onnxcomp.calibration.stats.RunningStats` (min/max and the signed histogram of B bins of
width ``w = R / B`` per half, ``hist_pos`` for x >= 0 and ``hist_neg`` for |x| of x < 0) and returns a clipping
range ``[lo, hi]`` that always contains 0, so that real zero (ReLU outputs, zero padding) is exact. The grid
(:class:`Grid`) says how the range becomes a scale and zero point::

    uint8 asymmetric:  s = (hi - lo) / 255,  z = clip(round(-lo / s), 0, 255),  q = clip(round(x / s) + z, 0, 255)
    int8 symmetric:    s = max(|lo|, |hi|) / 127,  z = 0,  q = clip(round(x / s), -128, 127)   (TensorRT)

Methods:

- ``minmax``: ``[min(x), max(x)]``, exact.
- ``percentile`` (p, e.g. 99.99): symmetric grids clip |x| at its p-th percentile ``t`` (``[-t, t]`` cut to the
  observed range); asymmetric grids take the (100 - p)-th and p-th percentiles of the signed distribution, one
  per tail. Read from the cumulative histogram: exact to one bin width.
- ``entropy`` (TensorRT's calibrator, Migacz, "8-bit Inference with TensorRT", GTC 2017): for each candidate
  threshold ``t_i = i w`` (``i`` from ``L`` to the last occupied bin of the |x| histogram ``h``) the reference
  distribution ``P_i`` is ``h[0:i]`` with all counts beyond ``t_i`` added to its last bin (clipping); the
  candidate ``Q_i`` quantizes ``h[0:i]`` into ``L`` levels (bin ``j`` goes to level ``floor(j L / i)``) and
  spreads each level's count evenly over its nonzero bins. Both are normalised (zero bins of Q where P is not
  zero get a small epsilon taken from the others) and the threshold minimising ``KL(P_i || Q_i) =
  sum_j P_ij log(P_ij / Q_ij)`` wins. ``L = 128`` for int8 (the positive half of the grid), ``L = 256`` for
  uint8 on a nonnegative tensor; a uint8 grid on a signed tensor takes the symmetric threshold with ``L = 128``
  and cuts it to the observed range. Exact zeros (half of a ReLU output) are left out of ``h``: every grid
  represents them exactly, and their spike in the first bin would otherwise pull the threshold far down.
- ``mse``: the range minimising the expected squared quantization error over the histogram, each bin's centre
  ``c_j`` quantized and dequantized on the grid the range really gives (zero point rounded; ``[-128 s, 127 s]``
  symmetric), as NVIDIA's pytorch-quantization MSE calibrator does. With counts ``n_j`` (both halves; exact
  zeros left out, their error is 0, but N counts them) and bin width ``w``::

      E(lo, hi) = sum_j n_j ((c_j - DQ(Q(c_j)))^2 + w^2 / 12) / N

  (the centre's rounding or clipping error, plus the spread of the values within the bin). Rounding each
  centre, rather than charging every in-range value the uniform ``s^2 / 12``, counts the dense region near
  zero right: small values round to nearby grid points (or to 0) with errors well below ``s^2 / 12``.
  Symmetric grids and nonnegative tensors search one threshold; asymmetric grids on signed tensors alternate
  between the two ends (coordinate descent from the min/max range). The min/max range is always a candidate,
  so the result is never worse than ``minmax`` under this objective (:func:`expected_mse`).

The MSE search is vectorised over candidates x bins (512 candidates); the entropy search tries at most 192
thresholds spread evenly over the occupied bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnxcomp.calibration.stats import RunningStats

Method = Literal["minmax", "percentile", "entropy", "mse"]
METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")

_MAX_CANDIDATES = 512  # thresholds tried by the (vectorised) mse search
_MAX_KL_CANDIDATES = 192  # thresholds tried by the entropy search (one KL each)
_KL_EPS = 1e-4  # probability given to empty bins of Q where P is not empty (MXNet/onnxruntime smoothing)


@dataclass(frozen=True)
class Grid:
    """An 8-bit integer grid: ``qmin..qmax``, symmetric (zero point 0) or asymmetric."""

    qmin: int
    qmax: int
    symmetric: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int8 if self.qmin < 0 else np.uint8)


UINT8_ASYMMETRIC = Grid(0, 255, symmetric=False)
INT8_SYMMETRIC = Grid(-128, 127, symmetric=True)


def activation_range(stats: RunningStats, method: Method, grid: Grid, percentile: float = 99.99) -> tuple[float, float]:
    """The clipping range ``(lo, hi)`` of one tensor (always ``lo <= 0 <= hi``)."""
    if stats.count == 0:
        return 0.0, 0.0
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    if method == "minmax" or hi - lo == 0.0:
        return lo, hi
    if method == "percentile":
        return _percentile(stats, grid, percentile, lo, hi)
    if method == "entropy":
        return _entropy(stats, grid, lo, hi)
    if method == "mse":
        return _mse(stats, grid, lo, hi)
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def quant_params(lo: float, hi: float, grid: Grid) -> tuple[np.float32, int]:
    """Scale (float32, > 0) and zero point of the grid for the range ``[lo, hi]`` (module docstring)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if grid.symmetric:
        scale = max(-lo, hi) / grid.qmax
        zero_point = 0
    else:
        scale = (hi - lo) / (grid.qmax - grid.qmin)
        zero_point = int(np.clip(round(grid.qmin - lo / scale), grid.qmin, grid.qmax)) if scale > 0 else 0
    scale = np.float32(scale)
    if not scale > 0 or not np.isfinite(scale):  # an all-zero tensor: any scale represents it exactly
        return np.float32(1.0), 0 if grid.symmetric else grid.qmin
    return scale, zero_point


def expected_mse(stats: RunningStats, lo: float, hi: float, grid: Grid) -> float:
    """The expected squared quantization error of the range ``[lo, hi]`` on the histogram (module docstring)."""
    centers, counts, total = _signed_hist(stats)
    return float(_mse_of(np.array([lo]), np.array([hi]), centers, counts, total, grid)[0])


# -- percentile --------------------------------------------------------------------------------------------------
def _percentile(stats: RunningStats, grid: Grid, q: float, lo: float, hi: float) -> tuple[float, float]:
    if grid.symmetric or lo == 0.0:
        t = stats.abs_percentile(q)
        return max(lo, -t), min(hi, t)
    centers, counts, total = _signed_hist(stats)  # ascending bin centres
    counts[stats.bins] += stats.zeros
    width = stats.hist_range / stats.bins
    cdf = np.cumsum(counts)
    k_hi = int(np.searchsorted(cdf, q / 100.0 * total))
    k_lo = int(np.searchsorted(cdf, (100.0 - q) / 100.0 * total))
    return max(lo, min(0.0, centers[k_lo] - width / 2)), min(hi, max(0.0, centers[k_hi] + width / 2))


# -- entropy -----------------------------------------------------------------------------------------------------
def _entropy(stats: RunningStats, grid: Grid, lo: float, hi: float) -> tuple[float, float]:
    one_sided = not grid.symmetric and lo == 0.0
    levels = (grid.qmax - grid.qmin + 1) if one_sided else (grid.qmax + 1 if grid.symmetric else 128)
    hist = stats.hist.copy()
    hist[0] -= stats.zeros  # exact zeros are exact at any threshold: they would only bias KL towards small ones
    t = kl_threshold(hist, stats.hist_range / stats.bins, levels)
    return max(lo, -t), min(hi, t)


def kl_threshold(hist: np.ndarray, width: float, levels: int) -> float:
    """TensorRT's entropy threshold of a |x| histogram with bins of ``width`` for ``levels`` quantized bins."""
    hist = np.asarray(hist, dtype=np.float64)
    occupied = np.flatnonzero(hist)
    if occupied.size == 0:
        return 0.0
    last = int(occupied[-1]) + 1
    if last <= levels:
        return last * width
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    candidates = _thin(np.arange(levels, last + 1), _MAX_KL_CANDIDATES)
    kl = [_kl(hist[:i], tail[i], levels) for i in candidates]
    return int(candidates[int(np.argmin(kl))]) * width


def _kl(sliced: np.ndarray, outliers: float, levels: int) -> float:
    """KL(P || Q) of one candidate threshold (module docstring)."""
    i = sliced.size
    p = sliced.copy()
    p[-1] += outliers  # clipped counts join the last bin
    group = (np.arange(i) * levels) // i
    nonzero = sliced != 0
    sums = np.bincount(group, weights=sliced, minlength=levels)
    counts = np.bincount(group, weights=nonzero, minlength=levels)
    q = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
    p, q = _smooth(p), _smooth(q)
    if p is None or q is None:
        return np.inf
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _smooth(d: np.ndarray) -> np.ndarray | None:
    """Normalise; each empty bin gets ``_KL_EPS``, taken evenly from the nonempty ones (or, where those are
    too small to lend it, added and renormalised). None for an empty distribution."""
    total = d.sum()
    if total <= 0:
        return None
    d = d / total
    zero = d == 0
    n_zero = int(zero.sum())
    if n_zero == 0:
        return d
    take = _KL_EPS * n_zero / (d.size - n_zero)
    if take < d[~zero].min():
        return np.where(zero, _KL_EPS, d - take)
    d = d + _KL_EPS * zero
    return d / d.sum()


# -- mse ---------------------------------------------------------------------------------------------------------
def _mse(stats: RunningStats, grid: Grid, lo: float, hi: float) -> tuple[float, float]:
    centers, counts, total = _signed_hist(stats)
    if grid.symmetric:
        amax = max(-lo, hi)
        t = _thin_values(amax)
        err = _mse_of(-t, t, centers, counts, total, grid)
        t_best = float(t[int(np.argmin(err))])
        return max(lo, -t_best), min(hi, t_best)
    if lo == 0.0:  # nonnegative: only the top moves
        t = _thin_values(hi)
        err = _mse_of(np.zeros_like(t), t, centers, counts, total, grid)
        return 0.0, float(t[int(np.argmin(err))])
    best_lo, best_hi = lo, hi
    best = _mse_of(np.array([lo]), np.array([hi]), centers, counts, total, grid)[0]
    for _ in range(3):  # coordinate descent: top with the bottom fixed, then the bottom
        t = _thin_values(hi)
        err = _mse_of(np.full_like(t, best_lo), t, centers, counts, total, grid)
        k = int(np.argmin(err))
        if err[k] < best:
            best, best_hi = err[k], float(t[k])
        t = -_thin_values(-lo)
        err = _mse_of(t, np.full_like(t, best_hi), centers, counts, total, grid)
        k = int(np.argmin(err))
        if err[k] < best:
            best, best_lo = err[k], float(t[k])
    return best_lo, best_hi


def _mse_of(
    lo: np.ndarray, hi: np.ndarray, centers: np.ndarray, counts: np.ndarray, total: float, grid: Grid
) -> np.ndarray:
    """Expected squared error for each candidate range ``[lo[k], hi[k]]`` (vectorised over k x bins)."""
    keep = counts > 0
    c, n = centers[keep], counts[keep]
    if total == 0:
        return np.zeros(lo.shape)
    lo, hi, step = _on_grid(lo, hi, grid)
    width = centers[1] - centers[0]
    s = np.where(step > 0, step, 1.0)[:, None]
    dequantized = np.clip(np.round((c[None, :] - lo[:, None]) / s), 0, grid.qmax - grid.qmin) * s + lo[:, None]
    return (((c[None, :] - dequantized) ** 2 + width**2 / 12.0) * n[None, :]).sum(axis=1) / total


def _on_grid(lo: np.ndarray, hi: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The range the grid really covers for each requested range (zero point rounded), and its step."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if grid.symmetric:
        step = np.maximum(-lo, hi) / grid.qmax
        zero_point = np.zeros_like(step)
    else:
        step = (hi - lo) / (grid.qmax - grid.qmin)
        safe = np.where(step > 0, step, 1.0)
        zero_point = np.clip(np.round(grid.qmin - lo / safe), grid.qmin, grid.qmax)
    return (grid.qmin - zero_point) * step, (grid.qmax - zero_point) * step, step


def _signed_hist(stats: RunningStats) -> tuple[np.ndarray, np.ndarray, float]:
    """Bin centres (ascending, negative half first) and counts of the signed histogram without the exact
    zeros, and the number of values N."""
    width = stats.hist_range / stats.bins
    pos = (np.arange(stats.bins) + 0.5) * width
    centers = np.concatenate([-pos[::-1], pos])
    counts = np.concatenate([stats.hist_neg[::-1], stats.hist_pos]).astype(np.float64)
    counts[stats.bins] -= stats.zeros  # exact zeros have no error (they still count in N)
    return centers, counts, counts.sum() + stats.zeros


def _thin(candidates: np.ndarray, most: int) -> np.ndarray:
    """At most ``most`` evenly spread candidates, the first and last included."""
    if candidates.size <= most:
        return candidates
    keep = np.unique(np.linspace(0, candidates.size - 1, most).round().astype(np.int64))
    return candidates[keep]


def _thin_values(top: float) -> np.ndarray:
    """Candidate thresholds in (0, top], ``top`` (the min/max range) included."""
    return top * np.arange(1, _MAX_CANDIDATES + 1) / _MAX_CANDIDATES
