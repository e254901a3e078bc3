"""The standard ONNX target: what stock onnxruntime (or any ONNX runtime) runs, with no custom op.

Weights (the lowerings :mod:`onnxcomp.passes.quantize_weights` and :mod:`onnxcomp.passes.pack_weights` ask for):

- integer codes: ``W = DequantizeLinear(W_quantized, W_scale[, W_zero_point], axis)`` with ``W_quantized`` in the
  narrowest storage type the model's opset allows (INT8/UINT8; INT4/UINT4 from opset 21, INT2/UINT2 from 25:
  :func:`onnxcomp.numerics.qscheme.storage_type`);
- a codebook: ``W = Gather(codebook, Cast(indices, int32), axis=0)`` with the k distinct floats and uint8 indices of
  W's shape (UINT4 when k <= 16 and the opset is >= 21); Gather copies, so W is bit-identical, and onnxruntime
  folds the two nodes into a float initializer at load;
- float16-exact floats: ``W = Cast(W_f16, to=float)``, lossless, folded at load.
In each, the weight's tensor name survives as the new node's output (:func:`onnxcomp.emit.lowering.take_weight_name`).

Activations, :func:`place_qdq`: the CPU QDQ selectors of onnxruntime's graph optimizer make a node group
``DQ inputs -> op -> Q output`` one integer kernel only when *every* float input comes from a DQ and *every*
consumer of the output is a Q, so the Q/DQ pairs go exactly where such groups need them:

1. Anchors (always quantized): ``Conv`` (activation input and output -> QLinearConv), ``Gemm`` / ``MatMul``
   (activation inputs; the output only where a consumer needs it: QGemm, QLinearMatMul, else QGemm with float
   output / MatMulIntegerToFloat), ``Add`` / ``Mul`` of two activations (QLinearAdd/Mul), ``Concat`` of
   activations (QLinearConcat), ``GlobalAveragePool``, ``AveragePool``, ``LeakyRelu``, ``Sigmoid``, ``Softmax``
   (QLinear*). Weighted anchors need their weight from a constant ``DequantizeLinear`` (``quantize_weights``);
   unary and binary anchors whose output is a graph output stay float (no rounding of the model's result).
2. ``Conv`` / ``Gemm`` biases become int32 initializers with ``scale = s_x * s_w`` (per output channel, zero point
   0) behind a ``DequantizeLinear``: the selectors take a bias only from such a DQ. ``Gemm``'s ``beta`` is folded
   into the bias; ``alpha`` must be 1. onnxruntime 1.32 fuses ``Gemm`` only when its weight's DQ has an explicit
   zero point: a zero one is added where it is missing (same values).
3. Data movement shares the input's scale and zero point (onnxruntime then drops the DQ/Q pair and runs the op on
   8-bit data): the outputs of ``MaxPool`` (opset >= 12), ``Reshape``, ``Flatten``, ``Transpose``, ``Squeeze``,
   ``Unsqueeze``, ``Slice``, ``Gather(Elements)``, ``Expand``, ``Tile``, ``Resize`` and ``Split`` are quantized
   whenever their input is, with the input's parameters.
4. ``Relu`` / ``Clip`` (constant bounds around 0) after an anchor whose output feeds only them: the anchor's output
   is not quantized, the activation's output is (asymmetric grids only). The Q's zero point at the grid's bottom
   makes the activation redundant, and onnxruntime fuses ``op -> Relu/Clip -> Q`` into one kernel; the node stays
   in the graph, so the model is exact QDQ either way. On symmetric grids the activation runs in float between
   (and on x86 onnxruntime turns int8 Q/DQ into uint8 only where a Q feeds one DQ: uint8 fuses more there).
5. ``Add`` / ``Mul`` with one float constant operand are quantized when their activation input is (the constant
   becomes a per-tensor 8-bit initializer behind a DQ): Conv -> Mul(scale) stays integer, MatMul -> Add(bias)
   stays float.
6. Every other op (``HardSwish``, normalisations, ``ConvTranspose``, ``Div``, ...) has no integer CPU kernel and
   runs in float; its inputs/outputs carry Q/DQ only where a neighbouring anchor needs them. All consumers of a
   quantized tensor read one shared DQ (onnxruntime duplicates it per consumer at load).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxcomp.emit.lowering import take_weight_name
from onnxcomp.emit.qdq import Planner, QdqPlan, bias_refusal, clip_bounds, float_constant, root
from onnxcomp.ir.graph_edit import is_graph_output, is_standard, unique_name
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Weight
from onnxcomp.numerics import qscheme

UINT4_OPSET = 21  # Cast from UINT4 (and UINT4 tensors in general) is ai.onnx opset 21
CAST_BYTES = 32  # about what a Cast node and its float16 initializer's header add to the file
_UNARY = ("GlobalAveragePool", "AveragePool", "LeakyRelu", "Sigmoid", "Softmax")
# Data movement that onnxruntime runs on 8-bit data when its input and output share one grid (MaxPool: opset 12).
_SHARE = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather", "GatherElements")
_SHARE += ("Expand", "Tile", "Resize", "Split")
_ACTIVATIONS = ("Relu", "Clip")


# -- weights -----------------------------------------------------------------------------------------------------
def lower_dequantize(model: Model, w: Weight, q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                     axis: int | None, bits: int, symmetric: bool, names: set[str], owner: dict[int, gs.Graph],
                     parent: dict[int, gs.Graph | None]) -> tuple[int, int]:
    """Replace ``w`` by ``DequantizeLinear`` of its codes ``q`` (zero point only when asymmetric, per-axis scales
    when ``axis`` is set); returns the ONNX storage type of the codes and the bytes now stored for them."""
    elem = qscheme.storage_type(bits, symmetric, model.opset)
    codes = integer_constant(unique_name(w.name + "_quantized", names), q, elem)
    scale_t = gs.Constant(unique_name(w.name + "_scale", names), np.ascontiguousarray(scale))
    inputs = [codes, scale_t]
    zp_bytes = 0
    if zero_point is not None:
        inputs.append(integer_constant(unique_name(w.name + "_zero_point", names), zero_point, elem))
        zp_bytes = stored_bytes(zero_point.size, elem)
    attrs = {"axis": axis} if axis is not None else {}
    node_name = unique_name(w.name + "_dequantize", names)
    graph, at, out = take_weight_name(w, owner, parent)
    graph.nodes.insert(at, gs.Node("DequantizeLinear", name=node_name, inputs=inputs, outputs=[out], attrs=attrs))
    return elem, stored_bytes(q.size, elem) + int(scale.nbytes) + zp_bytes


def lower_codebook(model: Model, w: Weight, book: np.ndarray, index: np.ndarray, names: set[str],
                   owner: dict[int, gs.Graph], parent: dict[int, gs.Graph | None]) -> tuple[str, dict[str, int]]:
    """Replace ``w`` by ``Gather(book, Cast(index, int32), axis=0)``; returns the encoding and its bytes by
    section."""
    uint4 = book.size <= 16 and model.opset >= UINT4_OPSET
    if uint4:
        proto = numpy_helper.from_array(index.astype(onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.UINT4)),
                                        unique_name(w.name + "_indices", names))
        indices = gs.Constant(proto.name, LazyValues(proto))  # graphsurgeon cannot export uint4 from numpy
        index_bytes = (index.size + 1) // 2
    else:
        indices = gs.Constant(unique_name(w.name + "_indices", names), index)
        index_bytes = index.nbytes
    codebook = gs.Constant(unique_name(w.name + "_codebook", names), np.ascontiguousarray(book))
    index32 = gs.Variable(unique_name(w.name + "_indices_int32", names), dtype=np.int32, shape=list(index.shape))
    cast = gs.Node("Cast", name=unique_name(w.name + "_cast", names), inputs=[indices], outputs=[index32],
                   attrs={"to": onnx.TensorProto.INT32})
    gather_name = unique_name(w.name + "_gather", names)
    encoding = f"codebook(k={book.size}) {'uint4' if uint4 else 'uint8'} + Gather"
    graph, at, out = take_weight_name(w, owner, parent)
    gather = gs.Node("Gather", name=gather_name, inputs=[codebook, index32], outputs=[out], attrs={"axis": 0})
    graph.nodes[at:at] = [cast, gather]
    return encoding, {"indices": index_bytes, "codebook": int(book.nbytes)}


def lower_half(w: Weight, values: np.ndarray, names: set[str], owner: dict[int, gs.Graph],
               parent: dict[int, gs.Graph | None]) -> int:
    """Replace the float32/float64 ``w`` whose ``values`` are all exact float16s by ``Cast(float16 copy)``;
    returns the bytes now stored."""
    half = values.astype(np.float16)
    stored = gs.Constant(unique_name(w.name + "_f16", names), half)
    cast = gs.Node("Cast", name=unique_name(w.name + "_cast", names), inputs=[stored],
                   attrs={"to": int(onnx.helper.np_dtype_to_tensor_dtype(values.dtype))})
    graph, at, out = take_weight_name(w, owner, parent)
    cast.outputs = [out]
    graph.nodes.insert(at, cast)
    return int(half.nbytes)


def integer_constant(name: str, values: np.ndarray, elem: int) -> gs.Constant:
    """An integer initializer of ONNX type ``elem``; 2/4-bit types go through a TensorProto (graphsurgeon
    cannot export them from numpy)."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    array = np.ascontiguousarray(np.asarray(values).astype(dtype))
    if qscheme.storage_bits(elem) == 8:
        return gs.Constant(name, array)
    proto = numpy_helper.from_array(array, name)
    return gs.Constant(name, LazyValues(proto))


