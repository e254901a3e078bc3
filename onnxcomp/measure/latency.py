"""onnxruntime latency of several models, measured side by side.

Runs are interleaved (model A, model B, model A, ...) so that machine noise hits every model alike, and the
figures are medians. The first model is the baseline of the ratio column.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxcomp.calibration.data import CalibrationData, input_specs
from onnxcomp.errors import CalibrationError
from onnxcomp.ir.model import Model
from onnxcomp.runtime import session


@dataclass
class BenchRow:
    model: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    speedup: float  # baseline median / this median


def benchmark(
    models: list[str],
    feed: dict[str, np.ndarray],
    rounds: int = 30,
    warmup: int = 3,
    threads: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[BenchRow]:
    sessions = [session(m, threads=threads) for m in models]
    for sess in sessions:
        for _ in range(warmup):
            sess.run(None, feed)
    times = [[] for _ in sessions]
    for r in range(rounds):
        for i, sess in enumerate(sessions):
            start = time.perf_counter()
            sess.run(None, feed)
            times[i].append((time.perf_counter() - start) * 1e3)
        if progress:
            progress(r)
    medians = [float(np.median(t)) for t in times]
    return [
        BenchRow(str(m), med, float(np.percentile(t, 10)), float(np.percentile(t, 90)), medians[0] / med)
        for m, med, t in zip(models, medians, times)
    ]


def bench_feed(model_path: str, data: str | None = None, shapes: dict[str, list[int]] | None = None,
               seed: int = 0) -> dict[str, np.ndarray]:
    """The first feed of ``data``, or seeded random inputs with symbolic dims from ``shapes`` (batch -> 1)."""
    model = Model.load(model_path)
    if data is not None:
        return CalibrationData.from_source(data, model, batch_size=1, allow_constant=True).feeds[0]
    specs = input_specs(model)
    unknown = sorted(set(shapes or {}) - {s.name for s in specs})
    if unknown:
        raise CalibrationError(f"--shape names unknown input '{unknown[0]}'; the model's inputs are "
                               + ", ".join(repr(s.name) for s in specs))
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        dims = list((shapes or {}).get(spec.name, spec.shape))
        if dims and not isinstance(dims[0], int):
            dims[0] = 1
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise CalibrationError(
                f"input '{spec.name}' has free dimensions {list(spec.shape)}: give --shape {spec.name}=1x3x224x224 "
                "or --data"
            )
        if np.issubdtype(spec.dtype, np.floating):
            feed[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
        else:
            feed[spec.name] = np.zeros(dims, dtype=spec.dtype)
    return CalibrationData([feed]).checked(specs).feeds[0]  # rank and fixed dims, named on mismatch
