"""dedupe_constants: equal initializers merged (dtype, shape and bytes), interface tensors left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.ir.model import Model
from onnxcomp.passes import DedupeConstants
from onnxcomp.passes.base import PassContext


def _model():
    three = np.array(3.0, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (three, "a"), (three.copy(), "b"),  # the same: merged
        (three.reshape(1), "c"),  # same value, other shape: kept
        (np.nextafter(three, np.float32(4)), "d"),  # one ulp away: kept
        (three.copy(), "g"),  # also a graph input (overridable): kept
        (np.array([2, -1], np.int64), "s1"), (np.array([2, -1], np.int64), "s2"),  # merged
    ]]
    nodes = [helper.make_node("Mul", ["x", "a"], ["y1"]), helper.make_node("Mul", ["y1", "b"], ["y2"]),
             helper.make_node("Add", ["y2", "c"], ["y3"]), helper.make_node("Sub", ["y3", "d"], ["y4"]),
             helper.make_node("Mul", ["y4", "g"], ["y5"]), helper.make_node("Reshape", ["y5", "s1"], ["y6"]),
             helper.make_node("Reshape", ["y6", "s2"], ["out"])]
    graph = helper.make_graph(nodes, "consts",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("g", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(proto, feed):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_equal_initializers_merge_and_others_stay():
    proto = _model()
    model = Model.load(proto)
    result = DedupeConstants().run(model, PassContext())
    out = model.to_proto()
    assert result.modified
    assert sorted((r["weight"], r["into"]) for r in result.records) == [("b", "a"), ("s2", "s1")]
    assert sorted(t.name for t in out.graph.initializer) == ["a", "c", "d", "g", "s1"]
    assert [n.input[1] for n in out.graph.node] == ["a", "a", "c", "d", "g", "s1", "s1"]
    feed = {"x": np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)}
    np.testing.assert_array_equal(_run(out, feed), _run(proto, feed))


def test_nothing_to_merge_is_no_change():
    model = Model.load(_model())
    DedupeConstants().run(model, PassContext())
    again = DedupeConstants().run(model, PassContext())
    assert not again.modified and again.records == [] and again.summary == "no duplicate initializer"


def test_a_constant_also_read_in_a_subgraph_is_left_alone():
    three = np.array(3.0, np.float32)
    then = helper.make_graph([helper.make_node("Mul", ["y", "b"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])])
    other = helper.make_graph([helper.make_node("Identity", ["y"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "a"], ["w"]), helper.make_node("Mul", ["w", "b"], ["y"]),
         helper.make_node("If", ["cond"], ["out"], then_branch=then, else_branch=other)], "branchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(three, "a"), numpy_helper.from_array(three.copy(), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model = Model.load(proto)
    assert not DedupeConstants().run(model, PassContext()).modified
    out = model.to_proto()
    feed = {"x": np.ones((2, 3), np.float32), "cond": np.array(True)}
    np.testing.assert_array_equal(_run(out, feed), _run(proto, feed))


def test_int4_codes_merge_by_their_storage_type_and_still_export():
    """INT4 codes equal to INT8 ones stay apart (another storage type); two equal INT4 tensors merge, and the model
    still exports (reading a narrow constant through graphsurgeon's cache would write the unpacked byte count)."""
    codes = np.array([[1, -2, 3, -4], [5, -6, 7, -8]], np.int8)
    inits = [helper.make_tensor(n, t, codes.shape, codes.ravel().tolist())
             for n, t in [("a", TensorProto.INT4), ("b", TensorProto.INT4), ("c", TensorProto.INT8)]]
    inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "s"))
    nodes = [helper.make_node("DequantizeLinear", [n, "s"], [f"d{n}"]) for n in "abc"]
    nodes += [helper.make_node("Add", ["da", "db"], ["e"]), helper.make_node("Add", ["e", "dc"], ["f"]),
              helper.make_node("Add", ["f", "x"], ["y"])]
    graph = helper.make_graph(nodes, "int4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    model = Model.load(proto)
    result = DedupeConstants().run(model, PassContext())
    assert result.records == [{"weight": "b", "into": "a", "bytes": 4}]
    out = model.to_proto()
    onnx.checker.check_model(out)
    assert {t.name: t.data_type for t in out.graph.initializer} == {"a": TensorProto.INT4, "c": TensorProto.INT8,
                                                                    "s": TensorProto.FLOAT}
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(_run(out, {"x": x}), _run(proto, {"x": x}))
