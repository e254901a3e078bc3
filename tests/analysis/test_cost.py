"""MACs, parameters and shapes of ONNX graphs: hand-counted tiny graphs, and torchvision's published totals."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import builders
from models.paths import model_path
from onnxcomp import runtime
from onnxcomp.analysis.cost import HEAVY_OPS, NodeCost, node_costs, tensor_shapes, total_macs
from onnxcomp.errors import PassError
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table
from onnxcomp.passes import PackWeights
from onnxcomp.passes.base import PassContext
from onnxcomp.passes.pack_weights import PackConfig
from onnxcomp.runtime import session


def _w(name: str, *shape: int, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.full(shape, 0.5, dtype=dtype), name)


def _vi(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opsets=(("", 17),)) -> Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    proto.ir_version = 8
    return Model.load(proto)


def _one(op: str, x_shape, inits, out_rank: int, **attrs) -> Model:
    """x -> op(x, *inits) -> y, with y's shape left to inference."""
    node = helper.make_node(op, ["x"] + [t.name for t in inits], ["y"], name="n", **attrs)
    return _model([node], [_vi("x", x_shape)], [_vi("y", [None] * out_rank)], inits)


def _cost(model: Model, **kw) -> NodeCost:
    (c,) = node_costs(model, **kw)
    return c


# -- exact counts on tiny graphs ---------------------------------------------------------------------------------
def test_conv_groups_stride_pads() -> None:
    # X [1,8,10,10], W [16,4,3,3], group 2, stride 2, pads 1 -> Y [1,16,5,5]
    m = _one("Conv", [1, 8, 10, 10], [_w("w", 16, 4, 3, 3), _w("b", 16)], 4, group=2, strides=[2, 2],
             pads=[1, 1, 1, 1])
    c = _cost(m)
    assert tensor_shapes(m)["y"] == (1, 16, 5, 5)
    assert c == NodeCost("n", "Conv", (16 * 5 * 5) * (4 * 3 * 3), 16 * 4 * 3 * 3 + 16)


def test_depthwise_conv() -> None:
    m = _one("Conv", [1, 32, 14, 14], [_w("w", 32, 1, 3, 3)], 4, group=32, pads=[1, 1, 1, 1])
    assert _cost(m).macs == (32 * 14 * 14) * 9


def test_conv_1d_dilated_same_and_3d() -> None:
    # 1-D, dilation 2, SAME_UPPER keeps the length 20: Y [2,6,20]
    m = _one("Conv", [2, 4, 20], [_w("w", 6, 4, 5)], 3, dilations=[2], auto_pad="SAME_UPPER")
    assert tensor_shapes(m)["y"] == (2, 6, 20)
    assert _cost(m).macs == (2 * 6 * 20) * (4 * 5)
    # 3-D, no padding: Y [1,4,4,4,4]
    m = _one("Conv", [1, 2, 6, 6, 6], [_w("w", 4, 2, 3, 3, 3)], 5)
    assert _cost(m).macs == (4 * 4 * 4 * 4) * (2 * 27)


def test_conv_transpose_counts_input_elements() -> None:
    # X [1,8,7,7], W [8, 4, 4, 4] with group 2: C_out = 8, C_out/group = 4; stride 2 -> Y [1,8,16,16]
    m = _one("ConvTranspose", [1, 8, 7, 7], [_w("w", 8, 4, 4, 4)], 4, group=2, strides=[2, 2])
    assert tensor_shapes(m)["y"] == (1, 8, 16, 16)
    assert _cost(m).macs == (8 * 7 * 7) * 4 * (4 * 4)


def test_gemm_trans() -> None:
    m = _one("Gemm", [4, 64], [_w("w", 10, 64), _w("b", 10)], 2, transB=1)
    assert _cost(m) == NodeCost("n", "Gemm", 4 * 10 * 64, 10 * 64 + 10)
    m = _one("Gemm", [64, 4], [_w("w", 64, 10)], 2, transA=1)
    assert _cost(m).macs == 4 * 10 * 64


def test_matmul_batched_broadcast_and_constant() -> None:
    # activation @ activation: [2,1,5,8] @ [3,8,6] -> [2,3,5,6], K = 8
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    m = _model([node], [_vi("a", [2, 1, 5, 8]), _vi("b", [3, 8, 6])], [_vi("y", None)])
    c = _cost(m)
    assert c.node == "MatMul:y" and c.params == 0
    assert c.macs == (2 * 3 * 5 * 6) * 8
    # constant weight, and a 1-D left operand
    assert _cost(_one("MatMul", [1, 7, 16], [_w("w", 16, 32)], 3)) == NodeCost("n", "MatMul", 7 * 32 * 16, 512)
    assert _cost(_one("MatMul", [8], [_w("w", 8, 6)], 1)).macs == 8 * 6


