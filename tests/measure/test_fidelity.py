"""Fidelity (``onnxcomp/measure/fidelity.py``): ``compare`` on identical models gives cosine 1, infinite SQNR, no
error and full agreement; on a model with a perturbed weight every figure is the one computed by hand from the two
models' outputs, accumulated over feeds of different sizes; accuracy with labels, a user metric, and the refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.calibration.data import CalibrationData
from onnxcomp.errors import ComparisonError
from onnxcomp.measure.fidelity import compare
from tests.conftest import run_ort

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 5)).astype(np.float32)
V = RNG.normal(size=(4, 1)).astype(np.float32)


def _model(w: np.ndarray, v: np.ndarray = V, score_name: str = "scores") -> onnx.ModelProto:
    """x [N, 4] -> scores = x @ w [N, 5] (class scores) and level = x @ v [N, 1] (one value per sample)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], [score_name]), helper.make_node("MatMul", ["x", "v"], ["level"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(score_name, TensorProto.FLOAT, ["N", 5]),
         helper.make_tensor_value_info("level", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _data(labels: bool = False) -> CalibrationData:
    """Three feeds of 7, 16 and 1 samples (the figures are accumulated, not averaged per feed)."""
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(n, 4)).astype(np.float32)} for n in (7, 16, 1)]
    return CalibrationData(feeds, [rng.integers(0, 5, len(f["x"])) for f in feeds] if labels else None)


def _outputs(model: onnx.ModelProto, data: CalibrationData) -> list[np.ndarray]:
    """Each output of ``model`` over all feeds, concatenated, in float64."""
    runs = [run_ort(model, feed) for feed in data]
    return [np.concatenate([r[i] for r in runs]).astype(np.float64) for i in range(len(runs[0]))]


def test_identical_models_agree_exactly() -> None:
    data = _data(labels=True)
    report = compare(_model(W), _model(W), data)
    assert report.samples == 24
    assert [o.name for o in report.outputs] == ["scores", "level"]
    scores, level = report.outputs
    assert scores.cosine == pytest.approx(1.0, abs=1e-12) and scores.sqnr_db == math.inf
    assert scores.max_abs_err == 0.0 and scores.rel_err == 0.0 and scores.top1_agreement == 1.0
    assert level.sqnr_db == math.inf and level.top1_agreement is None  # one value per sample: no classes
    assert report.accuracy_reference == report.accuracy_candidate and report.accuracy_drop == 0.0
    assert "SQNR inf dB" in report.lines()[0] and "drop +0.00 points" in report.lines()[-1]
    assert report.to_dict()["accuracy_drop"] == 0.0


def test_a_perturbed_weight_gives_the_figures_computed_by_hand() -> None:
    data = _data(labels=True)
    moved = W + 0.4 * np.random.default_rng(2).normal(size=W.shape).astype(np.float32)
    reference, candidate = _model(W), _model(moved)
    report = compare(reference, candidate, data)
    ref, cand = _outputs(reference, data), _outputs(candidate, data)

    r, c = ref[0], cand[0]
    err = r - c
    assert report.outputs[0].cosine == pytest.approx((r * c).sum() / np.sqrt((r * r).sum() * (c * c).sum()), rel=1e-12)
    sqnr = 10 * np.log10((r * r).sum() / (err * err).sum())
    assert report.outputs[0].sqnr_db == pytest.approx(sqnr, rel=1e-12)
    assert report.outputs[0].max_abs_err == pytest.approx(np.abs(err).max(), rel=1e-12)
    assert report.outputs[0].rel_err == pytest.approx(np.abs(err).max() / np.abs(r).max(), rel=1e-12)
    agreement = float(np.mean(r.argmax(-1) == c.argmax(-1)))
    assert 0.0 < agreement < 1.0  # the perturbation flips some, not all, top-1 classes
    assert report.outputs[0].top1_agreement == agreement
    # the same SQNR from the weights themselves: the output error is x @ (W' - W)
    x = np.concatenate([f["x"] for f in data]).astype(np.float64)
    by_hand = 10 * np.log10(((x @ W) ** 2).sum() / ((x @ (moved - W).astype(np.float64)) ** 2).sum())
    assert report.outputs[0].sqnr_db == pytest.approx(by_hand, abs=1e-3)
    # the second output is unchanged
    assert report.outputs[1].sqnr_db == math.inf and report.outputs[1].max_abs_err == 0.0

    labels = np.concatenate(data.labels)
    assert report.accuracy_reference == float(np.mean(r.argmax(-1) == labels))
    assert report.accuracy_candidate == float(np.mean(c.argmax(-1) == labels))
    assert report.accuracy_drop == report.accuracy_reference - report.accuracy_candidate


def test_custom_metric_is_the_mean_over_feeds() -> None:
    data = _data(labels=True)
    moved = W * 1.5
    seen = []

    def metric(ref, cand, labels):
        seen.append(len(labels))
        return float(np.abs(ref[0] - cand[0]).max())

    report = compare(_model(W), _model(moved), data, metric=metric)
    assert seen == [7, 16, 1]
    per_feed = [float(np.abs(run_ort(_model(W), f)[0] - run_ort(_model(moved), f)[0]).max()) for f in data]
    assert report.custom == pytest.approx(np.mean(per_feed), rel=1e-12)
    assert report.accuracy_reference is not None and compare(_model(W), _model(W), _data()).custom is None


def test_without_labels_there_is_no_accuracy() -> None:
    report = compare(_model(W), _model(W * 2), _data())
    assert report.accuracy_reference is None and report.accuracy_drop is None
    assert not any(line.startswith("accuracy") for line in report.lines())
    json.dumps(report.to_dict())  # plain data


def test_models_with_other_outputs_or_shapes_are_refused() -> None:
    with pytest.raises(ComparisonError, match="outputs differ"):
        compare(_model(W), _model(W, score_name="logits"), _data())
    with pytest.raises(ComparisonError, match="output shapes differ"):
        compare(_model(W), _model(W, v=np.ones((4, 2), np.float32)), _data())
