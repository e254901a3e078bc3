"""Streaming statistics of activations, updated one batch at a time so memory stays bounded.

:class:`RunningStats` keeps, per tensor, the global min/max, and per channel (axis 1, the ONNX channel axis
for NCHW tensors and the feature axis of [N, F] tensors) the count, mean and M2 merged with Chan et al.'s
parallel formula::

    delta = mean_b - mean_a;  mean = mean_a + delta * n_b / n;  M2 = M2_a + M2_b + delta^2 * n_a * n_b / n

plus a histogram of |x| over [0, R] whose range R doubles (merging bin pairs) whenever a batch exceeds it,
so that percentile and entropy calibration can be computed without keeping the activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from onnxcomp.calibration import CalibrationData, capture


class RunningStats:
    def __init__(self, bins: int = 2048):
        if bins % 2:
            raise ValueError("bins must be even")
        self.bins = bins
        self.count = 0
        self.min = np.inf
        self.max = -np.inf
        self.channel_count = 0
        self.channel_mean: np.ndarray | None = None
        self.channel_m2: np.ndarray | None = None
        self.hist = np.zeros(bins, dtype=np.int64)
        self.hist_range = 0.0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            return
        self.count += x.size
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self._update_channels(x)
        self._update_hist(np.abs(x).ravel())

    def _update_channels(self, x: np.ndarray) -> None:
        if x.ndim < 2:
            x = x.reshape(-1, 1)
        c = x.shape[1]
        flat = np.moveaxis(x, 1, -1).reshape(-1, c)
        n_b = flat.shape[0]
        mean_b = flat.mean(axis=0)
        m2_b = ((flat - mean_b) ** 2).sum(axis=0)
        if self.channel_mean is None or self.channel_mean.shape != mean_b.shape:
            if self.channel_mean is not None:  # channel count changed (variable shapes): per-channel is void
                self.channel_mean = self.channel_m2 = None
                return
            self.channel_count, self.channel_mean, self.channel_m2 = n_b, mean_b, m2_b
            return
        n_a = self.channel_count
        n = n_a + n_b
        delta = mean_b - self.channel_mean
        self.channel_mean = self.channel_mean + delta * n_b / n
        self.channel_m2 = self.channel_m2 + m2_b + delta**2 * n_a * n_b / n
        self.channel_count = n

    def _update_hist(self, a: np.ndarray) -> None:
        top = float(a.max())
        if self.hist_range == 0.0:
            self.hist_range = top if top > 0 else 1.0
        while top > self.hist_range:  # double the range: bin pairs merge, old counts stay exact
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(self.bins // 2, np.int64)])
            self.hist_range *= 2.0
        idx = np.minimum((a / self.hist_range * self.bins).astype(np.int64), self.bins - 1)
        self.hist += np.bincount(idx, minlength=self.bins)

    @property
    def channel_std(self) -> np.ndarray | None:
        if self.channel_m2 is None or self.channel_count == 0:
            return None
        return np.sqrt(self.channel_m2 / self.channel_count)

    @property
    def mean(self) -> float:
        if self.channel_mean is None:
            return float("nan")
        return float(self.channel_mean.mean())

    def abs_percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of |x|, to the histogram's bin width."""
        if self.count == 0:
            return 0.0
        cdf = np.cumsum(self.hist)
        k = int(np.searchsorted(cdf, q / 100.0 * cdf[-1]))
        return (k + 1) * self.hist_range / self.bins

    def to_dict(self) -> dict:
        return {"count": self.count, "min": self.min, "max": self.max, "mean": self.mean,
                "abs_p99.99": self.abs_percentile(99.99)}


def collect_stats(
    model,
    tensors: Sequence[str],
    data: CalibrationData,
    progress: Callable[[int], None] | None = None,
) -> dict[str, RunningStats]:
    """Streaming statistics of ``tensors`` over the calibration ``data`` (one batch in memory at a time)."""
    stats = {name: RunningStats() for name in tensors}

    def on_batch(values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            stats[name].update(value)

    capture(model, list(tensors), data, on_batch, progress)
    return stats
