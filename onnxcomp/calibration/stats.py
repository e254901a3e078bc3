"""Streaming statistics of activations, updated one batch at a time so memory stays bounded.

:class:`RunningStats` keeps, per tensor, the global min/max, and per channel (axis 1, the ONNX channel axis
for NCHW tensors and the feature axis of [N, F] tensors) the count, mean and M2 merged with Chan et al.'s
parallel formula::

    delta = mean_b - mean_a;  mean = mean_a + delta * n_b / n;  M2 = M2_a + M2_b + delta^2 * n_a * n_b / n

plus a histogram of |x| over [0, R] whose range R doubles (merging bin pairs) whenever a batch exceeds it,
so that percentile and entropy calibration can be computed without keeping the activations. The histogram is
kept in two halves of the same bins, ``hist_pos`` (x >= 0) and ``hist_neg`` (|x| of x < 0): their sum is the
|x| histogram ``hist``, and together they are the signed histogram that asymmetric ranges (one percentile per
tail, the MSE search over [lo, hi]) need (:mod:`onnxcomp.analysis.act_ranges`); ``zeros`` counts exact zeros, which
every such grid represents exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from onnxcomp.calibration.data import CalibrationData, capture
from onnxcomp.ir.model import Model


class RunningStats:
    def __init__(self, bins: int = 2048, channels: bool = True):
        if bins % 2:
            raise ValueError("bins must be even")
        self.bins = bins
        self.channels = channels  # per-channel mean/std (range calibration does not need them)
        self.count = 0
        self.min = np.inf
        self.max = -np.inf
        self.channel_count = 0
        self.channel_mean: np.ndarray | None = None
        self.channel_m2: np.ndarray | None = None
        self.hist_pos = np.zeros(bins, dtype=np.int64)  # x >= 0, by x
        self.hist_neg = np.zeros(bins, dtype=np.int64)  # x < 0, by |x|
        self.hist_range = 0.0
        self.zeros = 0  # exact zeros (in hist_pos[0]): ReLU outputs hold many, and 8-bit grids represent them exactly

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64)
        if x.size == 0:
            return
        self.count += x.size
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        if self.channels:
            self._update_channels(x)
        self._update_hist(x.ravel())

    def _update_channels(self, x: np.ndarray) -> None:
        x = x.astype(np.float64, copy=False)
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

    def _update_hist(self, x: np.ndarray) -> None:
        finite = np.isfinite(x)
        if not finite.all():  # inf would double the range forever; NaN has no bin
            x = x[finite]
            if x.size == 0:
                return
        a = np.abs(x)
        top = float(a.max())
        if self.hist_range == 0.0:
            self.hist_range = top if top > 0 else 1.0
        while top > self.hist_range:  # double the range: bin pairs merge, old counts stay exact
            self.hist_pos, self.hist_neg = (
                np.concatenate([h.reshape(-1, 2).sum(axis=1), np.zeros(self.bins // 2, np.int64)])
                for h in (self.hist_pos, self.hist_neg)
            )
            self.hist_range *= 2.0
        self.zeros += int(np.count_nonzero(a == 0))
        with np.errstate(over="ignore"):  # bins of values near float32's limit: clipped before the cast
            idx = np.minimum(a / self.hist_range * self.bins, self.bins - 1).astype(np.int64)
        # One bincount for both halves: negative values land in bins [bins, 2 bins).
        both = np.bincount(idx + np.where(x < 0, self.bins, 0), minlength=2 * self.bins)
        self.hist_pos += both[: self.bins]
        self.hist_neg += both[self.bins :]

    @property
    def hist(self) -> np.ndarray:
        """The histogram of |x| over [0, hist_range]."""
        return self.hist_pos + self.hist_neg

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
        return {
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "abs_p99.99": self.abs_percentile(99.99),
        }


def collect_stats(
    model,
    tensors: Sequence[str],
    data: CalibrationData,
    progress: Callable[[int], None] | None = None,
    channels: bool = True,
    bins: int = 2048,
    max_batch_bytes: int | None = None,
) -> dict[str, RunningStats]:
    """Streaming statistics of ``tensors`` over the calibration ``data`` (one batch in memory at a time).

    With ``max_batch_bytes``, the tensors are captured in groups whose values for one batch fit that budget
    (sizes from ONNX shape inference at the first feed's shapes; unknown sizes count as 0), one pass over the
    data per group, so that no batch holds every activation of a large model at once.
    """
    stats = {name: RunningStats(bins, channels=channels) for name in tensors}

    def on_batch(values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            stats[name].update(value)

    proto = model.to_proto() if isinstance(model, Model) else model
    groups = [list(tensors)]
    if max_batch_bytes is not None and len(data):
        sizes = _batch_bytes(proto, next(iter(data)), set(tensors))
        groups, held = [[]], 0
        for name in tensors:
            if groups[-1] and held + sizes.get(name, 0) > max_batch_bytes:
                groups.append([])
                held = 0
            groups[-1].append(name)
            held += sizes.get(name, 0)
    for group in groups:
        capture(proto, group, data, on_batch, progress)
    return stats


def _batch_bytes(proto: onnx.ModelProto, feed: dict[str, np.ndarray], wanted: set[str]) -> dict[str, int]:
    """Bytes of each wanted tensor for one feed, by shape inference at the feed's shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for vi in fixed.graph.input:
        if vi.name in feed and vi.type.HasField("tensor_type"):
            for d, n in zip(vi.type.tensor_type.shape.dim, np.shape(feed[vi.name])):
                d.Clear()
                d.dim_value = int(n)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # noqa: BLE001 - custom ops, inconsistent shapes: sizes unknown
        return {}
    sizes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        dims = tt.shape.dim
        if vi.name in wanted and dims and all(d.HasField("dim_value") for d in dims):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize if tt.elem_type else 4
            sizes[vi.name] = itemsize * int(np.prod([d.dim_value for d in dims]))
    return sizes
