"""onnxruntime's Q/DQ placement (``onnxcomp/emit/onnx_standard.py``'s ``place_qdq``), through quantize_activations
on int8-weight models: every layer fuses into an integer kernel of onnxruntime's optimized graph, Relu is absorbed
by the following Q, data movement shares its input's grid, a constant Mul operand fuses, int8 symmetric grids, and
graph output names."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.runtime import int8_pairs_saturate
from tests.conftest import run_ort, run_ort_unfused
from tests.helpers import (
    consumers,
    cosine,
    float_vi,
    int8_weights,
    optimized_ops,
    quantize_activations,
    random_calibration,
    resnetish,
    seeded_init,
    tiny_model,
)


def test_onnxruntime_fuses_every_layer(tmp_path) -> None:
    float_model = resnetish()
    proto_in = int8_weights(float_model)
    data = random_calibration(proto_in, (2, 3, 8, 8))
    proto, result = quantize_activations(proto_in, data)
    ops = optimized_ops(proto, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["QLinearAdd"] == 1 and ops["QLinearGlobalAveragePool"] == 1
    assert ops["QGemm"] == 1 and ops["MaxPool"] == 1  # MaxPool runs on uint8: its DQ/Q pair was dropped
    assert not {"Conv", "Gemm", "Add", "GlobalAveragePool"} & set(ops)
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 0  # only the graph input is quantized
    # Rule 4: the Relus stay in the graph, the Q goes after them (onnxruntime fuses Conv -> Relu -> Q).
    assert consumers(proto, "c1") == ["Relu"] and "QuantizeLinear" in consumers(proto, "r1")
    assert [o.name for o in proto.graph.output] == ["logits"]
    x = np.random.default_rng(9).standard_normal((16, 3, 8, 8)).astype(np.float32)
    assert cosine(run_ort(float_model, {"x": x})[0], run_ort(proto, {"x": x})[0]) > 0.995
    acts = [r for r in result.records if r["kind"] == "activation"]
    assert {r["tensor"] for r in acts} == {"x", "r1", "p1", "c2", "r2", "g", "f"}
    assert all({"method", "range", "scale", "zero_point"} <= set(r) for r in acts if "shared_with" not in r)
    assert next(r for r in acts if r["tensor"] == "p1")["shared_with"] == "r1"  # MaxPool keeps its input's grid
    assert all(r["zero_point"] == 0 for r in acts if r["tensor"] in ("r1", "r2"))  # zero point at the bottom
    assert sum(r["kind"] == "bias" for r in result.records) == 3 and result.skipped == []
    for init in proto.graph.initializer:
        if init.name.startswith(("b1", "b2", "bf")):
            assert init.data_type in (TensorProto.INT32, TensorProto.FLOAT)
    assert {i.name for i in proto.graph.initializer if i.data_type == TensorProto.INT32} >= {
        "b1_quantized",
        "b2_quantized",
        "bf_quantized",
    }


def test_matmul_and_constant_mul_fuse(tmp_path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "gamma"], ["m"], name="scale"),  # a float constant operand (rule 5)
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "wm"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("MatMul", ["hr", "wo"], ["y"], name="mm2"),
    ]
    inits = [
        seeded_init("w1", 4, 2, 1, 1),
        seeded_init("gamma", 1, 4, 1, 1),
        numpy_helper.from_array(np.array([-1, 16], np.int64), "shape"),
        seeded_init("wm", 16, 8),
        seeded_init("wo", 8, 3),
    ]
    float_model = tiny_model(nodes, inits, [float_vi("x", 2, 2, 2, 2)], [float_vi("y", 2, 3)])
    data = random_calibration(float_model, (2, 2, 2, 2), n=16)
    proto, result = quantize_activations(int8_weights(float_model), data)
    ops = optimized_ops(proto, tmp_path)
    assert ops["QLinearConv"] == 1 and ops["QLinearMul"] == 1 and ops["QLinearMatMul"] == 1
    assert ops["MatMulIntegerToFloat"] == 1  # the last MatMul's float output is the graph output
    assert sum(r["kind"] == "constant" for r in result.records) == 1
    ref = np.concatenate([run_ort(float_model, f)[0] for f in data])
    assert cosine(ref, np.concatenate([run_ort_unfused(proto, f)[0] for f in data])) > 0.99
    if not int8_pairs_saturate():  # the fused integer kernels too, where they are exact (see conftest)
        assert cosine(ref, np.concatenate([run_ort(proto, f)[0] for f in data])) > 0.99


def test_int8_symmetric_on_onnxruntime(tmp_path) -> None:
    proto, result = quantize_activations(
        int8_weights(resnetish()), random_calibration(resnetish(), (2, 3, 8, 8)), activation_dtype="int8"
    )
    assert all(r["zero_point"] == 0 for r in result.records if r["kind"] == "activation")
    assert "QuantizeLinear" in consumers(proto, "c1")  # a symmetric grid cannot absorb the Relu
    # On x86 onnxruntime converts int8 pairs to uint8 only where a Q feeds one DQ: the first Conv fuses, the second
    # (its input also feeds the Add) does not; onnxruntime's own int8 quantizer gives the same graph.
    assert optimized_ops(proto, tmp_path)["QLinearConv"] >= 1


def test_graph_output_of_a_conv_keeps_its_name(tmp_path) -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    float_model = tiny_model(nodes, [seeded_init("w", 3, 2, 1, 1)], [float_vi("x", 1, 2, 4, 4)],
                             [float_vi("y", 1, 3, 4, 4)])
    proto, _ = quantize_activations(int8_weights(float_model), random_calibration(float_model, (1, 2, 4, 4)))
    assert [o.name for o in proto.graph.output] == ["y"]
    assert next(n for n in proto.graph.node if "y" in n.output).op_type == "DequantizeLinear"
    assert optimized_ops(proto, tmp_path)["QLinearConv"] == 1
