"""The sparse ONNX target: pruned and shared layers as ``ai.onnxcomp`` compute ops where they run faster.

A layer's node becomes one of :mod:`onnxcomp.kernels.schema`'s compute ops, whose native kernels read the weight
in the form compression left it (:func:`lower_sparse`):

- ``Conv`` (2-D, explicit pads) with a pruned weight -> ``SparseConv(X, values, indices, bias)``;
- ``MatMul`` with a constant ``[K, N]`` weight, or ``Gemm`` (``transA = 0``, ``alpha = beta = 1``; a ``transB``
  weight transposed to ``[K, N]``) -> ``SparseGemm(A, values, indices, bias)``, or, when the weight holds at most
  256 distinct values, each used 4 times on average (``share_weights``), ``CodebookGemm(A, codebook, codes,
  bias)`` / ``SparseCodebookGemm(A, codebook, codes, indices, bias)`` with uint4 codes when k <= 16 and the opset
  is >= 21, else uint8;
- a Relu that is the node's only reader is fused (``...Relu`` ops).

``values``/``indices`` (int32, row-major positions) hold the nonzeros; the bias is the node's (zeros when it has
none). Every op used gets a model-local function of the same domain and name (:func:`function`) whose body
rebuilds the dense weight with standard ops (ConstantOfShape + ScatterElements + Reshape, or a codebook Gather) and
runs the dense op: stock onnxruntime inlines it and folds the weight at load (the same file runs without onnxcomp),
onnxruntime with onnxcomp's library (:mod:`onnxcomp.kernels.library`) runs the native kernel instead.

A layer is lowered only where that is measured faster on this CPU (:func:`probe`): the dense node and its sparse
replacement, alone, on the layer's input shape, timed interleaved (medians). No fixed sparsity threshold: whether
90% sparsity pays depends on the shape (a 3x3 256-channel conv is compute-bound, a batch-1 FC memory-bound).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import helper as h

from onnxcomp.codecs.stack import dense_codebook
from onnxcomp.ir.graph_edit import detach, is_graph_output, is_standard, unique_name
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Weight, constant_value
from onnxcomp.kernels import library, schema

_T = onnx.TensorProto
MIN_FUNCTION_OPSET = 13  # ReduceProd with keepdims, ScatterElements, Constant value_ints
UINT4_OPSET = 21
_CODEBOOK_MAX = 256
_REPEATS = 4  # a codebook op when every level is used this many times on average


@dataclass
class Candidate:
    """A layer that could become a compute op: its node, its weight as [K, N] (Gemm family) or as stored (Conv)."""

    node: gs.Node
    weight: Weight
    op: str  # a base op of kernels/schema.py
    matrix: np.ndarray  # float32: the Conv weight as stored, or the Gemm family's [K, N]
    bias: np.ndarray  # float32 [N] or [M]
    relu: gs.Node | None  # a Relu to fuse

    @property
    def name(self) -> str:
        return self.op + (schema.RELU_SUFFIX if self.relu is not None else "")


def candidate(graph: gs.Graph, node: gs.Node, w: Weight) -> Candidate | str:
    """The compute op ``node`` could become, or why it cannot (the weight ``w`` is its kernel)."""
    if w.array.dtype != np.float32:
        return f"{w.array.dtype} weight (the compute ops take float32)"
    if node.op == "Conv":
        if len(w.shape) != 4 or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return "not a 2-D Conv with explicit pads"
        if len(node.inputs) > 2 and node.inputs[2].name and constant_value(node.inputs[2]) is None:
            return "the bias is not a constant"
        op, matrix = schema.SPARSE_CONV, w.array
        out_channels = w.shape[0]
    elif node.op in ("Gemm", "MatMul"):
        if node.op == "Gemm" and (int(node.attrs.get("transA", 0)) or float(node.attrs.get("alpha", 1.0)) != 1.0
                                  or float(node.attrs.get("beta", 1.0)) != 1.0):
            return "Gemm with transA or alpha/beta other than 1"
        if len(node.inputs) < 2 or node.inputs[1] is not w.tensor and (w.producer is None or
                                                                        node.inputs[1] is not w.producer.outputs[0]):
            return "the weight is not the second operand"
        if len(w.shape) != 2:
            return "not a 2-D weight"
        matrix = w.array.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else w.array
        op, out_channels = schema.SPARSE_GEMM, matrix.shape[1]
        if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
            bias = constant_value(node.inputs[2])
            if bias is None or bias.size not in (1, out_channels) or bias.ndim > 1 and bias.shape[0] != 1:
                return "the Gemm's C is not a constant per-column bias"
    else:
        return f"{node.op} has no compute op"
    bias = np.zeros(out_channels, np.float32)
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = np.broadcast_to(constant_value(node.inputs[2]).astype(np.float32).reshape(-1), (out_channels,)).copy()
    if op == schema.SPARSE_GEMM:
        book = dense_codebook(matrix, _CODEBOOK_MAX)
        nonzeros = int(np.count_nonzero(matrix))
        # shared weights (share_weights): few levels, each repeated; any small weight has <= 256 distinct values
        if book is not None and nonzeros >= _REPEATS * len(book[0]):
            op = schema.SPARSE_CODEBOOK_GEMM if nonzeros < matrix.size else schema.CODEBOOK_GEMM
    y = node.outputs[0]
    relu = None
    if len(y.outputs) == 1 and is_standard(y.outputs[0], "Relu") and not is_graph_output(graph, y):
        relu = y.outputs[0]
    return Candidate(node, w, op, np.ascontiguousarray(matrix, np.float32), bias, relu)


def operands(c: Candidate, opset: int) -> list[np.ndarray]:
    """The weight-side inputs of ``c``'s op (kernels/schema.py order, after the activation)."""
    flat = c.matrix.reshape(-1)
    indices = np.flatnonzero(flat).astype(np.int32)
    if c.op in (schema.SPARSE_GEMM, schema.SPARSE_CONV):
        return [flat[indices].astype(np.float32), indices, c.bias]
    book, codes = dense_codebook(c.matrix, _CODEBOOK_MAX)
    book = book.astype(np.float32)
    if c.op == schema.CODEBOOK_GEMM:
        return [book, _codes(codes.reshape(c.matrix.shape), len(book), opset), c.bias]
    return [book, _codes(codes.reshape(-1)[indices], len(book), opset), indices, c.bias]


