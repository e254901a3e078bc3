"""What a model is made of (``onnxcomp/measure/summary.py``): size by section from real serialized bytes (each
section the bytes of its own tensors, all sections summing to the file), the op histogram across subgraphs and
domains, per-weight rows for float and encoded weights (codebook Gathers, DequantizeLinear codes, packed blobs)
with their bits, and ``summarize``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.paths import model_path
from onnxcomp.api import compress
from onnxcomp.ir.model import Model
from onnxcomp.measure.summary import SECTIONS, layer_rows, op_histogram, size_by_section, summarize

CLEANUP = ["fold_constants", "eliminate_identity", "fold_batchnorm", "eliminate_dead"]
W = np.array([[0.5, 0.0, -1.0], [2.0, 0.0, 0.25], [0.0, 0.0, 1.5], [-0.5, 0.0, 0.0]], np.float32)  # 6 of 12 zero
BOOK = np.array([0.0, -1.0, 0.5, 2.0], np.float32)
INDEX = np.array([[1, 2], [3, 0], [2, 2]], np.uint8)  # W2 = BOOK[INDEX]: 3 distinct nonzero values
CODES = np.array([[-3, 0], [3, 1]], np.int8)  # a 7-level (3-bit) span


def _inits() -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in [
        numpy_helper.from_array(W, "w"), numpy_helper.from_array(np.ones(3, np.float32), "b"),
        numpy_helper.from_array(BOOK, "book"), numpy_helper.from_array(INDEX, "idx"),
        numpy_helper.from_array(CODES, "q"), numpy_helper.from_array(np.float32(0.5), "s"),
        numpy_helper.from_array(np.array([-1, 2], np.int64), "shape")]}


def _model() -> onnx.ModelProto:
    """x [1, 4] -> MatMul(w) + b -> MatMul(Gather(book, Cast(idx))) -> MatMul(DequantizeLinear(q, s)) -> Reshape."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b"], ["h1"], name="fc1_bias"),
        helper.make_node("Cast", ["idx"], ["idx32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["book", "idx32"], ["w2"], axis=0),
        helper.make_node("MatMul", ["h1", "w2"], ["h2"], name="fc2"),
        helper.make_node("DequantizeLinear", ["q", "s"], ["w3"]),
        helper.make_node("MatMul", ["h2", "w3"], ["h3"], name="fc3"),
        helper.make_node("Reshape", ["h3", "shape"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(_inits().values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string="a model")
    helper.set_model_props(model, {"author": "someone"})
    model.ir_version = 8
    return model


def test_size_sections_are_the_bytes_of_their_tensors() -> None:
    proto = _model()
    sizes = size_by_section(proto)
    inits = _inits()

    def nbytes(*names: str) -> int:
        return sum(inits[n].ByteSize() for n in names)

    assert sizes["float weights"] == nbytes("w", "b", "book")
    assert sizes["codebook indices"] == nbytes("idx")  # found through the Cast
    assert sizes["quantized tensors"] == nbytes("q", "s")  # what DequantizeLinear reads, its float scale too
    assert sizes["other tensors"] == nbytes("shape")
    assert sizes["packed weights"] == 0
    assert sizes["metadata"] == proto.metadata_props[0].ByteSize() + len("a model")
    assert sizes["total"] == proto.ByteSize() == sum(sizes[s] for s in SECTIONS)
    assert sizes["graph"] > 0


def test_op_histogram_counts_subgraphs_and_names_domains() -> None:
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["t"])],
                               "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Gelu", ["x"], ["t"], domain="com.microsoft")], "else", [],
                              [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other),
         helper.make_node("Relu", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    histogram = op_histogram(model)
    assert histogram == {"Relu": 3, "If": 1, "com.microsoft.Gelu": 1}
    assert list(histogram)[0] == "Relu"  # most common first


def test_layer_rows_of_float_and_encoded_weights() -> None:
    rows = layer_rows(Model.load(_model()))
    # kernels first (the encoded ones decoded), then biases, then other constants (the codebook, the scale)
    assert [(r.weight, r.role) for r in rows] == [("w", "weight"), ("w2", "weight"), ("w3", "weight"), ("b", "bias"),
                                                  ("book", "other"), ("s", "other")]
    by_weight = {r.weight: r for r in rows}
    fc1 = by_weight["w"]
    assert (fc1.layer, fc1.op, fc1.shape, fc1.params, fc1.bytes, fc1.dtype) == ("fc1", "MatMul", [4, 3], 12, 48,
                                                                                 "float32")
    assert fc1.sparsity == 0.5 and fc1.bits is None
    assert by_weight["b"].role == "bias" and by_weight["b"].sparsity == 0.0
    fc2 = by_weight["w2"]  # the codebook and its uint8 indices, decoded
    assert (fc2.layer, fc2.op, fc2.shape, fc2.params, fc2.dtype) == ("fc2", "MatMul", [3, 2], 6, "float32")
    assert fc2.bytes == BOOK.nbytes + INDEX.nbytes and fc2.bits == 2  # 3 distinct nonzero values: 2 bits
    assert fc2.sparsity == pytest.approx(1 / 6)  # one zero among the gathered values
    fc3 = by_weight["w3"]  # integer codes and a scale
    assert (fc3.layer, fc3.shape, fc3.params, fc3.bytes, fc3.bits) == ("fc3", [2, 2], 4, CODES.nbytes + 4, 3)
    assert fc3.sparsity == 0.25


def test_summarize_is_what_inspect_prints() -> None:
    proto = _model()
    proto.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]))  # an overridable weight
    info = summarize(Model.load(proto))
    assert info["inputs"] == [{"name": "x", "dtype": "float", "shape": [1, 4]}]
    assert info["outputs"] == [{"name": "y", "dtype": "float", "shape": []}]
    assert info["ops"] == op_histogram(proto) and info["size"] == size_by_section(Model.load(proto).to_proto())
    assert info["parameters"] == 12 + 6 + 4 + 3 + 4 + 1 and info["layer_parameters"] == 12 + 6 + 4
    assert info["metadata"] == {"author": "someone"} and info["opsets"] == {"": 17}
    assert [r["weight"] for r in info["layers"]] == [r.weight for r in layer_rows(Model.load(proto))]