def stored_bytes(count: int, elem: int) -> int:
    """Bytes of ``count`` integers of ONNX type ``elem`` as ONNX stores them (2/4-bit types packed)."""
    return (count * qscheme.storage_bits(elem) + 7) // 8


# -- activations: onnxruntime's Q/DQ placement ---------------------------------------------------------------------
def place_qdq(planner: Planner) -> QdqPlan:
    """onnxruntime's placement (rules 1-6 of the module docstring) over the planner's graph."""
    plan = QdqPlan()
    fused: set[int] = set()  # nodes that become one integer kernel with their Q/DQ
    for node in planner.graph.nodes:
        if id(node) not in planner.kept and is_standard(node) and _anchor(planner, node, plan):
            fused.add(id(node))
    for node in planner.graph.nodes:  # forward: data movement, activations, binary ops with a constant
        if id(node) in planner.kept or not is_standard(node) or not node.inputs:
            continue
        x = node.inputs[0]
        if node.op in _SHARE and (node.op != "MaxPool" or planner.opset >= 12) and x.name in plan.entries:
            for y in node.outputs:
                if planner.activation(y) and (y.outputs or is_graph_output(planner.graph, y)):
                    plan.add(y, share=root(plan, plan.entries[x.name]).tensor)
        elif node.op in _ACTIVATIONS and not planner.grid.symmetric and x.name in plan.entries:
            _relocate(planner, node, x, plan, fused)
        elif node.op in ("Add", "Mul") and len(node.inputs) == 2 and id(node) not in fused:
            slots = [i for i, t in enumerate(node.inputs) if float_constant(t)]
            y = node.outputs[0]
            if (
                len(slots) == 1
                and node.inputs[1 - slots[0]].name in plan.entries
                and planner.activation(y)
                and not is_graph_output(planner.graph, y)
            ):
                plan.add(y)
                plan.constants.append((node, slots[0]))
                fused.add(id(node))
    return plan