def _codes(codes: np.ndarray, k: int, opset: int) -> np.ndarray:
    if k <= 16 and opset >= UINT4_OPSET:
        return codes.astype(onnx.helper.tensor_dtype_to_np_dtype(_T.UINT4))
    return codes.astype(np.uint8)


def lower_sparse(model: Model, graph: gs.Graph, c: Candidate, names: set[str]) -> None:
    """Replace ``c.node`` (and a fused Relu) by its compute op, reading ``operands``; add the op's function."""
    base = c.weight.name
    consts = []
    for label, array in zip(schema.INPUTS[c.op][1:], operands(c, model.opset)):
        consts.append(_constant(unique_name(f"{base}_{label}", names), array))
    attrs = {schema.ATTR_SHAPE: list(c.matrix.shape)}
    if c.op == schema.SPARSE_CONV:
        rank = 2
        attrs.update(strides=list(c.node.attrs.get("strides", [1] * rank)),
                     pads=list(c.node.attrs.get("pads", [0] * 2 * rank)),
                     dilations=list(c.node.attrs.get("dilations", [1] * rank)), group=int(c.node.attrs.get("group", 1)))
    out = c.relu.outputs[0] if c.relu is not None else c.node.outputs[0]
    at = graph.nodes.index(c.node)
    node = gs.Node(c.name, name=c.node.name or unique_name(base + "_sparse", names), domain=schema.DOMAIN,
                   inputs=[c.node.inputs[0], *consts], outputs=[out], attrs=attrs)
    if c.relu is not None:
        c.relu.outputs = []
        detach(graph, c.relu)
    c.node.outputs = []
    detach(graph, c.node)
    graph.nodes.insert(at, node)
    model.add_function(function(c.name, model.opset))


def _constant(name: str, array: np.ndarray) -> gs.Constant:
    if array.dtype.name == "uint4":  # graphsurgeon cannot export uint4 from numpy
        from onnx import numpy_helper
        from onnx_graphsurgeon.ir.tensor import LazyValues

        return gs.Constant(name, LazyValues(numpy_helper.from_array(array, name)))
    return gs.Constant(name, np.ascontiguousarray(array))


