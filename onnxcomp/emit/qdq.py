"""Q/DQ lowering shared by the targets: the plan of what to quantize, the planner's view of the graph, insertion.

A target's placement rules (:func:`onnxcomp.emit.onnx_standard.place_qdq` for onnxruntime,
:func:`onnxcomp.emit.tensorrt.place_qdq` for TensorRT) read the graph through a :class:`Planner` and return a
:class:`QdqPlan`: the tensors to quantize (each with its own range, or sharing another's grid), the Conv/Gemm
biases that become int32 at ``s_x * s_w``, the Gemm weights that need an explicit zero point, and the float
constants of Add/Mul that become 8-bit. :class:`Inserter` then writes ``x -> QuantizeLinear -> DequantizeLinear``
pairs (one shared DQ for all consumers, or one pair per consumer), the int32 biases (raising a weight scale where
the bias would overflow int32, re-rounding those codes) and the quantized constants, with the scales and zero
points the pass measured.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.analysis import act_ranges
from onnxcomp.analysis.act_ranges import Grid
from onnxcomp.ir.graph_edit import is_graph_output, is_standard, node_label, tensor_names, unique_name
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import constant_value, is_constant

_INT32_MAX = float(np.iinfo(np.int32).max)
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class Entry:
    """One tensor to quantize: its own range, or the parameters of ``share`` (data movement)."""

    tensor: gs.Variable
    share: gs.Variable | None = None
    consumers: list[gs.Node] | None = None  # None: every consumer reads one shared DQ (onnxruntime)


@dataclass
class WeightDQ:
    """A weight read through a constant DequantizeLinear (``quantize_weights``)."""

    node: gs.Node
    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int  # normalised
    dtype: np.dtype


@dataclass
class QdqPlan:
    entries: dict[str, Entry] = field(default_factory=dict)
    biases: list[tuple[gs.Node, WeightDQ]] = field(default_factory=list)  # Conv/Gemm whose bias goes int32
    zero_points: list[WeightDQ] = field(default_factory=list)  # Gemm weights that need an explicit zero point
    constants: list[tuple[gs.Node, int]] = field(default_factory=list)  # (Add/Mul, slot of the float constant)

    def add(self, tensor: gs.Variable, consumer: gs.Node | None = None, share: gs.Variable | None = None) -> None:
        entry = self.entries.setdefault(tensor.name, Entry(tensor, share, [] if consumer is not None else None))
        if share is not None:
            entry.share = share
        if consumer is not None and entry.consumers is not None and consumer not in entry.consumers:
            entry.consumers.append(consumer)


def root(plan: QdqPlan, entry: Entry) -> Entry:
    while entry.share is not None:
        entry = plan.entries[entry.share.name]
    return entry


# -- what every placement reads ---------------------------------------------------------------------------------
class Planner:
    """What every target's placement reads: the graph's float activations and the weights behind constant DQs.

    ``grid`` is the activation grid (symmetric int8 weights are needed under a symmetric one), ``kept`` the ids of
    nodes that stay float, ``skipped`` the list that receives (node, why) for every node left float.
    """

    def __init__(self, model: Model, grid: Grid, target: str, kept: set[int], skipped: list[tuple[str, str]]):
        self.graph, self.grid, self.target, self.kept, self.skipped = model.graph, grid, target, kept, skipped
        self.types, self.opset = elem_types(model), model.opset

    def activation(self, t: gs.Tensor) -> bool:
        """A float32 tensor computed at run time (not a constant, not already behind Q/DQ)."""
        if not isinstance(t, gs.Variable) or not t.name or is_constant(t):
            return False
        if t.inputs and t.inputs[0].op in QDQ or any(c.op == "QuantizeLinear" for c in t.outputs):
            return False
        return self.types.get(t.name) == onnx.TensorProto.FLOAT

    def skip(self, node: gs.Node, why: str) -> None:
        self.skipped.append((node_label(node), why))

    def side(self, node: gs.Node, slot: int) -> bool | WeightDQ | str:
        """An input of a weighted op: True (an activation to quantize), its weight's DQ, or why neither."""
        t = node.inputs[slot]
        if self.activation(t):
            return True
        dq = t.inputs[0] if len(t.inputs) == 1 else None
        if is_constant(t):
            return "weight is not quantized: run quantize_weights first"
        if dq is None or not is_standard(dq, "DequantizeLinear"):
            return f"input {t.name!r} is not a float32 activation"
        values = constant_value(dq.inputs[0])
        scale = constant_value(dq.inputs[1]) if len(dq.inputs) > 1 else None
        zp = constant_value(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2].name else None
        if values is None:
            return f"input {t.name!r} is already quantized"
        if scale is None or values.dtype not in (np.int8, np.uint8):
            return f"weight {t.name!r} is not an 8-bit DequantizeLinear"
        if self.grid.symmetric and values.dtype != np.int8:
            return "int8 activations need int8 weights"
        if self.target == "tensorrt" and zp is not None and np.any(zp):
            return "TensorRT needs symmetric weights (zero point 0)"
        axis = int(dq.attrs.get("axis", 1)) % max(values.ndim, 1)
        return WeightDQ(dq, np.asarray(scale), zp, axis, values.dtype)

    def weighted(self, node: gs.Node) -> list[bool | WeightDQ] | None:
        """The two operands of a weighted op (at least one an activation), or None after recording why not."""
        sides = [self.side(node, i) for i in range(2)]
        why = next((s for s in sides if isinstance(s, str)), None)
        if why is None and not any(s is True for s in sides):
            why = "no activation input"
        if why is not None:
            self.skip(node, f"{node.op} not quantized: {why}")
            return None
        return sides