def _anchor(planner: Planner, node: gs.Node, plan: QdqPlan) -> bool:
    """Rules 1-2: quantize what the node's integer kernel needs; False when it stays float."""
    op = node.op
    y = node.outputs[0] if node.outputs else None
    if y is None or not planner.activation(y):
        return False
    if op in ("Conv", "Gemm", "MatMul"):
        sides = planner.weighted(node)
        if sides is None:
            return False
        if op != "MatMul":
            constant_b = sides[0] is True and sides[1] is not True
            why = bias_refusal(node, sides[1]) if constant_b else "the weight must be a constant input B"
            if why:
                planner.skip(node, f"{op} not quantized: {why}")
                return False
            if len(node.inputs) > 2 and node.inputs[2].name:
                plan.biases.append((node, sides[1]))
            if op == "Gemm" and sides[1].zero_point is None:
                plan.zero_points.append(sides[1])
        for t, side in zip(node.inputs, sides):
            if side is True:
                plan.add(t)
        if op == "Conv":
            plan.add(y)
        return True
    binary = op in ("Add", "Mul", "Concat")
    if binary or op in _UNARY:
        inputs = node.inputs if binary else node.inputs[:1]
        if (op in ("Add", "Mul") and len(inputs) != 2) or not all(planner.activation(t) for t in inputs):
            return False  # a constant operand (rule 5) or not float
        if is_graph_output(planner.graph, y):
            planner.skip(node, f"{op} kept float: its output is a graph output")
            return False
        for t in inputs:
            plan.add(t)
        plan.add(y)
        return True
    if op not in _SHARE and op not in _ACTIVATIONS and any(planner.activation(t) for t in node.inputs):
        planner.skip(node, f"{op} runs in float: onnxruntime has no integer {op} kernel")
    return False


def _relocate(planner: Planner, act: gs.Node, x: gs.Variable, plan: QdqPlan, fused: set[int]) -> None:
    """Rule 4: quantize the activation's output instead of its input where the producer fuses it."""
    y = act.outputs[0]
    producer = x.inputs[0] if x.inputs else None
    bounds = clip_bounds(act)
    if (
        planner.activation(y)
        and producer is not None
        and id(producer) in fused
        and len(x.outputs) == 1
        and not is_graph_output(planner.graph, x)
        and bounds is not None
        and bounds[0] <= 0 <= bounds[1]
    ):
        del plan.entries[x.name]
        fused.add(id(act))
        plan.add(y)
