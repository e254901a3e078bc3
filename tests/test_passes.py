"""The cleanup passes on tiny graphs: each rewrite checked against onnxruntime, and where it must not fire."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table
from onnxcomp.passes import EliminateDead, EliminateIdentity, FoldBatchNorm, FoldConstants
from onnxcomp.passes.base import PassContext
from tests.conftest import rel_err, run_ort

RNG = np.random.default_rng(0)


def _init(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
    value = RNG.standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.abs(value) + 0.5 if positive else value, name)


def _model(nodes, inits, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _vi(name: str, *shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _bn_inits(prefix: str, c: int) -> list[onnx.TensorProto]:
    return [_init(f"{prefix}_g", c), _init(f"{prefix}_b", c), _init(f"{prefix}_m", c),
            _init(f"{prefix}_v", c, positive=True)]


def _bn(x: str, y: str, prefix: str, **attrs) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                            [y], epsilon=1e-3, **attrs)


def _apply(proto: onnx.ModelProto, pass_):
    model = Model.load(proto)
    result = pass_.run(model, PassContext())
    return model, result


def _check_equal(before: onnx.ModelProto, after: Model, feed: dict, tol: float = 1e-5) -> None:
    for a, b in zip(run_ort(before, feed), run_ort(after.to_proto(), feed)):
        assert rel_err(a, b) <= tol


def _ops(model: Model) -> list[str]:
    return [n.op for g in model.graphs() for n in g.nodes]


# -- fold_batchnorm --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_fold_bn_into_conv(bias: bool, group: int) -> None:
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    nodes = [helper.make_node("Conv", inputs, ["c"], pads=[1, 1, 1, 1], group=group), _bn("c", "y", "bn")]
    inits = [_init("w", 8, 4 // group, 3, 3)] + _bn_inits("bn", 8)
    if bias:
        inits.append(_init("b", 8))
    proto = _model(nodes, inits, [_vi("x", 2, 4, 6, 6)], [_vi("y", 2, 8, 6, 6)])
    model, result = _apply(proto, FoldBatchNorm())
    assert result.modified and "BatchNormalization" not in _ops(model)
    _check_equal(proto, model, {"x": RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)})


@pytest.mark.parametrize("group", [1, 2])
def test_fold_bn_into_conv_transpose(group: int) -> None:
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], strides=[2, 2], group=group), _bn("c", "y", "bn")]
    inits = [_init("w", 4, 6 // group, 2, 2)] + _bn_inits("bn", 6)
    proto = _model(nodes, inits, [_vi("x", 1, 4, 5, 5)], [_vi("y", 1, 6, 10, 10)])
    model, result = _apply(proto, FoldBatchNorm())
    assert result.modified
    _check_equal(proto, model, {"x": RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_bn_into_gemm(trans_b: int) -> None:
    w = _init("w", 5, 3) if trans_b else _init("w", 3, 5)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=trans_b, beta=0.5, alpha=2.0), _bn("g", "y", "bn")]
    proto = _model(nodes, [w, _init("c", 5)] + _bn_inits("bn", 5), [_vi("x", 4, 3)], [_vi("y", 4, 5)])
    model, result = _apply(proto, FoldBatchNorm())
    assert result.modified
    _check_equal(proto, model, {"x": RNG.standard_normal((4, 3)).astype(np.float32)})


def test_fold_bn_copies_a_shared_weight() -> None:
    """Two convs read one weight; folding BN into the first must not change the second."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"]), _bn("c1", "y1", "bn"),
             helper.make_node("Conv", ["x", "w"], ["y2"])]
    proto = _model(nodes, [_init("w", 3, 3, 1, 1)] + _bn_inits("bn", 3), [_vi("x", 1, 3, 4, 4)],
                   [_vi("y1", 1, 3, 4, 4), _vi("y2", 1, 3, 4, 4)])
    model, result = _apply(proto, FoldBatchNorm())
    assert result.modified
    _check_equal(proto, model, {"x": RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)})
    second = next(n for n in model.graph.nodes if n.outputs[0].name == "y2")
    np.testing.assert_array_equal(second.inputs[1].values, numpy_helper.to_array(proto.graph.initializer[0]))


