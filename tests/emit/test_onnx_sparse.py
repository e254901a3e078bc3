"""The sparse ONNX target: compute ops, their model-local functions (stock onnxruntime), and where lowering must
not happen."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxcomp.emit import onnx_sparse
from onnxcomp.ir.graph_edit import tensor_names
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table
from onnxcomp.kernels import reference, schema
from tests.conftest import rel_err

RNG = np.random.default_rng(0)


def _stock(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    """onnxruntime without onnxcomp's library: the compute ops run their functions."""
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def _one_op(op: str, inputs: list[np.ndarray], attrs: dict, xshape: tuple, opset: int = 17) -> onnx.ModelProto:
    names = [f"i{k}" for k in range(len(inputs))]
    node = h.make_node(op, ["x", *names], ["y"], domain=schema.DOMAIN, **attrs)
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", T.FLOAT, list(xshape))],
                         [h.make_tensor_value_info("y", T.FLOAT, [f"d{i}" for i in range(len(xshape))])],
                         [nh.from_array(a, n) for a, n in zip(inputs, names)])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid(schema.DOMAIN, 1)],
                         functions=[onnx_sparse.function(op, opset)])
    model.ir_version = 10 if opset >= 21 else 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _pruned(shape: tuple, sparsity: float) -> np.ndarray:
    w = RNG.standard_normal(shape).astype(np.float32)
    w[RNG.random(shape) < sparsity] = 0
    return w


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99, 1.0])
def test_sparse_gemm_function_is_the_reference(relu, sparsity):
    w = _pruned((20, 12), sparsity)
    idx = np.flatnonzero(w).astype(np.int32)
    bias = RNG.standard_normal(12).astype(np.float32)
    op = schema.SPARSE_GEMM + (schema.RELU_SUFFIX if relu else "")
    x = RNG.standard_normal((2, 3, 20)).astype(np.float32)
    (y,) = _stock(_one_op(op, [w.reshape(-1)[idx], idx, bias], {"shape": [20, 12]}, x.shape), {"x": x})
    assert rel_err(reference.sparse_gemm(x, w.reshape(-1)[idx], idx, bias, (20, 12), relu), y) <= 1e-6


@pytest.mark.parametrize("opset, dtype", [(17, np.uint8), (21, onnx.helper.tensor_dtype_to_np_dtype(T.UINT4))])
def test_codebook_functions_are_the_reference(opset, dtype):
    book = np.array([0, -1.5, 0.25, 2.0], np.float32)
    codes = RNG.integers(0, 4, (20, 12))
    bias = RNG.standard_normal(12).astype(np.float32)
    x = RNG.standard_normal((3, 20)).astype(np.float32)
    (y,) = _stock(_one_op(schema.CODEBOOK_GEMM, [book, codes.astype(dtype), bias], {"shape": [20, 12]}, x.shape,
                          opset), {"x": x})
    assert rel_err(reference.codebook_gemm(x, book, codes, bias, (20, 12)), y) <= 1e-6
    nz = np.flatnonzero(codes).astype(np.int32)
    model = _one_op(schema.SPARSE_CODEBOOK_GEMM, [book, codes.reshape(-1)[nz].astype(dtype), nz, bias],
                    {"shape": [20, 12]}, x.shape, opset)
    (y,) = _stock(model, {"x": x})
    assert rel_err(reference.sparse_codebook_gemm(x, book, codes.reshape(-1)[nz], nz, bias, (20, 12)), y) <= 1e-6


