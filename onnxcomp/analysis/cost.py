"""Compute cost of an ONNX graph: multiply-accumulates (MACs) and parameters per node, at concrete shapes.

Filter-pruning targets ("remove 40% of the MACs") and reports need the cost of each layer for one inference.
The counts follow the convention of fvcore and thop (torchvision's published "GFLOPS" are these MACs):

- ``Conv`` (1-D/2-D/3-D, any group, stride, dilation, pads, auto_pad): ``|Y| * (C_in / group) * prod(kernel)``,
  i.e. ``|Y| * prod(W.shape[1:])``; ``ConvInteger``, ``QLinearConv`` and com.microsoft ``FusedConv`` alike.
- ``ConvTranspose``: ``|X| * (C_out / group) * prod(kernel)``, i.e. ``|X| * prod(W.shape[1:])``.
- ``Gemm``: ``M * N * K``; ``MatMul`` (batched, broadcasting, 1-D operands; constant weights and
  activation @ activation alike): ``|Y| * K``; ``MatMulInteger``, ``QLinearMatMul``, com.microsoft
  ``FusedGemm``/``FusedMatMul`` alike.
- ``LSTM``/``GRU``/``RNN``: ``seq * batch * (|W| + |R|)`` (the gate matmuls; W and R hold every direction).
- ``Einsum`` with two or more operands: the product of all index sizes (one pass over the index space).
- Biases and the additions of Conv/Gemm are not counted (as in fvcore).

Those are the *heavy* ops (:data:`HEAVY_OPS`), the only ones :func:`total_macs` sums by default. Every node
still gets a count, which ``total_macs(all_ops=True)`` includes: per-element ops (BatchNormalization,
Add/Mul/..., Relu/Clip/Sigmoid/..., QuantizeLinear/DequantizeLinear, Resize and any other standard op) count one
MAC per output element; MaxPool/AveragePool/LpPool count ``|Y| * prod(kernel_shape)``; global pools,
reductions, Softmax and the normalizations count one per input element; data movement (Reshape, Transpose,
Concat, Slice, Gather, Cast, Pad, Shape, ...) counts 0, as do ops of other domains than ai.onnx and
com.microsoft.

``params`` of a node are the elements of its float inputs whose value does not depend on the graph inputs:
initializers, Constant outputs and what is computed from them alone (a DequantizeLinear or DecodeWeight of a
stored weight), so compressed models keep their parameter counts. A weight shared by several nodes counts at
each of them.

Shapes come from :func:`tensor_shapes`: the graph inputs are made concrete (a symbolic leading dim becomes
``batch``, and so does any dim with the same name elsewhere; other symbolic dims must be given in ``shapes``),
then ONNX shape inference (non-strict, with data propagation) runs on a copy of the graph whose large weights
are replaced by typed graph inputs (fast: nothing large is serialized). Tensors it leaves without a full shape
(custom ops, data-dependent shapes) are read off one onnxruntime run on a zero feed, with those tensors added as
outputs; data-dependent shapes are then the zero feed's.

Only main-graph nodes are counted: the body of an If/Loop/Scan is not (its cost depends on the branch taken
and the trip count); the If/Loop/Scan node itself counts 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.errors import OnnxcompError, PassError
from onnxcomp.ir.graph_edit import node_label
from onnxcomp.ir.model import Model
from onnxcomp.kernels import schema

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NodeCost:
    node: str  # node name (graph_edit.node_label for unnamed nodes)
    op: str
    macs: int  # multiply-accumulates for one inference at the given batch
    params: int  # elements of the node's constant float inputs (weights + biases)


HEAVY_OPS = frozenset({
    "Conv", "ConvInteger", "QLinearConv", "FusedConv", "ConvTranspose",
    "Gemm", "FusedGemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul",
    "LSTM", "GRU", "RNN", "Einsum",
})

# Initializers and Constant values above this many elements enter shape inference as typed graph inputs:
# their values cannot matter to a shape, and copying them would dominate the run time.
_INLINE_LIMIT = 1024
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.BFLOAT16})
_STANDARD = ("", "ai.onnx")
_MS = "com.microsoft"
_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                         "Multinomial", "Bernoulli"})


# -- public API ------------------------------------------------------------------------------------------------
def node_costs(model: Model | onnx.ModelProto, batch: int = 1,
               shapes: Mapping[str, Sequence[int]] | None = None) -> list[NodeCost]:
    """MACs and parameters of every main-graph node, in graph order (see the module docstring for the rules).

    ``shapes`` maps tensor names to concrete shapes: graph inputs' entries fix those inputs (needed where an
    input has symbolic dims other than the batch); other entries (the outputs of a custom op, say) override
    what inference finds and are carried downstream by it. ``batch`` replaces symbolic leading dims only: a
    batch the model fixes stays as it is.
    """
    return costs_and_shapes(model, batch, shapes)[0]


def costs_and_shapes(model: Model | onnx.ModelProto, batch: int = 1,
                     shapes: Mapping[str, Sequence[int]] | None = None,
                     ) -> tuple[list[NodeCost], dict[str, Shape]]:
    """:func:`node_costs` and :func:`tensor_shapes` from one shape resolution (each exports the model once,
    which dominates on large models)."""
    model = model if isinstance(model, Model) else Model.load(model)
    resolved, types = _resolve(model, batch, shapes)
    constant = _constant_tensors(model.graph)
    costs = []
    for node in model.graph.nodes:
        io = _NodeShapes(node, resolved)
        handler = _handler(node)
        macs = int(handler(node, io)) if handler is not None else 0
        params, seen = 0, set()
        for t in node.inputs:
            if t.name and t.name not in seen and t.name in constant and types.get(t.name) in _FLOAT_TYPES:
                seen.add(t.name)
                params += math.prod(resolved.get(t.name, (0,)))
        costs.append(NodeCost(node_label(node), node.op, macs, params))
    return costs, resolved


def total_macs(model: Model | onnx.ModelProto, batch: int = 1, *, all_ops: bool = False,
               shapes: Mapping[str, Sequence[int]] | None = None) -> int:
    """MACs of one inference: the heavy ops (:data:`HEAVY_OPS`) only, or every node with ``all_ops``."""
    return sum(c.macs for c in node_costs(model, batch, shapes) if all_ops or c.op in HEAVY_OPS)


def tensor_shapes(model: Model | onnx.ModelProto, batch: int = 1,
                  shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Shape]:
    """The concrete shape of every main-graph tensor (inputs, weights, node outputs) at ``batch``.

    Raises PassError when a graph input has a symbolic dim other than the batch and ``shapes`` does not give
    that input's shape, or when a shape can be found neither by inference nor by running the model.
    """
    model = model if isinstance(model, Model) else Model.load(model)
    return _resolve(model, batch, shapes)[0]


# -- shapes ----------------------------------------------------------------------------------------------------
def _resolve(model: Model, batch: int, given: Mapping[str, Sequence[int]] | None,
             ) -> tuple[dict[str, Shape], dict[str, int]]:
    """(shape, onnx element type) of every main-graph tensor."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise PassError(f"cost: batch must be a positive integer, not {batch!r}")
    given = {name: _as_shape(name, s) for name, s in (given or {}).items()}
    proto = model.to_proto()  # a fresh copy: the caller's model is never touched
    graph = proto.graph
    wanted = _main_tensors(graph)
    unknown = sorted(set(given) - wanted)
    if unknown:
        raise PassError(f"cost: shapes names {', '.join(map(repr, unknown))}, which no main-graph tensor is called")
    inits = {t.name for t in graph.initializer}
    batch_names = _batch_names(graph, inits)
    inputs = {vi.name: _input_shape(vi, batch, given, batch_names) for vi in graph.input if vi.name not in inits}

    shapes: dict[str, Shape] = {}
    types: dict[str, int] = {}
    light = _light_copy(proto, inputs, shapes, types)
    _seed_given(light, proto.graph, {n: s for n, s in given.items() if n not in inputs and n not in shapes})
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference gave up on this model: onnxruntime finds the shapes
        inferred = light
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        _read_value_info(vi, shapes, types)
    shapes.update(given)

    missing = sorted(name for name in wanted if name not in shapes or name not in types)
    if missing:
        _run_for_shapes(proto, inputs, missing, shapes, types)
        shapes.update(given)
    return {name: shapes[name] for name in wanted if name in shapes}, types