def bias_refusal(node: gs.Node, weight: WeightDQ) -> str | None:
    """Why the node's bias cannot become int32 at s_x * s_w (rule 2), or None."""
    if len(node.inputs) < 3 or not node.inputs[2].name:
        return None
    bias = constant_value(node.inputs[2])
    if bias is None or bias.dtype != np.float32:
        return "the bias is not a float32 constant"
    if node.op == "Gemm" and float(node.attrs.get("alpha", 1.0)) != 1.0:
        return "Gemm alpha != 1"
    out_axis = 0 if node.op == "Conv" or int(node.attrs.get("transB", 0)) else 1
    if weight.scale.size > 1 and (
        weight.axis != out_axis
        or bias.size != weight.scale.size
        or bias.ndim > 2
        or (bias.ndim == 2 and bias.shape[0] != 1)
    ):
        return f"the bias of shape {list(bias.shape)} is not one value per weight scale"
    if bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
        return f"the bias of shape {list(bias.shape)} is not per output channel"
    return None


def _raise_weight_scales(weight: WeightDQ, node: gs.Node, x_scale: np.float32) -> int:
    """Raise the weight scales whose bias would overflow int32 at s_x * s_w, re-rounding those weights.

    A near-dead channel (tiny weights after BN folding) with a sizeable bias needs
    ``s_w >= |b| / (s_x (2^31 - 1))``; its codes become ``round(q s_w / s_w')`` (onnxruntime's quantizer does the
    same). Only symmetric weights are changed. Returns how many scales were raised.
    """
    bias = np.abs(_gemm_bias(node)).reshape(-1)
    need = bias.astype(np.float64) / (float(x_scale) * _INT32_MAX) * 1.0001
    weight.scale = constant_value(weight.node.inputs[1])  # current: another layer may have raised it
    old = weight.scale.astype(np.float64).reshape(-1)
    if old.size == 1:
        need = need.max(initial=0.0, keepdims=True)
    low = (old < need) & (old > 0)
    if not low.any() or (weight.zero_point is not None and np.any(weight.zero_point)):
        return 0
    new = np.where(low, need, old)
    codes_t, scale_t = weight.node.inputs[0], weight.node.inputs[1]
    codes = constant_value(codes_t)
    shape = [1] * codes.ndim
    if old.size > 1:
        shape[weight.axis] = -1
    top = np.iinfo(codes.dtype).max
    requantized = np.clip(np.round(codes * (old / new).reshape(shape)), -top, top)
    _set_constant(codes_t, requantized.astype(codes.dtype))
    _set_constant(scale_t, new.astype(weight.scale.dtype).reshape(weight.scale.shape))
    return int(low.sum())


