"""Static activation quantization: QuantizeLinear/DequantizeLinear pairs placed where the target runtime fuses them.

W8A8 is ``[cleanup..., quantize_weights (bits 8, per_channel, symmetric, min_elements 0), quantize_activations]``:
weights arrive as integer initializers behind a ``DequantizeLinear``; this pass measures activation ranges on the
calibration data (one streaming pass, :func:`onnxcomp.stats.collect_stats`; the methods, ``mse`` by default, are
:mod:`onnxcomp.act_ranges`'s; ``auto`` builds the Q/DQ model with each and keeps the one with the best output
SQNR on the calibration data) and inserts ``x -> Q -> DQ -> consumers`` on the tensors the target's integer
kernels need, plus int32 biases. A layer whose weight is still float stays float (its reason is in ``skipped``).

Placement, ``target: onnxruntime`` (the CPU QDQ selectors of onnxruntime's graph optimizer: a node group
``DQ inputs -> op -> Q output`` becomes one integer kernel only when *every* float input comes from a DQ and
*every* consumer of the output is a Q):

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

Placement, ``target: tensorrt`` (TensorRT's Q/DQ placement recommendations; TensorRT fuses BN/activations and
propagates Q/DQ itself): int8 symmetric activations (zero point 0) on the activation inputs of ``Conv``,
``ConvTranspose``, ``Gemm`` and ``MatMul`` (weights must be int8 with zero point 0), never on their outputs; and
on the residual input of an ``Add`` whose other input comes from a weighted op (of two such inputs, the one on the
shorter path from the graph inputs), so TensorRT fuses the addition into the convolution. Each consumer gets its
own Q/DQ pair; biases stay float (TensorRT quantizes them itself).

Kept float (their own inputs/outputs are not quantized for them): nodes matching ``keep_float`` (node or output
tensor name globs), ops in ``keep_float_ops``, ``rules`` mapped to ``float`` and, with ``keep_first_last``, the
first weighted layer(s) (reached from a graph input through no other weighted op) and the classifier head (the
weighted layer(s) from which a graph output is reached through no other weighted op). ``rules`` maps an op type,
node-name glob or tensor-name glob to the method used for the tensors those nodes produce.

Calibration is bounded: statistics stream batch by batch, and when the captured tensors of one batch would exceed
``_CAPTURE_BYTES`` (shapes from ONNX shape inference at the first feed's shapes) they are captured in groups,
one pass over the data per group.

Records, one per quantized tensor (tensor, kind, method, observed min/max, range, scale, zero point, consumers;
``shared_with`` for data movement) and per int32 bias / quantized constant; ``skipped`` names each node kept
float or not quantized, with the reason.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp import act_ranges
from onnxcomp.act_ranges import INT8_SYMMETRIC, METHODS, UINT8_ASYMMETRIC, Grid
from onnxcomp.errors import PassError
from onnxcomp.fidelity import compare
from onnxcomp.graph_edit import is_graph_output, is_standard, node_label, tensor_names, unique_name
from onnxcomp.model import Model
from onnxcomp.pipeline import Pass, PassContext, PassResult
from onnxcomp.runtime import int8_pairs_saturate
from onnxcomp.stats import RunningStats, collect_stats
from onnxcomp.weights import constant_value, is_constant, values_of

_INT32_MAX = float(np.iinfo(np.int32).max)
_CAPTURE_BYTES = 1 << 29  # captured activations of one batch held at once (512 MiB), else several passes
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_UNARY = ("GlobalAveragePool", "AveragePool", "LeakyRelu", "Sigmoid", "Softmax")
# Data movement that onnxruntime runs on 8-bit data when its input and output share one grid (MaxPool: opset 12).
_SHARE = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather", "GatherElements")
_SHARE += ("Expand", "Tile", "Resize", "Split")
_ACTIVATIONS = ("Relu", "Clip")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QuantizeActivationsConfig:
    method: Literal["minmax", "percentile", "entropy", "mse", "auto"] = "mse"  # auto: measured, see _choose
    percentile: float = 99.99  # for method percentile
    activation_dtype: Literal["auto", "uint8", "int8"] = "auto"  # auto: uint8 asymmetric, int8 for tensorrt
    target: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    keep_float: tuple[str, ...] = ()  # node or output tensor name globs kept float
    keep_float_ops: tuple[str, ...] = ()  # op types kept float
    keep_first_last: bool = False  # keep the first weighted layer(s) and the classifier head float
    rules: dict[str, str] = field(default_factory=dict)  # op type / node / tensor glob -> method or "float"
    bins: int = 2048  # histogram bins per sign

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS + ("auto",))
        _check_choice("activation_dtype", self.activation_dtype, ("auto", "uint8", "int8"))
        _check_choice("target", self.target, ("onnxruntime", "tensorrt"))
        if (
            isinstance(self.percentile, bool)
            or not isinstance(self.percentile, (int, float))
            or not (50.0 < self.percentile < 100.0)
        ):
            raise ValueError(f"percentile must be a number in (50, 100), got {self.percentile!r}")
        if self.target == "tensorrt" and self.activation_dtype == "uint8":
            raise ValueError(
                "activation_dtype must be int8 (or auto) for target tensorrt: TensorRT runs int8 "
                "symmetric activations with zero point 0, got 'uint8'"
            )
        for name in ("keep_float", "keep_float_ops"):
            if not all(isinstance(p, str) for p in getattr(self, name)):
                raise ValueError(f"{name} must be a list of strings, got {getattr(self, name)!r}")
        for key, value in self.rules.items():
            _check_choice(f"rules[{key!r}]", value, METHODS + ("float",))
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 256 or self.bins % 2:
            raise ValueError(f"bins must be an even integer >= 256, got {self.bins!r}")

    @property
    def grid(self) -> Grid:
        symmetric = self.target == "tensorrt" or self.activation_dtype == "int8"
        return INT8_SYMMETRIC if symmetric else UINT8_ASYMMETRIC


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass
class _Entry:
    """One tensor to quantize: its own range, or the parameters of ``share`` (data movement)."""

    tensor: gs.Variable
    share: gs.Variable | None = None
    consumers: list[gs.Node] | None = None  # None: every consumer reads one shared DQ (onnxruntime)


@dataclass
class _WeightDQ:
    """A weight read through a constant DequantizeLinear (``quantize_weights``)."""

    node: gs.Node
    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int  # normalised
    dtype: np.dtype


@dataclass
class _Plan:
    entries: dict[str, _Entry] = field(default_factory=dict)
    biases: list[tuple[gs.Node, _WeightDQ]] = field(default_factory=list)  # Conv/Gemm whose bias goes int32
    zero_points: list[_WeightDQ] = field(default_factory=list)  # Gemm weights that need an explicit zero point
    constants: list[tuple[gs.Node, int]] = field(default_factory=list)  # (Add/Mul, slot of the float constant)

    def add(self, tensor: gs.Variable, consumer: gs.Node | None = None, share: gs.Variable | None = None) -> None:
        entry = self.entries.setdefault(tensor.name, _Entry(tensor, share, [] if consumer is not None else None))
        if share is not None:
            entry.share = share
        if consumer is not None and entry.consumers is not None and consumer not in entry.consumers:
            entry.consumers.append(consumer)


class QuantizeActivations(Pass):
    name = "quantize_activations"
    Config = QuantizeActivationsConfig
    requires = frozenset({"calibration"})
    description = "static activation quantization (Q/DQ placed for onnxruntime or TensorRT fusion), int32 biases"

    def check_requirements(self, ctx: PassContext) -> None:
        if ctx.calibration is None:
            raise PassError(
                f"pass '{self.name}' needs calibration data to measure activation ranges: "
                "pass --calib DATA (an .npz or a folder)"
            )

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        cfg = self.config
        if model.opset < 10:
            raise PassError(
                f"pass '{self.name}' needs ai.onnx opset >= 10 (QuantizeLinear); the model has {model.opset}"
            )
        result = PassResult(modified=False)
        kept = _kept_float(model.graph, cfg, result)
        planner = _Planner(model, cfg, kept, result)
        plan = planner.tensorrt() if cfg.target == "tensorrt" else planner.onnxruntime()
        if not plan.entries:
            result.summary = "no activation quantized"
            return result
        roots = [e.tensor.name for e in plan.entries.values() if e.share is None]
        stats = collect_stats(
            model, roots, ctx.calibration, channels=False, bins=cfg.bins, max_batch_bytes=_CAPTURE_BYTES
        )
        chosen = ""
        if cfg.method == "auto":
            cfg, chosen = self._choose(model, ctx, stats)
        _Inserter(model, self._params(plan, stats, result, cfg), cfg.grid).apply(plan, result)
        result.modified = True
        biases = sum(1 for r in result.records if r["kind"] == "bias")
        result.summary = (
            f"{len(plan.entries)} activations quantized ({cfg.method}{chosen}, {cfg.grid.dtype.name}, "
            f"{cfg.target}), {biases} int32 biases, {len(kept)} nodes kept float"
        )
        if cfg.target == "onnxruntime" and not cfg.grid.symmetric and int8_pairs_saturate() and _wide_codes(model):
            result.notes.append(
                "this CPU (x86 without VNNI) sums pairs of uint8 x int8 products in int16 in onnxruntime's fused "
                "kernels, which 8-bit weights can saturate: fidelity measured here may be worse than on VNNI or ARM "
                "CPUs; for such deployment targets use recipe int8-avx2 (7-bit weights)")
        return result

    def _choose(self, model: Model, ctx: PassContext, stats: dict[str, RunningStats],
                ) -> tuple[QuantizeActivationsConfig, str]:
        """``method: auto``: the range method whose Q/DQ model is closest to this pass's input on the calibration
        data (total output SQNR; the first of :data:`METHODS` among equals). Which method wins depends on the
        model (PP-OCRv4 cls: minmax; heavy-tailed activations: mse or percentile), so it is measured, once, on
        copies; the statistics are collected once for all."""
        reference = model.to_proto()
        scores = {}
        for method in METHODS:
            cfg = dataclasses.replace(self.config, method=method)
            candidate, scratch = model.copy(), PassResult(modified=False)
            planner = _Planner(candidate, cfg, _kept_float(candidate.graph, cfg, scratch), scratch)
            plan = planner.tensorrt() if cfg.target == "tensorrt" else planner.onnxruntime()
            _Inserter(candidate, self._params(plan, stats, scratch, cfg), cfg.grid).apply(plan, scratch)
            report = compare(reference, candidate.to_proto(), ctx.calibration)
            scores[method] = sum(min(o.sqnr_db, 200.0) for o in report.outputs)
        best = max(METHODS, key=lambda m: (scores[m], -METHODS.index(m)))
        listed = ", ".join(f"{m} {scores[m]:.1f} dB" for m in METHODS)
        return dataclasses.replace(self.config, method=best), f" chosen by output SQNR: {listed}"

    def _params(self, plan: _Plan, stats: dict[str, RunningStats], result: PassResult,
                cfg: QuantizeActivationsConfig | None = None) -> dict[str, tuple]:
        """Scale and zero point of every planned tensor (shared ones take their root's), with the records."""
        cfg = cfg or self.config
        params = {}
        for entry in plan.entries.values():
            if entry.share is None:
                method = _method_for(entry.tensor, cfg)
                s = stats[entry.tensor.name]
                lo, hi = act_ranges.activation_range(s, method, cfg.grid, cfg.percentile)
                scale, zero_point = act_ranges.quant_params(lo, hi, cfg.grid)
                params[entry.tensor.name] = (np.float32(scale), np.array(zero_point, dtype=cfg.grid.dtype))
                found = {"method": method, "min": float(s.min), "max": float(s.max), "range": [float(lo), float(hi)]}
                result.records.append({**_record(entry, params[entry.tensor.name]), **found})
        for entry in plan.entries.values():
            if entry.share is not None:
                root = _root(plan, entry)
                params[entry.tensor.name] = params[root.tensor.name]
                result.records.append({**_record(entry, params[root.tensor.name]), "shared_with": root.tensor.name})
        return params


def _record(entry: _Entry, params: tuple) -> dict[str, Any]:
    consumers = entry.consumers if entry.consumers is not None else entry.tensor.outputs
    return {"tensor": entry.tensor.name, "kind": "activation", "scale": float(params[0]),
            "zero_point": int(params[1]), "consumers": [node_label(n) for n in consumers]}  # fmt: skip


def _root(plan: _Plan, entry: _Entry) -> _Entry:
    while entry.share is not None:
        entry = plan.entries[entry.share.name]
    return entry


def _method_for(tensor: gs.Variable, cfg: QuantizeActivationsConfig) -> str:
    producer = tensor.inputs[0] if tensor.inputs else None
    for key, value in cfg.rules.items():
        if value == "float":
            continue
        if fnmatchcase(tensor.name, key) or (
            producer is not None and (producer.op == key or fnmatchcase(node_label(producer), key))
        ):
            return value
    return cfg.method


# -- what stays float --------------------------------------------------------------------------------------------
def _kept_float(graph: gs.Graph, cfg: QuantizeActivationsConfig, result: PassResult) -> set[int]:
    kept: dict[int, str] = {}
    for node in graph.nodes:
        names = [node_label(node)] + [t.name for t in node.outputs]
        pattern = next((p for p in cfg.keep_float if any(fnmatchcase(n, p) for n in names)), None)
        floats = [k for k, v in cfg.rules.items() if v == "float"]
        rule = next((k for k in floats if node.op == k or any(fnmatchcase(n, k) for n in names)), None)
        if pattern is not None:
            kept[id(node)] = f"kept float: name matches {pattern!r}"
        elif node.op in cfg.keep_float_ops:
            kept[id(node)] = f"kept float: op {node.op} in keep_float_ops"
        elif rule is not None:
            kept[id(node)] = f"kept float: rules[{rule!r}] is 'float'"
    if cfg.keep_first_last:
        for node, why in _first_and_last(graph):
            kept.setdefault(id(node), f"kept float: {why} (keep_first_last)")
    for node in graph.nodes:
        if id(node) in kept:
            result.skipped.append((node_label(node), kept[id(node)]))
    return set(kept)


def _first_and_last(graph: gs.Graph) -> list[tuple[gs.Node, str]]:
    """Weighted nodes reached from a graph input / reaching a graph output through no other weighted node."""
    weighted = {id(n) for n in graph.nodes if is_standard(n, *_WEIGHTED)}

    def reach(starts: list[gs.Tensor], forward: bool) -> list[gs.Node]:
        seen, found, stack = set(), {}, list(starts)
        while stack:
            t = stack.pop()
            if id(t) in seen:
                continue
            seen.add(id(t))
            for node in t.outputs if forward else t.inputs:
                if id(node) in weighted:
                    found.setdefault(id(node), node)
                else:
                    stack.extend(node.outputs if forward else node.inputs)
        return list(found.values())

    first = reach(list(graph.inputs), forward=True)
    last = reach(list(graph.outputs), forward=False)
    return [(n, "first layer") for n in first] + [
        (n, "classifier head") for n in last if all(n is not f for f in first)
    ]


# -- placement ---------------------------------------------------------------------------------------------------
class _Planner:
    def __init__(self, model: Model, cfg: QuantizeActivationsConfig, kept: set[int], result: PassResult):
        self.graph, self.cfg, self.kept, self.result = model.graph, cfg, kept, result
        self.types, self.opset = _elem_types(model), model.opset

    def activation(self, t: gs.Tensor) -> bool:
        """A float32 tensor computed at run time (not a constant, not already behind Q/DQ)."""
        if not isinstance(t, gs.Variable) or not t.name or is_constant(t):
            return False
        if t.inputs and t.inputs[0].op in _QDQ or any(c.op == "QuantizeLinear" for c in t.outputs):
            return False
        return self.types.get(t.name) == onnx.TensorProto.FLOAT

    def skip(self, node: gs.Node, why: str) -> None:
        self.result.skipped.append((node_label(node), why))

    def side(self, node: gs.Node, slot: int) -> bool | _WeightDQ | str:
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
        if self.cfg.grid.symmetric and values.dtype != np.int8:
            return "int8 activations need int8 weights"
        if self.cfg.target == "tensorrt" and zp is not None and np.any(zp):
            return "TensorRT needs symmetric weights (zero point 0)"
        axis = int(dq.attrs.get("axis", 1)) % max(values.ndim, 1)
        return _WeightDQ(dq, np.asarray(scale), zp, axis, values.dtype)

    def weighted(self, node: gs.Node) -> list[bool | _WeightDQ] | None:
        """The two operands of a weighted op (at least one an activation), or None after recording why not."""
        sides = [self.side(node, i) for i in range(2)]
        why = next((s for s in sides if isinstance(s, str)), None)
        if why is None and not any(s is True for s in sides):
            why = "no activation input"
        if why is not None:
            self.skip(node, f"{node.op} not quantized: {why}")
            return None
        return sides

    # -- onnxruntime ---------------------------------------------------------------------------------------------
    def onnxruntime(self) -> _Plan:
        plan = _Plan()
        fused: set[int] = set()  # nodes that become one integer kernel with their Q/DQ
        for node in self.graph.nodes:
            if id(node) not in self.kept and is_standard(node) and self._anchor(node, plan):
                fused.add(id(node))
        for node in self.graph.nodes:  # forward: data movement, activations, binary ops with a constant
            if id(node) in self.kept or not is_standard(node) or not node.inputs:
                continue
            x = node.inputs[0]
            if node.op in _SHARE and (node.op != "MaxPool" or self.opset >= 12) and x.name in plan.entries:
                for y in node.outputs:
                    if self.activation(y) and (y.outputs or is_graph_output(self.graph, y)):
                        plan.add(y, share=_root(plan, plan.entries[x.name]).tensor)
            elif node.op in _ACTIVATIONS and not self.cfg.grid.symmetric and x.name in plan.entries:
                self._relocate(node, x, plan, fused)
            elif node.op in ("Add", "Mul") and len(node.inputs) == 2 and id(node) not in fused:
                slots = [i for i, t in enumerate(node.inputs) if _float_constant(t)]
                y = node.outputs[0]
                if (
                    len(slots) == 1
                    and node.inputs[1 - slots[0]].name in plan.entries
                    and self.activation(y)
                    and not is_graph_output(self.graph, y)
                ):
                    plan.add(y)
                    plan.constants.append((node, slots[0]))
                    fused.add(id(node))
        return plan

    def _anchor(self, node: gs.Node, plan: _Plan) -> bool:
        """Rules 1-2: quantize what the node's integer kernel needs; False when it stays float."""
        op = node.op
        y = node.outputs[0] if node.outputs else None
        if y is None or not self.activation(y):
            return False
        if op in ("Conv", "Gemm", "MatMul"):
            sides = self.weighted(node)
            if sides is None:
                return False
            if op != "MatMul":
                constant_b = sides[0] is True and sides[1] is not True
                why = _bias_refusal(node, sides[1]) if constant_b else "the weight must be a constant input B"
                if why:
                    self.skip(node, f"{op} not quantized: {why}")
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
            if (op in ("Add", "Mul") and len(inputs) != 2) or not all(self.activation(t) for t in inputs):
                return False  # a constant operand (rule 5) or not float
            if is_graph_output(self.graph, y):
                self.skip(node, f"{op} kept float: its output is a graph output")
                return False
            for t in inputs:
                plan.add(t)
            plan.add(y)
            return True
        if op not in _SHARE and op not in _ACTIVATIONS and any(self.activation(t) for t in node.inputs):
            self.skip(node, f"{op} runs in float: onnxruntime has no integer {op} kernel")
        return False

    def _relocate(self, act: gs.Node, x: gs.Variable, plan: _Plan, fused: set[int]) -> None:
        """Rule 4: quantize the activation's output instead of its input where the producer fuses it."""
        y = act.outputs[0]
        producer = x.inputs[0] if x.inputs else None
        bounds = _clip_bounds(act)
        if (
            self.activation(y)
            and producer is not None
            and id(producer) in fused
            and len(x.outputs) == 1
            and not is_graph_output(self.graph, x)
            and bounds is not None
            and bounds[0] <= 0 <= bounds[1]
        ):
            del plan.entries[x.name]
            fused.add(id(act))
            plan.add(y)

    # -- tensorrt ------------------------------------------------------------------------------------------------
    def tensorrt(self) -> _Plan:
        plan = _Plan()
        depth = _depths(self.graph)
        weighted_out: set[str] = set()
        for node in self.graph.nodes:
            if id(node) in self.kept or not is_standard(node, *_WEIGHTED):
                continue
            sides = self.weighted(node)
            if sides is None:
                continue
            for t, side in zip(node.inputs, sides):
                if side is True:
                    plan.add(t, consumer=node)
            weighted_out.update(t.name for t in node.outputs)
        for node in self.graph.nodes:
            if id(node) in self.kept or not is_standard(node, "Add") or len(node.inputs) != 2:
                continue
            a, b = node.inputs
            if not (self.activation(a) and self.activation(b)):
                continue
            from_weighted = [t.name in weighted_out for t in (a, b)]
            if all(from_weighted):  # the shorter path is the residual branch
                residual = a if depth.get(a.name, 0) <= depth.get(b.name, 0) else b
            elif any(from_weighted):
                residual = b if from_weighted[0] else a
            else:
                continue
            plan.add(residual, consumer=node)
        return plan


def _bias_refusal(node: gs.Node, weight: _WeightDQ) -> str | None:
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


def _raise_weight_scales(weight: _WeightDQ, node: gs.Node, x_scale: np.float32) -> int:
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


def _clip_bounds(node: gs.Node) -> tuple[float, float] | None:
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


def _float_constant(t: gs.Tensor) -> bool:
    value = constant_value(t) if is_constant(t) else None
    return value is not None and value.dtype == np.float32


def _depths(graph: gs.Graph) -> dict[str, int]:
    """Longest path (in nodes) from the graph inputs to each tensor; nodes are in topological order."""
    depth: dict[str, int] = {}
    for node in graph.nodes:
        d = 1 + max((depth.get(t.name, 0) for t in node.inputs), default=0)
        for t in node.outputs:
            depth[t.name] = d
    return depth


# -- types and statistics ----------------------------------------------------------------------------------------
def _elem_types(model: Model) -> dict[str, int]:
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
class _Inserter:
    def __init__(self, model: Model, params: dict[str, tuple], grid: Grid):
        self.graph, self.params, self.grid = model.graph, params, grid
        self.names = tensor_names(model.graphs())
        self.after: dict[int, list[gs.Node]] = defaultdict(list)  # producer id -> new nodes to place after it
        self.before: dict[int, list[gs.Node]] = defaultdict(list)  # consumer id -> new nodes to place before it
        self.constants: dict[str, tuple[gs.Constant, gs.Constant]] = {}

    def apply(self, plan: _Plan, result: PassResult) -> None:
        # Biases and constants first: they look up parameters by the names the pairs then rewire. Weight scales are
        # raised for every bias before any bias is quantized (a weight may feed several layers).
        raised = [
            _raise_weight_scales(weight, node, self.params[node.inputs[0].name][0]) for node, weight in plan.biases
        ]
        for (node, weight), count in zip(plan.biases, raised):
            result.records.append({**self._bias(node, weight), "weight_scales_raised": count})
        for node, slot in plan.constants:
            result.records.append(self._constant(node, slot))
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

    def _qparams(self, entry: _Entry) -> tuple[gs.Constant, gs.Constant]:
        key = entry.share.name if entry.share is not None else entry.tensor.name
        if key not in self.constants:
            scale, zero_point = self.params[entry.tensor.name]
            self.constants[key] = (
                gs.Constant(unique_name(key + "_scale", self.names), np.asarray(scale)),
                gs.Constant(unique_name(key + "_zero_point", self.names), np.asarray(zero_point)),
            )
        return self.constants[key]

    def _pair(self, entry: _Entry) -> None:
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

    def _bias(self, node: gs.Node, weight: _WeightDQ) -> dict[str, Any]:
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


def _wide_codes(model: Model) -> bool:
    """Whether a DequantizeLinear reads int8 weight codes beyond 7 bits (|code| > 63)."""
    for node in model.graph.nodes:
        codes = node.inputs[0] if node.op == "DequantizeLinear" and node.inputs else None
        values = values_of(codes) if isinstance(codes, gs.Constant) and codes.dtype == np.int8 else None
        if values is not None and values.size and int(np.abs(values.astype(np.int16)).max()) > 63:
            return True
    return False
