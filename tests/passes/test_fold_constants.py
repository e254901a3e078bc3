"""fold_constants on tiny graphs: Paddle- and Keras-style constant chains become initializers (outputs checked
against onnxruntime), scalars stay scalars, and where it must not fire (random ops, graph inputs and outputs, folds
that grow the file)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.api import compress
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Layout, weight_table
from onnxcomp.passes import FoldConstants
from tests.helpers import assert_same_outputs, checked_model, float_vi, rand, save, tiny_model, weight_uses
from tests.passes.helpers import RNG, apply_pass, check_equal, op_types


def test_fold_constant_chains_into_initializers() -> None:
    """Paddle-style: Constant -> Reshape bias and Constant -> Transpose -> Cast kernel become initializers."""
    bias = RNG.standard_normal(4).astype(np.float32)
    kernel = RNG.standard_normal((4, 3)).astype(np.float64)
    nodes = [
        helper.make_node("Constant", [], ["bias_c"], value=numpy_helper.from_array(bias, "bias_v")),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, 4], np.int64))),
        helper.make_node("Reshape", ["bias_c", "shape"], ["bias"]),
        helper.make_node("Constant", [], ["k_c"], value=numpy_helper.from_array(kernel, "k_v")),
        helper.make_node("Transpose", ["k_c"], ["k_t"], perm=[1, 0]),
        helper.make_node("Cast", ["k_t"], ["k"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "k"], ["m"]),
        helper.make_node("Add", ["m", "bias"], ["y"]),
    ]
    proto = tiny_model(nodes, [], [float_vi("x", 2, 3)], [float_vi("y", 2, 4)])
    model, result = apply_pass(proto, FoldConstants())
    assert result.modified
    assert op_types(model) == ["MatMul", "Add"]
    table = {w.name: w for w in weight_table(model)}
    assert table["k"].source == "initializer" and table["k"].role == "weight" and table["k"].shape == (3, 4)
    assert table["bias"].shape == (1, 4)
    check_equal(proto, model, {"x": RNG.standard_normal((2, 3)).astype(np.float32)}, tol=1e-6)


def test_fold_constants_must_not_fire() -> None:
    """Random ops, ops on graph inputs, and a constant that is a graph output stay; a growing fold is refused."""
    nodes = [
        helper.make_node("RandomNormal", [], ["r"], shape=[2, 3], seed=1.0),
        helper.make_node("Mul", ["r", "x"], ["y"]),
        helper.make_node("Relu", ["x"], ["z"]),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([512, 512], np.int64))),
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("Shape", ["big"], ["big_shape"]),
        helper.make_node("Constant", [], ["c_out"], value=numpy_helper.from_array(np.ones(3, np.float32))),
    ]
    outputs = [float_vi("y", 2, 3), float_vi("z", 2, 3), float_vi("c_out", 3),
               helper.make_tensor_value_info("big_shape", TensorProto.INT64, [2])]
    proto = tiny_model(nodes, [], [float_vi("x", 2, 3)], outputs)
    model, result = apply_pass(proto, FoldConstants(FoldConstants.Config(small_bytes=1024)))
    ops = op_types(model)
    assert "RandomNormal" in ops and "Relu" in ops and "Constant" in ops
    # 1 MiB of zeros computed from a 16-byte shape would grow the file: refused, ConstantOfShape stays.
    assert "ConstantOfShape" in ops
    assert any(what == "big" and "larger" in why for what, why in result.skipped)


def test_fold_constants_keeps_scalars_scalar() -> None:
    """Regression: a 0-d Constant (a Gather index in PyTorch's LSTM exports) must stay 0-d when folded."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["i"], value=numpy_helper.from_array(np.array(1, np.int64))),
        helper.make_node("Gather", ["s", "i"], ["d"]),
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Unsqueeze", ["d", "axes"], ["d1"]),
        helper.make_node("Constant", [], ["minus1"], value=numpy_helper.from_array(np.array([-1], np.int64))),
        helper.make_node("Concat", ["minus1", "d1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    proto = tiny_model(nodes, [], [float_vi("x", 2, 3)], [float_vi("y", 2, 3)])
    model, result = apply_pass(proto, FoldConstants())
    assert result.modified and "Constant" not in op_types(model)
    index = next(n for n in model.graph.nodes if n.op == "Gather").inputs[1]
    assert index.values.shape == ()
    check_equal(proto, model, {"x": RNG.standard_normal((2, 3)).astype(np.float32)}, tol=0)


# -- exporter weight patterns, through the cleanup recipe ----------------------------------------------
def _exporter_patterns_model() -> onnx.ModelProto:
    rng = np.random.default_rng(13)
    kernel_t = rand(rng, 6, 4)  # Keras stores [out, in] here and the converter transposes it
    nodes = [
        helper.make_node("Constant", [], ["k_t"], value=numpy_helper.from_array(kernel_t, "k_tv"), name="keras_const"),
        helper.make_node("Transpose", ["k_t"], ["kernel"], perm=[1, 0], name="keras_transpose"),
        helper.make_node("MatMul", ["x", "kernel"], ["mm"], name="dense"),
        helper.make_node("Constant", [], ["bias_flat"], value=numpy_helper.from_array(rand(rng, 6), "bias_v"),
                         name="paddle_const"),
        helper.make_node("Constant", [], ["bias_shape"],
                         value=numpy_helper.from_array(np.array([1, 6], np.int64), "shape_v"), name="paddle_shape"),
        helper.make_node("Reshape", ["bias_flat", "bias_shape"], ["bias"], name="paddle_reshape"),
        helper.make_node("Add", ["mm", "bias"], ["y"], name="bias_add"),
    ]
    graph = helper.make_graph(nodes, "exporters", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])])
    return checked_model(graph)


def test_exporter_weight_patterns_become_initializers(tmp_path):
    path = save(_exporter_patterns_model(), tmp_path / "exp.onnx")
    before = {w.name: w for w in weight_table(Model.load(path))}
    assert weight_uses(before["k_t"]) == [("Transpose", 0, "keras_transpose")]  # behind a Transpose: not yet a kernel
    result = compress(path, recipe="cleanup")
    cleaned = result.model.to_proto()
    assert [n.op_type for n in cleaned.graph.node] == ["MatMul", "Add"]
    table = {w.name: w for w in weight_table(result.model)}
    assert set(table) == {"kernel", "bias"}
    assert table["kernel"].source == "initializer" and table["kernel"].role == "weight"
    assert table["kernel"].shape == (4, 6) and weight_uses(table["kernel"]) == [("MatMul", 1, "dense")]
    assert table["kernel"].layout == Layout(1, 0)
    assert table["bias"].source == "initializer" and table["bias"].shape == (1, 6)
    assert weight_uses(table["bias"]) == [("Add", 1, "bias_add")]
    assert {t.name for t in cleaned.graph.initializer} == {"kernel", "bias"}
    assert_same_outputs(path, cleaned, {"x": rand(np.random.default_rng(14), 3, 4)})
