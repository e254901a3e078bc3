"""strip_defaults: attributes equal to their default go, outputs stay bit-identical, nothing else is touched."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.api import compress
from tests.conftest import run_ort

RECIPE = {"name": "strip", "passes": ["strip_defaults"]}


def _attrs(proto: onnx.ModelProto) -> dict[str, dict[str, object]]:
    return {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in proto.graph.node}


def test_rescnn_drops_pytorch_defaults_same_outputs(root, tmp_path) -> None:
    src = root / "models" / "mnist_rescnn.onnx"
    result = compress(src, recipe=RECIPE, output=tmp_path / "s.onnx")
    out = onnx.load(tmp_path / "s.onnx")
    attrs = _attrs(out)
    assert set(attrs["/block1/conv1/Conv"]) == {"kernel_shape", "pads"}  # pads [1, 1, 1, 1] is not the default
    assert set(attrs["/fc/Gemm"]) == {"transB"}  # alpha = beta = 1.0 went
    assert "ceil_mode" not in attrs["/pool/MaxPool"] and "strides" in attrs["/pool/MaxPool"]  # stride 2 stays
    assert (tmp_path / "s.onnx").stat().st_size < src.stat().st_size - 400
    x = np.load(root / "models" / "data" / "mnist_test.npz")["input"][:16]
    np.testing.assert_array_equal(run_ort(str(src), {"input": x})[0], run_ort(out, {"input": x})[0])
    assert "default attributes dropped" in result.report.passes[0].summary


def test_non_defaults_and_custom_domains_are_kept(tmp_path) -> None:
    """Must not fire: dilation 2, group 2, alpha 0.5, a string that is not the default, a custom-domain node."""
    w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
    g = numpy_helper.from_array(np.ones((1, 4), np.float32), "g")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", dilations=[2, 2], group=2, strides=[1, 1],
                         auto_pad="VALID"),
        helper.make_node("Flatten", ["c"], ["f"], name="flat", axis=1),
        helper.make_node("ReduceMean", ["f"], ["r"], name="mean", axes=[1], keepdims=1),
        helper.make_node("Gemm", ["r", "g"], ["y0"], name="gemm", alpha=0.5, beta=1.0),
        helper.make_node("Relu", ["y0"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, g])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    custom = helper.make_node("Foo", ["y"], ["z"], name="custom", domain="my.domain", alpha=1.0)
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    compress(src, recipe=RECIPE, output=tmp_path / "s.onnx")
    attrs = _attrs(onnx.load(tmp_path / "s.onnx"))
    assert attrs["conv"] == {"dilations": [2, 2], "group": 2, "auto_pad": b"VALID"}  # strides [1, 1] went
    assert attrs["flat"] == {}  # Flatten's axis defaults to 1
    assert attrs["mean"] == {"axes": [1]}
    assert attrs["gemm"] == {"alpha": 0.5}
    x = np.random.default_rng(0).normal(size=(1, 4, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(str(src), {"x": x})[0], run_ort(str(tmp_path / "s.onnx"), {"x": x})[0])

    # A node of another domain keeps its attributes even when a standard op of that name has the same default.
    model.graph.node.append(custom)
    model.graph.output[0].name = "z"
    model.opset_import.append(helper.make_opsetid("my.domain", 1))
    from onnxcomp.ir.model import Model
    from onnxcomp.passes.strip_defaults import StripDefaults

    m = Model(model)
    StripDefaults(StripDefaults.Config()).run(m, None)
    assert {a.name for a in m.to_proto().graph.node[-1].attribute} == {"alpha"}


def test_value_info_drop_keeps_boundaries_and_outputs(tmp_path) -> None:
    """Rule 4: intermediate shapes go with ``value_info: drop`` (not by default); graph inputs/outputs keep theirs."""
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])], [w],
                              value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4, 3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    x = np.random.default_rng(0).normal(size=(1, 1, 5, 5)).astype(np.float32)
    for mode, kept in (("keep", ["c"]), ("drop", [])):
        out = tmp_path / f"{mode}.onnx"
        result = compress(src, recipe={"name": "s", "passes": [{"strip_defaults": {"value_info": mode}}]},
                          output=out)
        proto = onnx.load(out)
        assert [v.name for v in proto.graph.value_info] == kept
        assert proto.graph.input[0].type == model.graph.input[0].type
        assert proto.graph.output[0].type == model.graph.output[0].type
        np.testing.assert_array_equal(run_ort(str(src), {"x": x})[0], run_ort(proto, {"x": x})[0])
        assert ("value_info of 1 intermediate tensors dropped" in result.report.passes[0].summary) == (mode == "drop")
