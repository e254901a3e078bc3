"""1-D k-means on real weights: the exact DP (on a weighted histogram, and on all distinct values) against Lloyd.

    python benchmarks/kmeans1d.py

Times :func:`onnxcomp.numerics.kmeans1d.kmeans1d` on mnist_lenet300's 266k layer weights at k = 4, 32, 256 and
prints each init's seconds, inertia (relative to the best) and Lloyd iterations.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from models.paths import model_path  # noqa: E402
from onnxcomp.ir.model import Model  # noqa: E402
from onnxcomp.ir.weights import weight_table  # noqa: E402
from onnxcomp.numerics.kmeans1d import kmeans1d  # noqa: E402


def main() -> None:
    model = Model.load(model_path("mnist_lenet300"))
    values = np.concatenate([w.array.ravel() for w in weight_table(model) if w.role == "weight"])
    print(f"{values.size} weights, {np.unique(values).size} distinct")
    for k in (4, 32, 256):
        rows = []
        for label, kwargs in (("linear", {"init": "linear"}), ("exact (histogram)", {"init": "exact"}),
                              ("exact (all distinct)", {"init": "exact", "exact_limit": 10**9})):
            if k == 256 and "all distinct" in label:
                continue
            start = time.perf_counter()
            result = kmeans1d(values, k, **kwargs)
            rows.append((label, time.perf_counter() - start, result.inertia, result.iterations))
        base = min(r[2] for r in rows)
        for label, sec, inertia, its in rows:
            print(f"k={k:3d} {label:22s} {sec:7.3f} s  inertia {inertia:.6e} (+{inertia / base - 1:.2e})  "
                  f"lloyd iterations {its}")


if __name__ == "__main__":
    main()