def _main_tensors(graph: onnx.GraphProto) -> set[str]:
    names = {vi.name for vi in graph.input} | {t.name for t in graph.initializer} | {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return names


def _batch_names(graph: onnx.GraphProto, inits: set[str]) -> set[str]:
    """Names of the symbolic leading dims of the inputs: these dims are the batch wherever they appear."""
    names = set()
    for vi in graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and len(dims) and dims[0].dim_param and not dims[0].HasField("dim_value"):
            names.add(dims[0].dim_param)
    return names


def _input_shape(vi: onnx.ValueInfoProto, batch: int, given: dict[str, Shape], batch_names: set[str]) -> Shape:
    tt = vi.type.tensor_type
    # Paddle exports write free dims as dim_value -1: only a positive dim_value fixes an axis
    declared = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                for d in tt.shape.dim]
    has_shape = vi.type.HasField("tensor_type") and tt.HasField("shape")
    if vi.name in given:
        shape = given[vi.name]
        if has_shape and len(shape) != len(declared):
            raise PassError(f"cost: shapes gives input '{vi.name}' rank {len(shape)} {list(shape)}, but the model "
                            f"declares rank {len(declared)} {_fmt(declared)}")
        for axis, (got, want) in enumerate(zip(shape, declared)):
            if isinstance(want, int) and got != want:
                raise PassError(f"cost: shapes gives input '{vi.name}' {list(shape)}, but the model fixes axis "
                                f"{axis} to {want} {_fmt(declared)}")
        return shape
    if not has_shape:
        raise PassError(f"cost: input '{vi.name}' declares no shape; give shapes={{'{vi.name}': (...)}}")
    out = []
    for axis, d in enumerate(declared):
        if isinstance(d, int):
            out.append(d)
        elif axis == 0 or d in batch_names:
            out.append(int(batch))
        else:
            raise PassError(f"cost: input '{vi.name}' has a symbolic dim '{d or '?'}' (axis {axis} of "
                            f"{_fmt(declared)}) besides the batch; give shapes={{'{vi.name}': (...)}}")
    return tuple(out)