def test_cheap_ops_only_with_all_ops() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["gp"]),
        helper.make_node("Reshape", ["gp", "shape"], ["y"]),
    ]
    inits = [_w("w", 4, 3, 3, 3), _w("g", 4), _w("b", 4), _w("mu", 4), _w("var", 4),
             numpy_helper.from_array(np.array([1, 4], np.int64), "shape")]
    m = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", None)], inits)
    costs = {c.op: c for c in node_costs(m)}
    conv = 4 * 64 * 27
    assert costs["Conv"].macs == conv and costs["Conv"].params == 4 * 27
    assert costs["BatchNormalization"].macs == 256 and costs["BatchNormalization"].params == 16
    assert costs["Relu"].macs == 256
    assert costs["MaxPool"].macs == (4 * 4 * 4) * 4
    assert costs["GlobalAveragePool"].macs == 4 * 4 * 4
    assert costs["Reshape"] == NodeCost("Reshape:y", "Reshape", 0, 0)  # int64 shape: not a parameter
    assert total_macs(m) == conv
    assert total_macs(m, all_ops=True) == conv + 256 + 256 + 256 + 64
    assert "Relu" not in HEAVY_OPS


def test_quantized_weight_counts_as_parameter() -> None:
    # Conv reading DequantizeLinear(int8 codes): the dequantized weight is constant, so it is the Conv's
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"]),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    inits = [numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "q"),
             numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    m = _model(nodes, [_vi("x", [1, 3, 5, 5])], [_vi("y", None)], inits)
    costs = node_costs(m)
    assert costs[1] == NodeCost("conv", "Conv", 4 * 25 * 3, 12)
    assert costs[0].params == 1  # the float scale


def test_packed_weights_keep_their_counts() -> None:
    model = Model.load(model_path("mnist_lenet300"))
    for w in weight_table(model):
        if w.role == "weight":
            w.set(np.round(w.array * 8) / 8)  # few distinct values: worth packing
    expected = [(c.op, c.macs, c.params) for c in node_costs(model) if c.op == "Gemm"]
    assert expected == [("Gemm", 784 * 300, 784 * 300 + 300), ("Gemm", 300 * 100, 300 * 100 + 100),
                        ("Gemm", 100 * 10, 100 * 10 + 10)]
    for fmt, decoder in (("standard", "Gather"), ("packed", "DecodeWeight")):
        packed = model.copy()
        PackWeights(PackConfig(format=fmt)).run(packed, PassContext())
        costs = node_costs(packed)
        assert decoder in {c.op for c in costs}
        assert [(c.op, c.macs, c.params) for c in costs if c.op == "Gemm"] == expected


def test_large_constant_node_weight() -> None:
    w = numpy_helper.from_array(np.ones((64, 32), np.float32), "wv")
    nodes = [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("MatMul", ["x", "w"], ["y"])]
    m = _model(nodes, [_vi("x", ["batch", 64])], [_vi("y", None)])
    assert [(c.op, c.macs, c.params) for c in node_costs(m, batch=2)] == [("Constant", 0, 0),
                                                                          ("MatMul", 2 * 32 * 64, 64 * 32)]


def test_einsum_and_lstm() -> None:
    # attention scores: [b,h,q,d] x [b,h,k,d] -> [b,h,q,k]: b*h*q*k*d products
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bhqd,bhkd->bhqk")
    m = _model([node], [_vi("a", [2, 4, 10, 16]), _vi("b", [2, 4, 12, 16])], [_vi("y", None)])
    assert total_macs(m) == 2 * 4 * 10 * 12 * 16
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="...ij,jk->...ik")
    m = _model([node], [_vi("a", [3, 5, 6, 7]), _vi("b", [7, 8])], [_vi("y", None)])
    assert total_macs(m) == 3 * 5 * 6 * 7 * 8
    # LSTM, 2 directions: seq 5, batch 3, input 10, hidden 20: 4 gates on [x, h]
    inits = [_w("W", 2, 80, 10), _w("R", 2, 80, 20)]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=20, direction="bidirectional")
    m = _model([node], [_vi("x", [5, 3, 10])], [_vi("y", None)], inits)
    assert _cost(m) == NodeCost("LSTM:y", "LSTM", 5 * 3 * 2 * 80 * (10 + 20), 2 * 80 * 30)


def test_batch_scales_symbolic_leading_dim() -> None:
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    m = _model([node], [_vi("x", ["N", 5, 8])], [_vi("y", ["N", 5, 6])], [_w("w", 8, 6)])
    assert total_macs(m) == 5 * 6 * 8
    assert total_macs(m, batch=3) == 3 * 5 * 6 * 8
    assert tensor_shapes(m, batch=3)["y"] == (3, 5, 6)


def test_onnxruntime_fallback_for_shapes_inference_cannot_give(monkeypatch) -> None:
    # onnx knows no com.microsoft schemas: Gelu's output, hence the MatMul's, come from one onnxruntime run
    nodes = [helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
             helper.make_node("MatMul", ["g", "w"], ["y"], name="mm")]
    m = _model(nodes, [_vi("x", ["batch", 7, 16])], [_vi("y", None)], [_w("w", 16, 32)],
               opsets=(("", 17), ("com.microsoft", 1)))
    sessions = []
    monkeypatch.setattr(runtime, "session", lambda *a, **kw: sessions.append(a) or session(*a, **kw))
    shapes = tensor_shapes(m, batch=2)
    assert len(sessions) == 1
    assert shapes["g"] == (2, 7, 16) and shapes["y"] == (2, 7, 32)
    assert node_costs(m, batch=2)[1] == NodeCost("mm", "MatMul", 2 * 7 * 32 * 16, 16 * 32)


