"""fold_batchnorm on tiny graphs (Conv, grouped Conv, ConvTranspose, Gemm), each fold checked against onnxruntime;
where it must not fire; and weights shared between convolutions, one of which folds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.api import compress
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table
from onnxcomp.passes import FoldBatchNorm
from tests.helpers import assert_same_outputs, checked_model, float_vi, rand, save, tiny_model
from tests.passes.helpers import RNG, apply_pass, check_equal, op_types, random_init


def _bn_inits(prefix: str, c: int) -> list[onnx.TensorProto]:
    return [random_init(f"{prefix}_g", c), random_init(f"{prefix}_b", c), random_init(f"{prefix}_m", c),
            random_init(f"{prefix}_v", c, positive=True)]


def _bn(x: str, y: str, prefix: str, **attrs) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                            [y], epsilon=1e-3, **attrs)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_fold_bn_into_conv(bias: bool, group: int) -> None:
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    nodes = [helper.make_node("Conv", inputs, ["c"], pads=[1, 1, 1, 1], group=group), _bn("c", "y", "bn")]
    inits = [random_init("w", 8, 4 // group, 3, 3)] + _bn_inits("bn", 8)
    if bias:
        inits.append(random_init("b", 8))
    proto = tiny_model(nodes, inits, [float_vi("x", 2, 4, 6, 6)], [float_vi("y", 2, 8, 6, 6)])
    model, result = apply_pass(proto, FoldBatchNorm())
    assert result.modified and "BatchNormalization" not in op_types(model)
    check_equal(proto, model, {"x": RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)})


@pytest.mark.parametrize("group", [1, 2])
def test_fold_bn_into_conv_transpose(group: int) -> None:
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], strides=[2, 2], group=group), _bn("c", "y", "bn")]
    inits = [random_init("w", 4, 6 // group, 2, 2)] + _bn_inits("bn", 6)
    proto = tiny_model(nodes, inits, [float_vi("x", 1, 4, 5, 5)], [float_vi("y", 1, 6, 10, 10)])
    model, result = apply_pass(proto, FoldBatchNorm())
    assert result.modified
    check_equal(proto, model, {"x": RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_bn_into_gemm(trans_b: int) -> None:
    w = random_init("w", 5, 3) if trans_b else random_init("w", 3, 5)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=trans_b, beta=0.5, alpha=2.0), _bn("g", "y", "bn")]
    proto = tiny_model(nodes, [w, random_init("c", 5)] + _bn_inits("bn", 5), [float_vi("x", 4, 3)],
                       [float_vi("y", 4, 5)])
    model, result = apply_pass(proto, FoldBatchNorm())
    assert result.modified
    check_equal(proto, model, {"x": RNG.standard_normal((4, 3)).astype(np.float32)})


def test_fold_bn_copies_a_shared_weight() -> None:
    """Two convs read one weight; folding BN into the first must not change the second."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"]), _bn("c1", "y1", "bn"),
             helper.make_node("Conv", ["x", "w"], ["y2"])]
    proto = tiny_model(nodes, [random_init("w", 3, 3, 1, 1)] + _bn_inits("bn", 3), [float_vi("x", 1, 3, 4, 4)],
                       [float_vi("y1", 1, 3, 4, 4), float_vi("y2", 1, 3, 4, 4)])
    model, result = apply_pass(proto, FoldBatchNorm())
    assert result.modified
    check_equal(proto, model, {"x": RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)})
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
    inputs = [float_vi("x", 1, 3, 4, 4), float_vi("scale", 3)]
    outputs = [float_vi(n, 1, 3, 4, 4) for n in ("y1", "y2", "y3", "y4")]
    inits = [random_init("w", 3, 3, 1, 1)] + _bn_inits("bn", 3) + _bn_inits("bn2", 3)
    proto = tiny_model(nodes, inits, inputs, outputs)
    model, result = apply_pass(proto, FoldBatchNorm())
    assert not result.modified
    assert op_types(model).count("BatchNormalization") == 3
    reasons = {why for _, why in result.skipped}
    assert any("other consumers" in r for r in reasons)
    assert any("not produced by" in r for r in reasons)
    assert any("not constant" in r for r in reasons)


def test_fold_bn_keeps_graph_output_name() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "out", "bn")]
    proto = tiny_model(nodes, [random_init("w", 3, 3, 1, 1)] + _bn_inits("bn", 3), [float_vi("x", 1, 3, 4, 4)],
                       [float_vi("out", 1, 3, 4, 4)])
    model, _ = apply_pass(proto, FoldBatchNorm())
    assert [o.name for o in model.to_proto().graph.output] == ["out"]