def _light_copy(proto: onnx.ModelProto, inputs: dict[str, Shape], shapes: dict[str, Shape],
                types: dict[str, int]) -> onnx.ModelProto:
    """The model for shape inference: concrete inputs, no declared intermediate shapes (they may name another
    batch), large weights as typed inputs. Records the shapes and types it already knows."""
    src = proto.graph
    light = onnx.ModelProto(ir_version=proto.ir_version)
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    g = light.graph
    for vi in src.input:
        if vi.name in inputs:
            elem = vi.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
            g.input.append(onnx.helper.make_tensor_value_info(vi.name, elem, inputs[vi.name]))
    for t in src.initializer:
        _add_constant(g, t.name, t, shapes, types)
    for node in src.node:
        if node.op_type == "Constant" and node.domain in _STANDARD and len(node.output) == 1:
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None and math.prod(value.dims) > _INLINE_LIMIT:
                _add_constant(g, node.output[0], value, shapes, types)
                continue
        if node.domain == schema.DOMAIN and node.op_type == schema.DECODE_OP and len(node.output) == 1:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            shape, dtype = attrs.get(schema.DECODE_ATTR_SHAPE), attrs.get(schema.DECODE_ATTR_DTYPE)
            if shape is not None and dtype is not None:  # its output is a weight of declared shape and type
                shapes[node.output[0]], types[node.output[0]] = tuple(int(d) for d in shape), int(dtype)
                g.input.append(onnx.helper.make_tensor_value_info(node.output[0], int(dtype), shape))
                continue
        g.node.append(node)
    for out in src.output:
        g.output.append(onnx.ValueInfoProto(name=out.name))
        if out.type.HasField("tensor_type"):
            g.output[-1].type.tensor_type.elem_type = out.type.tensor_type.elem_type
    return light


