"""Layer-input Hessians: trace(dW H dW^T) must equal the measured mean squared output change in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.calibration.data import CalibrationData
from onnxcomp.calibration.hessian import collect_hessians, pooled, supports
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table
from tests.conftest import run_ort

RNG = np.random.default_rng(0)


def _model(node, w: np.ndarray, x_shape, y_shape):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


CASES = [
    ("conv", helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), (6, 4, 3, 3), (3, 4, 7, 7)),
    ("conv-grouped-strided", helper.make_node("Conv", ["x", "w"], ["y"], group=2, strides=[2, 2], pads=[1, 0, 1, 0]),
     (6, 2, 3, 3), (3, 4, 8, 8)),
    ("conv-dilated", helper.make_node("Conv", ["x", "w"], ["y"], dilations=[2, 2]), (5, 3, 3, 3), (2, 3, 9, 9)),
    ("depthwise", helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1]), (4, 1, 3, 3), (2, 4, 6, 6)),
    ("conv1d", helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1]), (5, 3, 3), (2, 3, 10)),
    ("gemm-transB", helper.make_node("Gemm", ["x", "w"], ["y"], transB=1), (5, 7), (9, 7)),
    ("gemm", helper.make_node("Gemm", ["x", "w"], ["y"]), (7, 5), (9, 7)),
    ("matmul-3d", helper.make_node("MatMul", ["x", "w"], ["y"]), (7, 5), (2, 4, 7)),
]


@pytest.mark.parametrize("name, node, w_shape, x_shape", CASES, ids=[c[0] for c in CASES])
def test_hessian_predicts_output_change(name, node, w_shape, x_shape) -> None:
    w = RNG.standard_normal(w_shape).astype(np.float32)
    proto = _model(node, w, list(x_shape), None)
    model = Model.load(proto)
    (weight,) = weight_table(model)
    assert supports(weight)
    x = RNG.standard_normal((4,) + tuple(x_shape)).astype(np.float32)
    data = CalibrationData([{"x": xi} for xi in x])
    h = collect_hessians(model, [weight], data)["w"]

    dw = RNG.standard_normal(w_shape).astype(np.float32) * 0.1
    mat = h.to_matrix(dw.astype(np.float64))
    predicted = sum(np.trace(mat[g] @ h.H[g] @ mat[g].T) for g in range(h.groups))

    moved = _model(node, w + dw, list(x_shape), None)
    diffs = [run_ort(moved, {"x": xi})[0] - run_ort(proto, {"x": xi})[0] for xi in x]
    diff = np.concatenate(diffs).astype(np.float64)
    out_axis = -1 if node.op_type in ("Gemm", "MatMul") else 1
    rows = diff.shape[out_axis]
    measured = (np.moveaxis(diff, out_axis, -1).reshape(-1, rows) ** 2).sum(1).mean()
    np.testing.assert_allclose(predicted, measured, rtol=1e-4)
    np.testing.assert_array_equal(h.from_matrix(h.to_matrix(w)), w)


def test_unsupported_weights_are_skipped() -> None:
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"])
    model = Model.load(_model(node, RNG.standard_normal((3, 2, 2, 2)).astype(np.float32), [1, 3, 4, 4], None))
    (weight,) = weight_table(model)
    assert not supports(weight)
    assert collect_hessians(model, [weight], CalibrationData([{"x": np.zeros((1, 3, 4, 4), np.float32)}])) == {}


def test_pooled_equals_collecting_the_union() -> None:
    w = RNG.normal(size=(5, 7)).astype(np.float32)
    model = Model(_model(helper.make_node("Gemm", ["x", "w"], ["y"], transB=1), w, ["N", 7], ["N", 5]))
    kernel = [k for k in weight_table(model) if k.name == "w"]
    feeds = [{"x": RNG.normal(size=(n, 7)).astype(np.float32)} for n in (3, 8, 5)]
    whole = collect_hessians(model, kernel, CalibrationData(feeds))["w"]
    parts = [collect_hessians(model, kernel, CalibrationData([f]))["w"] for f in feeds]
    both = pooled(parts)
    assert both.count == whole.count == 16
    np.testing.assert_allclose(both.H, whole.H, rtol=1e-10)
    np.testing.assert_allclose(both.mean, whole.mean, rtol=1e-10)


def test_folds_keep_each_run_of_feeds_and_pool_to_the_whole() -> None:
    """collect_hessians(folds=k): part i holds the statistics of CalibrationData.folds' i-th check run (cross
    moments too), and the result itself those of all feeds."""
    first = RNG.normal(size=(7, 6)).astype(np.float32)
    w = RNG.normal(size=(5, 7)).astype(np.float32)

    def two_layers(a):
        graph = helper.make_graph(
            [helper.make_node("Gemm", ["x", "a"], ["h"], transB=1),
             helper.make_node("Gemm", ["h", "w"], ["y"], transB=1)],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
            [numpy_helper.from_array(a, "a"), numpy_helper.from_array(w, "w")])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        return Model(proto)

    reference, model = two_layers(first), two_layers(first + 0.1 * RNG.normal(size=first.shape).astype(np.float32))
    kernel = [k for k in weight_table(model) if k.name == "w"]
    data = CalibrationData([{"x": RNG.normal(size=(n, 6)).astype(np.float32)} for n in (3, 8, 5, 4, 6, 2, 7)])
    whole = collect_hessians(model, kernel, data, reference=reference, folds=3)["w"]
    plain = collect_hessians(model, kernel, data, reference=reference)["w"]
    assert plain.parts is None and len(whole.parts) == 3 and whole.count == plain.count == 35
    for part, (_, check) in zip(whole.parts, data.folds(3)):
        alone = collect_hessians(model, kernel, check, reference=reference)["w"]
        assert part.count == alone.count
        for field in ("H", "C", "mean", "ref_mean"):
            np.testing.assert_allclose(getattr(part, field), getattr(alone, field), rtol=1e-6, atol=1e-9)
    for field in ("H", "C", "mean", "ref_mean"):
        np.testing.assert_allclose(getattr(whole, field), getattr(plain, field), rtol=1e-6, atol=1e-9)