def test_fold_bn_must_not_fire() -> None:
    """Conv output used twice; BN on a graph input; BN with a non-constant scale; BN in training mode."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        _bn("c", "y1", "bn"),
        helper.make_node("Relu", ["c"], ["y2"]),
        _bn("x", "y3", "bn2"),
        helper.make_node("Conv", ["x", "w"], ["c4"]),
        helper.make_node("BatchNormalization", ["c4", "scale", "bn_b", "bn_m", "bn_v"], ["y4"]),
    ]
    inputs = [_vi("x", 1, 3, 4, 4), _vi("scale", 3)]
    outputs = [_vi(n, 1, 3, 4, 4) for n in ("y1", "y2", "y3", "y4")]
    proto = _model(nodes, [_init("w", 3, 3, 1, 1)] + _bn_inits("bn", 3) + _bn_inits("bn2", 3), inputs, outputs)
    model, result = _apply(proto, FoldBatchNorm())
    assert not result.modified
    assert _ops(model).count("BatchNormalization") == 3
    reasons = {why for _, why in result.skipped}
    assert any("other consumers" in r for r in reasons)
    assert any("not produced by" in r for r in reasons)
    assert any("not constant" in r for r in reasons)


def test_fold_bn_keeps_graph_output_name() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "out", "bn")]
    proto = _model(nodes, [_init("w", 3, 3, 1, 1)] + _bn_inits("bn", 3), [_vi("x", 1, 3, 4, 4)],
                   [_vi("out", 1, 3, 4, 4)])
    model, _ = _apply(proto, FoldBatchNorm())
    assert [o.name for o in model.to_proto().graph.output] == ["out"]


# -- fold_constants --------------------------------------------------------------------------------------
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
    proto = _model(nodes, [], [_vi("x", 2, 3)], [_vi("y", 2, 4)])
    model, result = _apply(proto, FoldConstants())
    assert result.modified
    assert _ops(model) == ["MatMul", "Add"]
    table = {w.name: w for w in weight_table(model)}
    assert table["k"].source == "initializer" and table["k"].role == "weight" and table["k"].shape == (3, 4)
    assert table["bias"].shape == (1, 4)
    _check_equal(proto, model, {"x": RNG.standard_normal((2, 3)).astype(np.float32)}, tol=1e-6)


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
    outputs = [_vi("y", 2, 3), _vi("z", 2, 3), _vi("c_out", 3),
               helper.make_tensor_value_info("big_shape", TensorProto.INT64, [2])]
    proto = _model(nodes, [], [_vi("x", 2, 3)], outputs)
    model, result = _apply(proto, FoldConstants(FoldConstants.Config(small_bytes=1024)))
    ops = _ops(model)
    assert "RandomNormal" in ops and "Relu" in ops and "Constant" in ops
    # 1 MiB of zeros computed from a 16-byte shape would grow the file: refused, ConstantOfShape stays.
    assert "ConstantOfShape" in ops
    assert any(what == "big" and "larger" in why for what, why in result.skipped)


# -- eliminate_identity ----------------------------------------------------------------------------------
def test_eliminate_identity_and_dropout() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Dropout", ["b"], ["c"]),
        helper.make_node("Sigmoid", ["c"], ["d"]),
        helper.make_node("Identity", ["d"], ["y"]),  # graph output: Sigmoid writes y directly
    ]
    proto = _model(nodes, [], [_vi("x", 2, 3)], [_vi("y", 2, 3)])
    model, result = _apply(proto, EliminateIdentity())
    assert result.modified and _ops(model) == ["Relu", "Sigmoid"]
    assert [o.name for o in model.to_proto().graph.output] == ["y"]
    _check_equal(proto, model, {"x": RNG.standard_normal((2, 3)).astype(np.float32)}, tol=0)


def test_eliminate_identity_must_not_fire() -> None:
    """Identity copying a graph input to an output; Dropout whose mask is used; Identity from an output."""
    nodes = [
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node("Dropout", ["x"], ["d", "mask"]),
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["r2"]),
    ]
    outputs = [_vi("y", 2, 3), _vi("m", 2, 3), _vi("d", 2, 3), _vi("r", 2, 3), _vi("r2", 2, 3)]
    proto = _model(nodes, [], [_vi("x", 2, 3)], outputs, opset=13)
    model, result = _apply(proto, EliminateIdentity())
    assert not result.modified
    assert _ops(model).count("Identity") == 2 and "Dropout" in _ops(model)


# -- eliminate_dead --------------------------------------------------------------------------------------
def test_eliminate_dead() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("MatMul", ["x", "w"], ["unused"]),
        helper.make_node("Sigmoid", ["unused"], ["unused2"]),
    ]
    proto = _model(nodes, [_init("w", 3, 3)], [_vi("x", 2, 3), _vi("spare", 1)], [_vi("y", 2, 3)])
    model, result = _apply(proto, EliminateDead())
    assert result.modified and _ops(model) == ["Relu"]
    out = model.to_proto()
    assert len(out.graph.initializer) == 0
    assert [i.name for i in out.graph.input] == ["x", "spare"]  # inputs are the interface: kept

    model2, result2 = _apply(out, EliminateDead())
    assert not result2.modified


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
    proto = _model(nodes, [], [_vi("x", 2, 3)], [_vi("y", 2, 3)])
    model, result = _apply(proto, FoldConstants())
    assert result.modified and "Constant" not in _ops(model)
    index = next(n for n in model.graph.nodes if n.op == "Gather").inputs[1]
    assert index.values.shape == ()
    _check_equal(proto, model, {"x": RNG.standard_normal((2, 3)).astype(np.float32)}, tol=0)
