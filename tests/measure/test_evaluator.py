"""Weight-variant evaluation under a fidelity bound (``onnxcomp/measure/evaluator.py``): with the unchanged weights
every metric's drop and the distortion are 0, with a zeroed weight they are > 0 (the distortion exactly 1), a
perturbed weight's figures are the ones computed by hand from onnxruntime's outputs, the metric ``auto`` resolves
as documented, and the refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.calibration.data import CalibrationData
from onnxcomp.errors import PassError
from onnxcomp.ir.model import Model
from onnxcomp.measure.evaluator import FidelityBound, WeightEvaluator
from tests.conftest import run_ort

RNG = np.random.default_rng(0)
W = RNG.normal(size=(6, 5)).astype(np.float32)
B = RNG.normal(size=5).astype(np.float32)


def _model(classes: int = 5, w: np.ndarray = W, b: np.ndarray = B) -> onnx.ModelProto:
    """x [N, 6] -> Gemm(w, b) [N, classes]."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w[:, :classes], "w"), numpy_helper.from_array(b[:classes], "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _data(proto: onnx.ModelProto | None = None, labels: bool = False) -> CalibrationData:
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(n, 6)).astype(np.float32)} for n in (9, 4, 11)]
    if not labels:
        return CalibrationData(feeds)
    # labels: the reference's own top-1 class (accuracy 1.0), but for one sample of each feed
    truth = [run_ort(proto, f)[0].argmax(-1) for f in feeds]
    return CalibrationData(feeds, [np.concatenate([(t[:1] + 1) % 5, t[1:]]) for t in truth])


def _evaluator(metric: str, classes: int = 5, labels: bool = False, names=("w",)) -> WeightEvaluator:
    proto = _model(classes)
    return WeightEvaluator(Model.load(proto), list(names), _data(proto, labels), FidelityBound(metric, 0.01))


@pytest.mark.parametrize("metric", ["accuracy", "agreement", "cosine"])
def test_unchanged_weights_cost_nothing_and_a_zeroed_weight_costs(metric: str) -> None:
    ev = _evaluator(metric, labels=metric == "accuracy")
    assert ev.metric == metric
    original = {"w": W}
    assert ev.drop(original) == 0.0 and ev.distortion(original) == 0.0 and ev.feasible(original)
    zeroed = {"w": np.zeros_like(W)}
    assert ev.drop(zeroed) > 0.0 and not ev.feasible(zeroed)
    assert ev.distortion(zeroed) > 0.0  # the output is the bias alone (exactly 1 without a bias: next test)
    assert ev.evaluations == 6  # one model run per drop, feasible and distortion


def test_distortion_of_a_zeroed_layer_without_bias_is_one() -> None:
    proto = _model(b=np.zeros_like(B))
    ev = WeightEvaluator(Model.load(proto), ["w"], _data(), FidelityBound("cosine", 0.01))
    assert ev.distortion({"w": np.zeros_like(W)}) == pytest.approx(1.0, rel=1e-12)
    assert ev.drop({"w": np.zeros_like(W)}) == 1.0  # an all-zero output has no direction: cosine 0
    assert ev.drop({"w": 3 * W}) == pytest.approx(0.0, abs=1e-6)  # a scaled output keeps its direction


def test_a_perturbed_weight_gives_the_figures_computed_by_hand() -> None:
    """drop and distortion of the bound's metrics, from the two models' onnxruntime outputs; ``measure`` is both
    from one run."""
    proto = _model()
    moved = W + 0.5 * np.random.default_rng(2).normal(size=W.shape).astype(np.float32)
    data = _data(proto, labels=True)
    ref = [run_ort(proto, f)[0].astype(np.float64) for f in data]
    cand = [run_ort(_model(w=moved), f)[0].astype(np.float64) for f in data]
    r, c = np.concatenate(ref), np.concatenate(cand)
    labels = np.concatenate(data.labels)
    want = {
        "accuracy": float(np.mean(r.argmax(-1) == labels) - np.mean(c.argmax(-1) == labels)),
        "agreement": 1.0 - float(np.mean(r.argmax(-1) == c.argmax(-1))),
        "cosine": 1.0 - float((r * c).sum() / np.sqrt((r * r).sum() * (c * c).sum())),
    }
    assert 0 < want["agreement"] < 1
    distortion = float(((c - r) ** 2).sum() / (r ** 2).sum())
    for metric, drop in want.items():
        ev = WeightEvaluator(Model.load(proto), ["w"], data, FidelityBound(metric, 0.01))
        assert ev.drop({"w": moved}) == pytest.approx(drop, rel=1e-9, abs=1e-12), metric
        d, dist = ev.measure({"w": moved})
        assert d == pytest.approx(drop, rel=1e-9, abs=1e-12) and dist == pytest.approx(distortion, rel=1e-9)
        assert ev.distortion({"w": moved}) == pytest.approx(distortion, rel=1e-9)
        assert ev.evaluations == 3


def test_auto_metric_follows_the_data_and_the_outputs() -> None:
    """auto: accuracy with labels, agreement for class scores, cosine for anything else (one value per sample)."""
    assert _evaluator("auto", labels=True).metric == "accuracy"
    assert _evaluator("auto").metric == "agreement"
    assert _evaluator("auto", classes=1).metric == "cosine"
    assert _evaluator("auto", labels=True).reference_accuracy == pytest.approx(21 / 24)


def test_several_weights_are_fed_together() -> None:
    ev = _evaluator("cosine", names=("w", "b"))
    assert ev.drop({"w": W, "b": B}) == 0.0
    assert ev.drop({"w": W, "b": B + 10.0}) > 0.0
    assert ev.drop({"b": B + 10.0}) == ev.drop({"w": W, "b": B + 10.0})  # an unfed weight keeps its value


def test_refusals_name_the_problem() -> None:
    with pytest.raises(PassError, match="needs labels"):
        _evaluator("accuracy")
    with pytest.raises(PassError, match="'nope' is not a main-graph initializer"):
        _evaluator("cosine", names=("w", "nope"))
