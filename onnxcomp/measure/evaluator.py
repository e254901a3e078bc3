"""Fast fidelity checks of many weight variants, for searches under a fidelity bound.

A search (per-layer thresholds, bit widths, pruning ratios) evaluates hundreds of candidates that differ only
in weight values. :class:`WeightEvaluator` builds ONE onnxruntime session in which the searched weights are
graph inputs (ONNX's overridable initializers) and feeds each candidate's arrays with the calibration data,
instead of serialising a model per candidate. The reference outputs are computed once.

A :class:`FidelityBound` says what "good enough" means:
- ``accuracy``: accuracy drop against the labels (needs labels), as a fraction (0.005 = 0.5 point);
- ``agreement``: share of positions whose top-1 class changed against the original model's outputs;
- ``cosine``: 1 - the lowest cosine similarity of any output;
- ``auto``: accuracy when the calibration data has labels, else agreement for class-score outputs, else cosine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from onnxcomp.calibration.data import CalibrationData
from onnxcomp.errors import CalibrationError, PassError
from onnxcomp.ir.model import Model
from onnxcomp.runtime import session

Metric = Literal["auto", "accuracy", "agreement", "cosine"]


@dataclass(frozen=True)
class FidelityBound:
    metric: Metric = "auto"
    max_drop: float = 0.005


class WeightEvaluator:
    """``drop(weights)``: the bound's metric for the model with some weights replaced."""

    def __init__(self, model: Model, weight_names: list[str], data: CalibrationData, bound: FidelityBound):
        self.bound = bound
        self.data = data
        proto = model.to_proto()
        inits = {t.name: t for t in proto.graph.initializer}
        missing = [n for n in weight_names if n not in inits]
        if missing:
            raise PassError(f"weight '{missing[0]}' is not a main-graph initializer (run fold_constants first)")
        listed = {vi.name for vi in proto.graph.input}
        for name in weight_names:
            if name not in listed:
                t = inits[name]
                proto.graph.input.append(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
        self.session = session(proto)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.reference = [self.session.run(self.outputs, feed) for feed in data]
        if _broken(self.reference):
            raise CalibrationError("the model's outputs hold NaN or infinite values on the calibration data: it is "
                                   "outside the range the model computes in (check its scale and preprocessing)")
        self.metric = self._resolve(bound.metric)
        if self.metric == "accuracy":
            self.reference_accuracy = self._accuracy(self.reference)
        self.evaluations = 0

    def _resolve(self, metric: Metric) -> str:
        if metric == "accuracy" and self.data.labels is None:
            raise PassError("fidelity metric 'accuracy' needs labels in the calibration data ('labels' array)")
        if metric != "auto":
            return metric
        if self.data.labels is not None:
            return "accuracy"
        first = self.reference[0][0]
        if first.ndim >= 2 and first.shape[-1] > 1 and np.issubdtype(first.dtype, np.floating):
            return "agreement"
        return "cosine"

    def _run(self, weights: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        self.evaluations += 1
        return [self.session.run(self.outputs, {**feed, **weights}) for feed in self.data]

    def drop(self, weights: dict[str, np.ndarray]) -> float:
        return self._drop(self._run(weights))

    def measure(self, weights: dict[str, np.ndarray]) -> tuple[float, float]:
        """``(drop, distortion)`` from one run of the model."""
        outs = self._run(weights)
        return self._drop(outs), self._distortion(outs)

    def _drop(self, outs: list[list[np.ndarray]]) -> float:
        if _broken(outs):  # NaN/infinite outputs: infeasible whatever the metric (argmax and cosine would hide it)
            return math.inf
        if self.metric == "accuracy":
            return self.reference_accuracy - self._accuracy(outs)
        if self.metric == "agreement":
            agree = total = 0
            for ref, cand in zip(self.reference, outs):
                agree += int((ref[0].argmax(-1) == cand[0].argmax(-1)).sum())
                total += ref[0].argmax(-1).size
            return 1.0 - agree / total
        worst = 1.0
        for i in range(len(self.outputs)):
            r = np.concatenate([o[i].ravel() for o in self.reference]).astype(np.float64)
            c = np.concatenate([o[i].ravel() for o in outs]).astype(np.float64)
            norm = np.linalg.norm(r) * np.linalg.norm(c)
            worst = min(worst, float(r @ c / norm) if norm > 0 else float(np.array_equal(r, c)))
        return 1.0 - worst

    def distortion(self, weights: dict[str, np.ndarray]) -> float:
        """Relative squared error of the outputs, ``sum ||y - y_ref||^2 / sum ||y_ref||^2``, averaged over outputs:
        a continuous measure for sensitivity analysis, where the bound's metric is too coarse."""
        return self._distortion(self._run(weights))

    def _distortion(self, outs: list[list[np.ndarray]]) -> float:
        if _broken(outs):
            return math.inf
        total = 0.0
        for i in range(len(self.outputs)):
            num = sum(float(np.sum((o[i].astype(np.float64) - r[i]) ** 2)) for o, r in zip(outs, self.reference))
            den = sum(float(np.sum(r[i].astype(np.float64) ** 2)) for r in self.reference)
            total += num / den if den > 0 else float(num > 0)
        return total / len(self.outputs)

    def feasible(self, weights: dict[str, np.ndarray]) -> bool:
        return self.drop(weights) <= self.bound.max_drop

    def _accuracy(self, outs: list[list[np.ndarray]]) -> float:
        correct = total = 0
        for out, labels in zip(outs, self.data.labels):
            correct += int((out[0].argmax(-1).reshape(labels.shape) == labels).sum())
            total += labels.size
        return correct / total


def _broken(outs: list[list[np.ndarray]]) -> bool:
    """Whether a candidate's float outputs hold NaN or infinite values (the reference's are checked finite)."""
    return any(np.issubdtype(o.dtype, np.inexact) and not np.all(np.isfinite(o)) for feed in outs for o in feed)