@pytest.mark.parametrize("attrs", [
    dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1),
    dict(strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 2], group=2),
    dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=4),
])
def test_sparse_conv_function_is_the_reference(attrs):
    group = attrs["group"]
    w = _pruned((8, 4 // group, 3, 3), 0.7)
    idx = np.flatnonzero(w).astype(np.int32)
    bias = RNG.standard_normal(8).astype(np.float32)
    x = RNG.standard_normal((2, 4, 9, 8)).astype(np.float32)
    model = _one_op(schema.SPARSE_CONV + "Relu", [w.reshape(-1)[idx], idx, bias], {"shape": list(w.shape), **attrs},
                    x.shape)
    (y,) = _stock(model, {"x": x})
    want = reference.sparse_conv(x, w.reshape(-1)[idx], idx, bias, w.shape, attrs["strides"], attrs["pads"],
                                 attrs["dilations"], group, relu=True)
    assert rel_err(want, y) <= 1e-5


def _mlp() -> onnx.ModelProto:
    w1, w2 = _pruned((16, 32), 0.9), _pruned((10, 16), 0.8)
    b1 = RNG.standard_normal(16).astype(np.float32)
    nodes = [h.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), h.make_node("Relu", ["h"], ["r"]),
             h.make_node("MatMul", ["r", "w2t"], ["y"])]
    graph = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, [4, 32])],
                         [h.make_tensor_value_info("y", T.FLOAT, [4, 10])],
                         [nh.from_array(w1, "w1"), nh.from_array(b1, "b1"), nh.from_array(w2.T.copy(), "w2t")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_lowered_model_runs_in_stock_onnxruntime():
    """Gemm(transB) + Relu becomes SparseGemmRelu (weight transposed to [K, N]); the file runs unchanged in stock
    onnxruntime through the functions and computes the original."""
    proto = _mlp()
    model = Model.load(proto)
    names = tensor_names(model.graphs())
    for w in [w for w in weight_table(model) if w.role == "weight"]:
        found = onnx_sparse.candidate(model.graph, w.primary.node, w)
        assert not isinstance(found, str), found
        onnx_sparse.lower_sparse(model, model.graph, found, names)
    out = model.to_proto()
    assert [n.op_type for n in out.graph.node] == ["SparseGemmRelu", "SparseGemm"]
    assert {(f.domain, f.name) for f in out.functions} == {(schema.DOMAIN, "SparseGemmRelu"),
                                                            (schema.DOMAIN, "SparseGemm")}
    onnx.checker.check_model(out, full_check=True)
    x = {"x": RNG.standard_normal((4, 32)).astype(np.float32)}
    assert rel_err(_stock(proto, x)[0], _stock(out, x)[0]) <= 1e-5


def test_candidates_that_must_not_be_lowered():
    """Refused with a reason: a Gemm with alpha != 1, a Conv with auto_pad, a weight that is not float32."""
    w = nh.from_array(_pruned((8, 8), 0.9), "w")
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, [1, 8])
    cases = {
        "alpha": (h.make_node("Gemm", ["x", "w"], ["y"], alpha=2.0), w, x, y, "alpha"),
        "auto_pad": (h.make_node("Conv", ["x", "w4"], ["y"], auto_pad="SAME_UPPER"),
                     nh.from_array(_pruned((2, 1, 3, 3), 0.5), "w4"), h.make_tensor_value_info("x", T.FLOAT,
                                                                                             [1, 1, 4, 4]),
                     h.make_tensor_value_info("y", T.FLOAT, [1, 2, 4, 4]), "explicit pads"),
        "float16": (h.make_node("MatMul", ["x", "w16"], ["y"]), nh.from_array(_pruned((8, 8), 0.9).astype(np.float16),
                                                                            "w16"),
                    h.make_tensor_value_info("x", T.FLOAT16, [1, 8]), h.make_tensor_value_info("y", T.FLOAT16, [1, 8]),
                    "float16"),
    }
    for name, (node, init, xi, yi, word) in cases.items():
        proto = h.make_model(h.make_graph([node], name, [xi], [yi], [init]), opset_imports=[h.make_opsetid("", 17)])
        model = Model.load(proto)
        (w,) = [w for w in weight_table(model) if w.role == "weight"]
        found = onnx_sparse.candidate(model.graph, w.primary.node, w)
        assert isinstance(found, str) and word in found, (name, found)