# -- quantized weights in a real report ------------------------------------------------------------------------
def test_report_counts_quantized_weights_with_their_bits() -> None:
    """Quantized kernels show up in the size sections and in the per-layer table with their width, also when the
    codes are packed into a blob."""
    from onnxcomp.measure.summary import layer_rows, size_by_section

    for recipe, limit in (([*CLEANUP, {"quantize_weights": {"bits": 3}}], 9216 + 32 * 4),  # int8 codes + scales
                          ([*CLEANUP, {"quantize_weights": {"bits": 3}}, {"pack_weights": {"min_elements": 256}}],
                           9216 * 3 // 8 + 32 * 4 + 64)):  # 3-bit codes packed, a blob header
        model = compress(model_path("mnist_rescnn"), recipe={"passes": recipe}).model
        rows = {r.layer: r for r in layer_rows(model) if r.role == "weight"}
        conv = rows["/block2/conv2/Conv"]
        assert conv.bits == 3 and conv.params == 9216 and conv.shape == [32, 32, 3, 3]
        assert conv.bytes <= limit
        assert rows["/stem/stem.0/Conv"].bits is None  # below min_elements: float
        sizes = size_by_section(model.to_proto())
        assert sizes["quantized tensors"] > 0


def test_int4_model_still_exports_after_a_summary() -> None:
    """Reading INT4 codes (report, packing) must not cache them in the graph: graphsurgeon would then export the
    unpacked bytes and onnx rejects the tensor."""
    from onnxcomp.measure.summary import layer_rows

    result = compress(model_path("mnist_rescnn"), recipe={"passes": [{"quantize_weights": {"bits": 4, "opset": 21}}]})
    rows = [r for r in layer_rows(result.model) if r.bits == 4]
    assert rows and all(r.bytes < r.params for r in rows)  # int4: two codes a byte, plus scales
    proto = result.model.to_proto()
    assert TensorProto.INT4 in {t.data_type for t in proto.graph.initializer}