def test_unknown_custom_op_needs_shapes() -> None:
    # neither onnx nor onnxruntime knows foo.Bar: its output shape must be given, and inference carries it on
    nodes = [helper.make_node("Bar", ["x"], ["g"], domain="foo"), helper.make_node("MatMul", ["g", "w"], ["y"])]
    m = _model(nodes, [_vi("x", ["batch", 16])], [_vi("y", None)], [_w("w", 16, 32)],
               opsets=(("", 17), ("foo", 1)))
    with pytest.raises(PassError, match="'g'.*give their shapes in shapes=") as err:
        node_costs(m)
    assert "\n" not in str(err.value)
    costs = node_costs(m, shapes={"g": (3, 16)})
    assert [(c.op, c.macs) for c in costs] == [("Bar", 0), ("MatMul", 3 * 32 * 16)]


def test_subgraph_bodies_are_not_counted() -> None:
    def branch(name: str) -> onnx.GraphProto:
        mm = helper.make_node("MatMul", ["x", "w"], [f"{name}_y"])
        return helper.make_graph([mm], name, [], [_vi(f"{name}_y", [1, 32])])

    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else")),
             helper.make_node("MatMul", ["x", "w"], ["z"])]
    inputs = [_vi("x", [1, 16]), _vi("cond", [], TensorProto.BOOL)]
    m = _model(nodes, inputs, [_vi("y", None), _vi("z", None)], [_w("w", 16, 32)])
    costs = node_costs(m)
    assert [(c.op, c.macs) for c in costs] == [("If", 0), ("MatMul", 32 * 16)]
    assert total_macs(m, all_ops=True) == 32 * 16


# -- symbolic dims ----------------------------------------------------------------------------------------------
def _nchw_model() -> Model:
    return _one("Conv", ["N", 3, "H", "W"], [_w("w", 8, 3, 3, 3)], 4, pads=[1, 1, 1, 1])


def test_symbolic_spatial_dims_need_shapes() -> None:
    m = _nchw_model()
    with pytest.raises(PassError) as err:
        total_macs(m)
    msg = str(err.value)
    assert "\n" not in msg and "input 'x'" in msg and "'H'" in msg and "shapes" in msg
    assert total_macs(m, shapes={"x": (2, 3, 32, 32)}) == 2 * 8 * 32 * 32 * 27
    assert tensor_shapes(m, shapes={"x": [1, 3, 16, 20]})["y"] == (1, 8, 16, 20)


@pytest.mark.parametrize("shapes, words", [
    ({"x": (1, 3, 32)}, "rank 3"),
    ({"x": (1, 4, 32, 32)}, "axis 1"),
    ({"nope": (1,)}, "'nope'"),
])
def test_bad_shapes_are_refused(shapes, words) -> None:
    with pytest.raises(PassError, match=words):
        node_costs(_nchw_model(), shapes=shapes)


def test_caller_model_is_not_modified() -> None:
    m = _nchw_model()
    before = m.to_proto().SerializeToString()
    node_costs(m, shapes={"x": (1, 3, 8, 8)})
    assert m.to_proto().SerializeToString() == before
    nodes = [helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
             helper.make_node("MatMul", ["g", "w"], ["y"])]
    m = _model(nodes, [_vi("x", ["batch", 7, 16])], [_vi("y", None)], [_w("w", 16, 32)],
               opsets=(("", 17), ("com.microsoft", 1)))
    before = m.to_proto().SerializeToString()
    tensor_shapes(m)  # the onnxruntime fallback adds outputs to its own copy only
    assert m.to_proto().SerializeToString() == before


# -- known totals (torchvision's MACs at 224 x 224, batch 1) ------------------------------------------------------
@pytest.mark.parametrize("name, expected, tol", [
    ("resnet18", 1.814e9, 0.01),
    ("mobilenetv2", 0.300e9, 0.03),
])
def test_known_totals(name: str, expected: float, tol: float) -> None:
    macs = total_macs(Model.load(getattr(builders, name)()), batch=1)
    assert abs(macs / expected - 1) <= tol


def test_resnet50_total_and_speed() -> None:
    model = Model.load(builders.resnet50())
    before = model.to_proto().SerializeToString()
    start = time.perf_counter()
    costs = node_costs(model, batch=1)
    seconds = time.perf_counter() - start
    macs = sum(c.macs for c in costs if c.op in HEAVY_OPS)
    assert abs(macs / 4.09e9 - 1) <= 0.02
    # torchvision's 25,557,032 parameters count BN's gamma and beta, not its running mean and variance
    bn = sum(c.params for c in costs if c.op == "BatchNormalization")
    assert sum(c.params for c in costs if c.op in ("Conv", "Gemm")) + bn // 2 == 25_557_032
    assert seconds < 3.0
    assert model.to_proto().SerializeToString() == before