def _gemm_bias(node: gs.Node) -> np.ndarray:
    """The bias as the int32 one must represent it (Gemm's beta folded in)."""
    bias = constant_value(node.inputs[2]).astype(np.float32)
    return bias * np.float32(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else bias


def _set_constant(t: gs.Tensor, values: np.ndarray) -> None:
    """Write an initializer or Constant-node output."""
    if isinstance(t, gs.Constant):
        t.values = values
    else:
        t.inputs[0].attrs["value"].values = values


def clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    if node.op == "Relu":
        return 0.0, np.inf
    lo, hi = -np.inf, np.inf
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return float(node.attrs.get("min", lo)), float(node.attrs.get("max", hi))
    for slot, default in ((1, lo), (2, hi)):
        t = node.inputs[slot] if len(node.inputs) > slot and node.inputs[slot].name else None
        value = constant_value(t) if t is not None else np.asarray(default)
        if value is None or value.size != 1:
            return None
        if slot == 1:
            lo = float(value)
        else:
            hi = float(value)
    return lo, hi


def float_constant(t: gs.Tensor) -> bool:
    value = constant_value(t) if is_constant(t) else None
    return value is not None and value.dtype == np.float32


def depths(graph: gs.Graph) -> dict[str, int]:
    """Longest path (in nodes) from the graph inputs to each tensor; nodes are in topological order."""
    depth: dict[str, int] = {}
    for node in graph.nodes:
        d = 1 + max((depth.get(t.name, 0) for t in node.inputs), default=0)
        for t in node.outputs:
            depth[t.name] = d
    return depth


# -- types and statistics ----------------------------------------------------------------------------------------
def elem_types(model: Model) -> dict[str, int]:
    """Element type of every main-graph tensor, from ONNX shape inference (graphsurgeon's where it fails)."""
    proto = model.to_proto()
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - custom ops or invalid shapes: fall back on what the graph says
        pass
    types = {t.name: t.data_type for t in proto.graph.initializer}
    for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.tensors().values():
        if t.name not in types and t.dtype is not None:
            try:
                types[t.name] = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
            except (TypeError, KeyError):
                pass
    return types


# -- mutation ----------------------------------------------------------------------------------------------------
class Inserter:
    def __init__(self, model: Model, params: dict[str, tuple], grid: Grid):
        self.graph, self.params, self.grid = model.graph, params, grid
        self.names = tensor_names(model.graphs())
        self.after: dict[int, list[gs.Node]] = defaultdict(list)  # producer id -> new nodes to place after it
        self.before: dict[int, list[gs.Node]] = defaultdict(list)  # consumer id -> new nodes to place before it
        self.constants: dict[str, tuple[gs.Constant, gs.Constant]] = {}

    def apply(self, plan: QdqPlan, records: list[dict[str, Any]]) -> None:
        """Insert every pair, int32 bias and quantized constant of ``plan``; one record each (biases, constants)."""
        # Biases and constants first: they look up parameters by the names the pairs then rewire. Weight scales are
        # raised for every bias before any bias is quantized (a weight may feed several layers).
        raised = [
            _raise_weight_scales(weight, node, self.params[node.inputs[0].name][0]) for node, weight in plan.biases
        ]
        for (node, weight), count in zip(plan.biases, raised):
            records.append({**self._bias(node, weight), "weight_scales_raised": count})
        for node, slot in plan.constants:
            records.append(self._constant(node, slot))
        for weight in plan.zero_points:
            dq = weight.node
            if len(dq.inputs) < 3:  # shared by several Gemms: added once
                dq.inputs.append(
                    gs.Constant(
                        unique_name(dq.inputs[0].name + "_zero_point", self.names),
                        np.zeros(weight.scale.shape, weight.dtype),
                    )
                )
        for entry in plan.entries.values():
            self._pair(entry)
        nodes = self.before.pop(-1, [])  # pairs on graph inputs go first
        for node in self.graph.nodes:
            nodes.extend(self.before.get(id(node), []))
            nodes.append(node)
            nodes.extend(self.after.get(id(node), []))
        self.graph.nodes = nodes

    def _qparams(self, entry: Entry) -> tuple[gs.Constant, gs.Constant]:
        key = entry.share.name if entry.share is not None else entry.tensor.name
        if key not in self.constants:
            scale, zero_point = self.params[entry.tensor.name]
            self.constants[key] = (
                gs.Constant(unique_name(key + "_scale", self.names), np.asarray(scale)),
                gs.Constant(unique_name(key + "_zero_point", self.names), np.asarray(zero_point)),
            )
        return self.constants[key]

    def _pair(self, entry: Entry) -> None:
        t = entry.tensor
        scale, zp = self._qparams(entry)
        producer = t.inputs[0] if t.inputs else None
        place = self.after[id(producer)] if producer is not None else self.before[-1]
        if entry.consumers is not None:  # one pair per consumer (TensorRT)
            for consumer in entry.consumers:
                dq_out = self._new_pair(t, scale, zp, place)
                for i, inp in enumerate(consumer.inputs):
                    if inp is t:
                        consumer.inputs[i] = dq_out
            return
        if is_graph_output(self.graph, t) and producer is not None:
            # The graph output keeps its name: the producer writes a new tensor, the DQ writes the output.
            inner = gs.Variable(unique_name(t.name + "_float", self.names), dtype=t.dtype, shape=t.shape)
            producer.outputs[producer.outputs.index(t)] = inner
            self._new_pair(inner, scale, zp, place, out=t)
            return
        consumers = list(t.outputs)
        dq_out = self._new_pair(t, scale, zp, place)
        for node in consumers:
            for i, inp in enumerate(node.inputs):
                if inp is t:
                    node.inputs[i] = dq_out

    def _new_pair(
        self, t: gs.Variable, scale: gs.Constant, zp: gs.Constant, place: list[gs.Node], out: gs.Variable | None = None
    ) -> gs.Variable:
        base = out.name if out is not None else t.name
        q_out = self._variable(base + "_quantized", zp.values.dtype, t.shape)
        place.append(self._node("QuantizeLinear", base, [t, scale, zp], q_out))
        dq_out = out if out is not None else self._variable(base + "_dequantized", np.float32, t.shape)
        place.append(self._node("DequantizeLinear", base, [q_out, scale, zp], dq_out))
        return dq_out

    def _variable(self, name: str, dtype: Any, shape: Any) -> gs.Variable:
        return gs.Variable(unique_name(name, self.names), dtype=dtype, shape=shape)

    def _constant_of(self, name: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(unique_name(name, self.names), np.asarray(values))

    def _node(self, op: str, base: str, inputs: list[gs.Tensor], out: gs.Variable, **attrs: Any) -> gs.Node:
        return gs.Node(op, unique_name(f"{base}_{op}", self.names), attrs=attrs, inputs=inputs, outputs=[out])

    def _bias(self, node: gs.Node, weight: WeightDQ) -> dict[str, Any]:
        """Rule 2: the bias as int32 at scale s_x * s_w (per output channel) behind a DequantizeLinear."""
        bias_in = node.inputs[2]
        bias = _gemm_bias(node)
        if node.op == "Gemm":
            node.attrs["beta"] = 1.0
        x_scale = np.float32(self.params[node.inputs[0].name][0])
        weight_scale = constant_value(weight.node.inputs[1]).astype(np.float32)
        scale = (x_scale * weight_scale).astype(np.float32)
        scale = scale.reshape(-1) if scale.size > 1 else scale.reshape(())
        full = np.broadcast_to(scale, (bias.size,))
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(full > 0, np.round(bias.reshape(-1).astype(np.float64) / full), 0.0)
        q = np.clip(q, -_INT32_MAX, _INT32_MAX).astype(np.int32).reshape(bias.shape)
        name = bias_in.name
        out = self._variable(name + "_dequantized", np.float32, list(bias.shape))
        inputs = [self._constant_of(name + "_quantized", q), self._constant_of(name + "_scale", scale)]
        axis = {"axis": bias.ndim - 1} if scale.size > 1 else {}
        self.before[id(node)].append(self._node("DequantizeLinear", name, inputs, out, **axis))
        node.inputs[2] = out
        zero = int(np.count_nonzero(full <= 0))
        return {"tensor": name, "kind": "bias", "layer": node_label(node), "scale": float(scale.min()),
                "max_abs": int(np.abs(q).max()) if q.size else 0, "zero_scale_channels": zero}  # fmt: skip

    def _constant(self, node: gs.Node, slot: int) -> dict[str, Any]:
        """Rule 5: a float constant operand of Add/Mul as a per-tensor 8-bit constant behind a DequantizeLinear."""
        t = node.inputs[slot]
        value = constant_value(t).astype(np.float32)
        grid = self.grid
        scale, zero_point = act_ranges.quant_params(float(value.min()), float(value.max()), grid)
        q = np.asarray(np.clip(np.round(value / scale) + zero_point, grid.qmin, grid.qmax).astype(grid.dtype))
        base = t.name or node_label(node)
        out = self._variable(base + "_dequantized", np.float32, list(value.shape))
        inputs = [self._constant_of(base + "_quantized", q), self._constant_of(base + "_scale", scale)]
        inputs.append(self._constant_of(base + "_zero_point", np.asarray(zero_point, grid.dtype)))
        self.before[id(node)].append(self._node("DequantizeLinear", base, inputs, out))
        node.inputs[slot] = out
        return {"tensor": base, "kind": "constant", "layer": node_label(node), "scale": float(scale),
                "zero_point": int(zero_point)}  # fmt: skip
