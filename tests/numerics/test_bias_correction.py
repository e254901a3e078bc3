"""Bias correction: which bias a layer has, the centered statistics, and the mean shift the bias absorbs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.calibration.data import CalibrationData
from onnxcomp.calibration.hessian import collect_hessians
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table
from onnxcomp.numerics.bias_correction import discard_unused, layer_bias
from onnxcomp.numerics.obs import prune_compensated
from tests.conftest import run_ort

RNG = np.random.default_rng(0)


def _model(nodes, inits, x_shape, y_shape):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Model(model)


def _kernel(model: Model, name: str = "w"):
    return next(w for w in weight_table(model) if w.name == name)


W = RNG.normal(size=(4, 6)).astype(np.float32)
B = RNG.normal(size=4).astype(np.float32)


def test_finds_gemm_conv_and_matmul_add_biases() -> None:
    gemm = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=2.0, beta=0.5)],
                  {"w": W, "b": B}, [3, 6], [3, 4])
    found = layer_bias(gemm, _kernel(gemm))
    assert found.name == "b" and found.scale == pytest.approx(4.0) and not found.created
    matmul = _model([helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])],
                    {"w": W.T.copy(), "b": B}, [3, 6], [3, 4])
    assert layer_bias(matmul, _kernel(matmul)).name == "b"


@pytest.mark.parametrize("case", ["matmul-no-add", "shared-bias", "beta-0", "matrix-c"])
def test_no_bias_where_none_can_absorb_the_shift(case: str) -> None:
    if case == "matmul-no-add":  # must not fire: a MatMul's output read by a Relu has nowhere to put a bias
        model = _model([helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Relu", ["t"], ["y"])],
                       {"w": W.T.copy()}, [3, 6], [3, 4])
    elif case == "shared-bias":  # changing it would change another layer
        model = _model([helper.make_node("Gemm", ["x", "w", "b"], ["t"], transB=1),
                        helper.make_node("Gemm", ["x", "w2", "b"], ["u"], transB=1),
                        helper.make_node("Add", ["t", "u"], ["y"])], {"w": W, "w2": W + 1, "b": B}, [3, 6], [3, 4])
    elif case == "beta-0":
        model = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, beta=0.0)],
                       {"w": W, "b": B}, [3, 6], [3, 4])
    else:  # C of shape [M, N] is not per output channel
        model = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
                       {"w": W, "b": np.ones((3, 4), np.float32)}, [3, 6], [3, 4])
    assert layer_bias(model, _kernel(model), create=True) is None


def test_created_conv_bias_runs_and_is_discarded_when_unused() -> None:
    w = RNG.normal(size=(5, 3, 3, 3)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], {"w": w},
                   [2, 3, 6, 6], [2, 5, 6, 6])
    x = RNG.normal(size=(2, 3, 6, 6)).astype(np.float32)
    before = run_ort(model.to_proto(), {"x": x})[0]
    bias = layer_bias(model, _kernel(model), create=True)
    assert bias.created and bias.weight.shape == (5,)
    np.testing.assert_array_equal(run_ort(model.to_proto(), {"x": x})[0], before)
    discard_unused(model, [bias])
    assert len(model.graph.nodes[0].inputs) == 2
    assert [t.name for t in model.to_proto().graph.initializer] == ["w"]


def test_constant_input_weights_go_to_the_bias_exactly() -> None:
    """An input column that is constant on the data: its weights are pruned and the output does not change."""
    x = RNG.normal(size=(200, 6)).astype(np.float32)
    x[:, 2] = -0.42  # a normalised image border
    model = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=2.0, beta=0.5)],
                   {"w": W, "b": B}, [200, 6], [200, 4])
    before = run_ort(model.to_proto(), {"x": x})[0]
    kernel = _kernel(model)
    h = collect_hessians(model, [kernel], CalibrationData([{"x": x}]))["w"]
    assert np.allclose(h.mean[0], x.mean(axis=0), atol=1e-6)
    c = h.centered()
    assert c.is_centered and np.all(c.H[0][2] == 0) and np.all(c.H[0][:, 2] == 0)
    keep = np.ones_like(W, dtype=bool)
    keep[:, 2] = False
    new = prune_compensated(W.astype(np.float64), c.H[0], keep, damp=0.0)
    np.testing.assert_allclose(new[:, [0, 1, 3, 4, 5]], W[:, [0, 1, 3, 4, 5]], rtol=1e-6, atol=1e-6)
    bias = layer_bias(model, kernel)
    bias.absorb(c, W, new.astype(np.float32))
    kernel.set(new.astype(np.float32))
    after = run_ort(model.to_proto(), {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