# -- weights shared between convolutions ---------------------------------------------------------------
def _shared_conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(15)

    def bn_params(prefix: str) -> list[onnx.TensorProto]:
        return [numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), prefix + "_g"),
                numpy_helper.from_array(rand(rng, 4, scale=0.1), prefix + "_b"),
                numpy_helper.from_array(rand(rng, 4, scale=0.1), prefix + "_m"),
                numpy_helper.from_array(rng.uniform(0.5, 2.0, 4).astype(np.float32), prefix + "_v")]

    nodes = [
        # conv_a and conv_b share W and Wb; conv_a's BN folds, so W must be copied for conv_a only
        helper.make_node("Conv", ["x", "W", "Wb"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("BatchNormalization", ["a", "bna_g", "bna_b", "bna_m", "bna_v"], ["a_bn"], name="bn_a"),
        helper.make_node("Conv", ["x", "W", "Wb"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
        helper.make_node("BatchNormalization", ["b", "bnb_g", "bnb_b", "bnb_m", "bnb_v"], ["b_bn"], name="bn_b"),
        # conv_c's output also feeds a Relu: its BN fold must not fire
        helper.make_node("Conv", ["x", "W2"], ["c"], pads=[1, 1, 1, 1], name="conv_c"),
        helper.make_node("BatchNormalization", ["c", "bnc_g", "bnc_b", "bnc_m", "bnc_v"], ["c_bn"], name="bn_c"),
        helper.make_node("Relu", ["c"], ["c_relu"], name="relu_c"),
        helper.make_node("Add", ["a_bn", "b_bn"], ["ab"], name="add_ab"),
        helper.make_node("Add", ["ab", "c_bn"], ["abc"], name="add_abc"),
        helper.make_node("Add", ["abc", "c_relu"], ["y"], name="add_y"),
    ]
    inits = [numpy_helper.from_array(rand(rng, 4, 3, 3, 3, scale=0.3), "W"),
             numpy_helper.from_array(rand(rng, 4, scale=0.1), "Wb"),
             numpy_helper.from_array(rand(rng, 4, 3, 3, 3, scale=0.3), "W2")]
    inits += bn_params("bna") + bn_params("bnb") + bn_params("bnc")
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    return checked_model(graph)


def test_shared_weight_stays_intact_for_other_user(tmp_path):
    src = _shared_conv_model()
    path = save(src, tmp_path / "shared.onnx")
    original = {t.name: numpy_helper.to_array(t) for t in src.graph.initializer}
    before = {w.name: w for w in weight_table(Model.load(path))}
    assert before["W"].shared and [u.node.name for u in before["W"].uses] == ["conv_a", "conv_b"]

    result = compress(path, recipe="cleanup")
    cleaned = result.model.to_proto()
    assert_same_outputs(path, cleaned, {"x": rand(np.random.default_rng(16), 1, 3, 6, 6)})
    nodes = {n.name: n for n in cleaned.graph.node}
    # bn_a and bn_b folded, bn_c kept (conv_c's output also feeds relu_c)
    assert "bn_a" not in nodes and "bn_b" not in nodes and "bn_c" in nodes
    assert nodes["bn_c"].input[0] == "c" and nodes["relu_c"].input[0] == "c"
    inits = {t.name: numpy_helper.to_array(t) for t in cleaned.graph.initializer}
    assert np.array_equal(inits["W2"], original["W2"])  # conv_c untouched
    assert list(nodes["conv_c"].input) == ["x", "W2"]
    # every conv got its own folded copy; none of them writes into another's weights
    wa, wb = nodes["conv_a"].input[1], nodes["conv_b"].input[1]
    assert wa != wb
    for conv, bn in (("conv_a", "bna"), ("conv_b", "bnb")):
        scale = original[f"{bn}_g"] / np.sqrt(original[f"{bn}_v"] + 1e-5)
        w = inits[nodes[conv].input[1]]
        np.testing.assert_allclose(w, original["W"] * scale[:, None, None, None], rtol=1e-5, atol=1e-6)
        b = inits[nodes[conv].input[2]]
        np.testing.assert_allclose(b, (original["Wb"] - original[f"{bn}_m"]) * scale + original[f"{bn}_b"],
                                   rtol=1e-5, atol=1e-6)


def test_shared_weight_one_user_folds_other_keeps_original(tmp_path):
    """W is shared by conv_a (whose BN folds) and conv_b (no BN): conv_b must still read the original W."""
    rng = np.random.default_rng(17)
    W, Wb = rand(rng, 4, 3, 3, 3, scale=0.3), rand(rng, 4, scale=0.1)
    nodes = [
        helper.make_node("Conv", ["x", "W", "Wb"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("BatchNormalization", ["a", "bn_g", "bn_beta", "bn_m", "bn_v"], ["a_bn"], name="bn_a"),
        helper.make_node("Conv", ["x", "W", "Wb"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
        helper.make_node("Add", ["a_bn", "b"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "shared2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(Wb, "Wb"),
         numpy_helper.from_array(np.full(4, 2.0, np.float32), "bn_g"),
         numpy_helper.from_array(np.full(4, 0.5, np.float32), "bn_beta"),
         numpy_helper.from_array(np.full(4, 0.1, np.float32), "bn_m"),
         numpy_helper.from_array(np.full(4, 0.25, np.float32), "bn_v")],
    )
    path = save(checked_model(graph), tmp_path / "shared2.onnx")
    cleaned = compress(path, recipe="cleanup").model.to_proto()
    nodes = {n.name: n for n in cleaned.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in cleaned.graph.initializer}
    assert "bn_a" not in nodes
    assert list(nodes["conv_b"].input) == ["x", "W", "Wb"]
    assert np.array_equal(inits["W"], W) and np.array_equal(inits["Wb"], Wb)
    assert nodes["conv_a"].input[1] != "W" and nodes["conv_a"].input[2] != "Wb"
    assert_same_outputs(path, cleaned, {"x": rand(rng, 1, 3, 6, 6)})