def _seed_given(light: onnx.ModelProto, src: onnx.GraphProto, given: dict[str, Shape]) -> None:
    """Given shapes of intermediate tensors as value_info, so that inference carries them downstream; the element
    type is the one the model declares, else float."""
    declared = {vi.name: vi.type.tensor_type.elem_type for vi in list(src.value_info) + list(src.output)
                if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    for name, shape in given.items():
        light.graph.value_info.append(
            onnx.helper.make_tensor_value_info(name, declared.get(name, onnx.TensorProto.FLOAT), shape))


def _add_constant(g: onnx.GraphProto, name: str, t: onnx.TensorProto, shapes: dict[str, Shape],
                  types: dict[str, int]) -> None:
    shapes[name], types[name] = tuple(int(d) for d in t.dims), t.data_type
    if math.prod(t.dims) > _INLINE_LIMIT:
        g.input.append(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    else:  # small: it may be a shape that data propagation reads
        g.initializer.append(t)
        g.initializer[-1].name = name


def _read_value_info(vi: onnx.ValueInfoProto, shapes: dict[str, Shape], types: dict[str, int]) -> None:
    if not vi.type.HasField("tensor_type"):
        return
    tt = vi.type.tensor_type
    if tt.elem_type:
        types.setdefault(vi.name, tt.elem_type)
    dims = tt.shape.dim
    if tt.HasField("shape") and all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        shapes.setdefault(vi.name, tuple(int(d.dim_value) for d in dims))


def _run_for_shapes(proto: onnx.ModelProto, inputs: dict[str, Shape], missing: list[str],
                    shapes: dict[str, Shape], types: dict[str, int]) -> None:
    """Shapes inference could not give: one onnxruntime run on a zero feed with ``missing`` as outputs."""
    from onnxcomp.runtime import session  # onnxruntime only when inference falls short

    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in missing if n not in present)
    feed = {}
    for vi in proto.graph.input:
        if vi.name in inputs:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type or onnx.TensorProto.FLOAT)
            feed[vi.name] = np.zeros(inputs[vi.name], dtype=dtype)
    try:
        values = session(proto, optimize=False).run(missing, feed)
    except OnnxcompError as e:
        raise PassError(f"cost: shape inference leaves {len(missing)} tensor(s) without a shape (first "
                        f"'{missing[0]}') and {e}; give their shapes in shapes=") from None
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PassError(f"cost: shape inference leaves {len(missing)} tensor(s) without a shape (first "
                        f"'{missing[0]}') and onnxruntime cannot run the model on a zero feed: {first}; "
                        "give their shapes in shapes=") from None
    for name, value in zip(missing, values):
        if isinstance(value, np.ndarray):  # sequences and maps have no single shape
            shapes.setdefault(name, tuple(int(d) for d in value.shape))
            try:
                types.setdefault(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype))
            except (KeyError, TypeError, ValueError):
                pass


def _as_shape(name: str, shape: Sequence[int]) -> Shape:
    try:
        out = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise PassError(f"cost: shapes['{name}'] must be a sequence of integers, not {shape!r}") from None
    if any(d < 0 for d in out) or any(isinstance(d, bool) for d in shape):
        raise PassError(f"cost: shapes['{name}'] must hold non-negative integers, not {shape!r}")
    return out


def _fmt(dims: Sequence) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# -- parameters ------------------------------------------------------------------------------------------------
def _constant_tensors(graph: gs.Graph) -> set[str]:
    """Names of the tensors whose value does not depend on the graph inputs (main graph)."""
    const = {name for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    changed = True
    while changed:  # one pass for a topologically sorted graph, a second to confirm
        changed = False
        for node in graph.nodes:
            if not node.outputs or all(t.name in const for t in node.outputs):
                continue
            if node.op in _RANDOM_OPS or any(isinstance(a, (gs.Graph, list)) and _holds_graph(a)
                                             for a in node.attrs.values()):
                continue
            if (node.inputs or node.op == "Constant") and all(not t.name or t.name in const for t in node.inputs):
                const.update(t.name for t in node.outputs)
                changed = True
    return const


def _holds_graph(attr) -> bool:
    return isinstance(attr, gs.Graph) or any(isinstance(a, gs.Graph) for a in attr)


# -- MACs per op -----------------------------------------------------------------------------------------------
class _NodeShapes:
    """Shapes of one node's inputs and outputs; heavy ops need theirs (PassError), cheap ones make do."""

    def __init__(self, node: gs.Node, shapes: dict[str, Shape]):
        self.node, self.shapes = node, shapes

    def inp(self, i: int) -> Shape:
        return self._get(self.node.inputs, i, "input")

    def out(self, i: int = 0) -> Shape:
        return self._get(self.node.outputs, i, "output")

    def size_or_zero(self, tensors: list, i: int = 0) -> int:
        name = tensors[i].name if i < len(tensors) else ""
        return math.prod(self.shapes[name]) if name in self.shapes else 0

    def _get(self, tensors: list, i: int, kind: str) -> Shape:
        name = tensors[i].name if i < len(tensors) else ""
        if name not in self.shapes:
            raise PassError(f"cost: the shape of {kind} {i} ('{name}') of node '{node_label(self.node)}' "
                            f"({self.node.op}) is unknown")
        return self.shapes[name]


def _conv(node: gs.Node, io: _NodeShapes, w_slot: int = 1) -> int:
    return math.prod(io.out()) * math.prod(io.inp(w_slot)[1:])


def _conv_transpose(node: gs.Node, io: _NodeShapes) -> int:
    return math.prod(io.inp(0)) * math.prod(io.inp(1)[1:])


def _gemm(node: gs.Node, io: _NodeShapes) -> int:
    a = io.inp(0)
    return math.prod(io.out()) * (a[0] if node.attrs.get("transA", 0) else a[-1])


def _matmul(node: gs.Node, io: _NodeShapes) -> int:
    a = io.inp(0)
    transposed = node.op == "FusedMatMul" and node.attrs.get("transA", 0) and len(a) >= 2
    return math.prod(io.out()) * (a[-2] if transposed else a[-1])


def _recurrent(node: gs.Node, io: _NodeShapes) -> int:
    x = io.inp(0)  # [seq, batch, input] or, with layout=1, [batch, seq, input]
    return x[0] * x[1] * (math.prod(io.inp(1)) + math.prod(io.inp(2)))


def _einsum(node: gs.Node, io: _NodeShapes) -> int:
    terms = str(node.attrs.get("equation", "")).replace(" ", "").split("->")[0].split(",")
    if len(terms) < 2:
        return 0  # a transpose, trace or sum: no products
    sizes: dict[str, int] = {}
    ellipsis: Shape = ()
    for i, term in enumerate(terms):
        shape = io.inp(i)
        letters = term.replace("...", "")
        if "..." in term:
            start, n = term.index("..."), len(shape) - len(letters)
            ellipsis = tuple(np.broadcast_shapes(ellipsis, shape[start:start + n]))
            shape = shape[:start] + shape[start + n:]
        for letter, d in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), d)  # a 1 broadcasts
    return math.prod(sizes.values()) * math.prod(ellipsis)