def function(op: str, opset: int) -> onnx.FunctionProto:
    """The model-local function ``ai.onnxcomp.<op>``: the dense equivalent of the op, in standard ONNX."""
    base, relu = schema.base_op(op)
    inputs = list(schema.INPUTS[base])
    shape = h.make_node("Constant", [], ["shape"])
    shape.attribute.append(_ref("value_ints", schema.ATTR_SHAPE, onnx.AttributeProto.INTS))
    nodes = [shape, h.make_node("ReduceProd", ["shape"], ["size"], keepdims=1)]
    if base == schema.CODEBOOK_GEMM:
        nodes = [h.make_node("Cast", ["codes"], ["codes32"], to=_T.INT32),
                 h.make_node("Gather", ["codebook", "codes32"], ["W"], axis=0)]
    else:
        if base == schema.SPARSE_CODEBOOK_GEMM:
            nodes += [h.make_node("Cast", ["codes"], ["codes32"], to=_T.INT32),
                      h.make_node("Gather", ["codebook", "codes32"], ["values"], axis=0)]
        nodes += [h.make_node("ConstantOfShape", ["size"], ["zeros"], value=h.make_tensor("", _T.FLOAT, [1], [0.0])),
                  h.make_node("ScatterElements", ["zeros", "indices", "values"], ["flat"], axis=0),
                  h.make_node("Reshape", ["flat", "shape"], ["W"])]
    if base == schema.SPARSE_CONV:
        conv = h.make_node("Conv", [inputs[0], "W", "bias"], ["Y0"])
        for name in schema.CONV_ATTRS:
            kind = onnx.AttributeProto.INT if name == "group" else onnx.AttributeProto.INTS
            conv.attribute.append(_ref(name, name, kind))
        nodes.append(conv)
        attributes = [schema.ATTR_SHAPE, *schema.CONV_ATTRS]
    else:
        nodes += [h.make_node("MatMul", [inputs[0], "W"], ["AW"]), h.make_node("Add", ["AW", "bias"], ["Y0"])]
        attributes = [schema.ATTR_SHAPE]
    nodes.append(h.make_node("Relu" if relu else "Identity", ["Y0"], ["Y"]))
    return h.make_function(schema.DOMAIN, op, inputs, ["Y"], nodes, [h.make_opsetid("", opset)], attributes)


def _ref(name: str, ref: str, kind: int) -> onnx.AttributeProto:
    """An attribute that takes the value of the function's attribute ``ref`` at each call."""
    return onnx.AttributeProto(name=name, ref_attr_name=ref, type=kind)


# -- the probe -----------------------------------------------------------------------------------------------------
def probe(c: Candidate, input_shape: tuple[int, ...], opset: int, threads: int = 0, rounds: int = 15
          ) -> tuple[float, float]:
    """(dense seconds, compute-op seconds): medians of interleaved runs of the layer alone on ``input_shape``
    (with the native library; the dense side is the node as it is, its weight a constant)."""
    dense, sparse = layer_models(c, input_shape, opset)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    if threads:
        so.intra_op_num_threads = threads
    sd = ort.InferenceSession(dense.SerializeToString(), so, providers=["CPUExecutionProvider"])
    so_sparse = ort.SessionOptions()
    so_sparse.log_severity_level = 4
    if threads:
        so_sparse.intra_op_num_threads = threads
    library.register(so_sparse)
    ss = ort.InferenceSession(sparse.SerializeToString(), so_sparse, providers=["CPUExecutionProvider"])
    x = {"x": np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds + 2):
        for k, s in ((0, sd), (1, ss)) if r % 2 == 0 else ((1, ss), (0, sd)):
            start = time.perf_counter()
            s.run(None, x)
            if r >= 2:  # warm-up rounds
                times[k].append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))


def layer_models(c: Candidate, input_shape: tuple[int, ...], opset: int) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The layer alone, dense as it is and as its compute op (with its function), reading input ``x``."""
    return _one_node(c, input_shape, opset, sparse=False), _one_node(c, input_shape, opset, sparse=True)


def _one_node(c: Candidate, input_shape: tuple[int, ...], opset: int, sparse: bool) -> onnx.ModelProto:
    x = h.make_tensor_value_info("x", _T.FLOAT, list(input_shape))
    y = h.make_tensor_value_info("y", _T.FLOAT, None)
    if not sparse:
        inits = [onnx.numpy_helper.from_array(c.weight.array, "w")]
        inputs = ["x", "w"]
        if len(c.node.inputs) > 2 and c.node.inputs[2].name:
            inits.append(onnx.numpy_helper.from_array(constant_value(c.node.inputs[2]), "b"))
            inputs.append("b")
        attrs = {k: v for k, v in c.node.attrs.items()}
        nodes = [h.make_node(c.node.op, inputs, ["y0" if c.relu is not None else "y"], **attrs)]
        if c.relu is not None:
            nodes.append(h.make_node("Relu", ["y0"], ["y"]))
        graph = h.make_graph(nodes, "dense", [x], [y], inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    else:
        names = [f"in{i}" for i in range(len(schema.INPUTS[c.op]) - 1)]
        inits = [onnx.numpy_helper.from_array(a, n) for a, n in zip(operands(c, opset), names)]
        attrs = {schema.ATTR_SHAPE: list(c.matrix.shape)}
        if c.op == schema.SPARSE_CONV:
            attrs.update(strides=list(c.node.attrs.get("strides", [1, 1])),
                         pads=list(c.node.attrs.get("pads", [0] * 4)),
                         dilations=list(c.node.attrs.get("dilations", [1, 1])),
                         group=int(c.node.attrs.get("group", 1)))
        node = h.make_node(c.name, ["x", *names], ["y"], domain=schema.DOMAIN, **attrs)
        graph = h.make_graph([node], "sparse", [x], [y], inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid(schema.DOMAIN, 1)],
                             functions=[function(c.name, opset)])
    model.ir_version = 10 if opset >= UINT4_OPSET else 8
    return model