def _pool(node: gs.Node, io: _NodeShapes) -> int:
    return io.size_or_zero(node.outputs) * math.prod(node.attrs.get("kernel_shape", [1]))


def _per_input(node: gs.Node, io: _NodeShapes) -> int:
    return io.size_or_zero(node.inputs)


def _per_output(node: gs.Node, io: _NodeShapes) -> int:
    return io.size_or_zero(node.outputs)


def _free(node: gs.Node, io: _NodeShapes) -> int:
    return 0


_HEAVY: dict[str, Callable[[gs.Node, _NodeShapes], int]] = {
    "Conv": _conv, "ConvInteger": _conv, "QLinearConv": lambda n, io: _conv(n, io, w_slot=3),
    "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul, "MatMulInteger": _matmul,
    "QLinearMatMul": _matmul, "LSTM": _recurrent, "GRU": _recurrent, "RNN": _recurrent, "Einsum": _einsum,
}
_MS_HEAVY: dict[str, Callable[[gs.Node, _NodeShapes], int]] = {
    "FusedConv": _conv, "FusedGemm": _gemm, "FusedMatMul": _matmul,
}
_PER_INPUT_OPS = frozenset({
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
    "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax",
    "ArgMin", "Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "InstanceNormalization",
    "GroupNormalization", "LpNormalization", "MeanVarianceNormalization", "TopK", "CumSum",
})
_FREE_OPS = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Scatter", "ScatterElements", "ScatterND", "Expand", "Tile", "Pad", "Identity",
    "Dropout", "Shape", "Size", "Constant", "ConstantOfShape", "Cast", "CastLike", "DepthToSpace", "SpaceToDepth",
    "Range", "NonZero", "Compress", "OneHot", "EyeLike", "ReverseSequence", "Trilu", "If", "Loop", "Scan",
    "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
    "SplitToSequence", "ConcatFromSequence", "Optional", "OptionalGetElement", "OptionalHasElement",
})


def _handler(node: gs.Node) -> Callable[[gs.Node, _NodeShapes], int] | None:
    domain = node.domain or ""
    if domain == _MS:
        return _MS_HEAVY.get(node.op)
    if domain not in _STANDARD:
        return None  # custom ops (DecodeWeight, ...): unknown cost
    if node.op in _HEAVY:
        return _HEAVY[node.op]
    if node.op in ("MaxPool", "AveragePool", "LpPool"):
        return _pool
    if node.op in _PER_INPUT_OPS:
        return _per_input
    if node.op in _FREE_OPS:
        return _free
    return _per_output  # BatchNormalization, element-wise arithmetic, activations, Q/DQ, Resize, ...
