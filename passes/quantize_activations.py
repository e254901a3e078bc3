"""Static activation quantization: QuantizeLinear/DequantizeLinear pairs placed where the target runtime fuses them.

W8A8 is ``[cleanup..., quantize_weights (bits 8, per_channel, symmetric, min_elements 0), quantize_activations]``:
weights arrive as integer initializers behind a ``DequantizeLinear``; this pass measures activation ranges on the
calibration data (one streaming pass, :func:`onnxcomp.calibration.stats.collect_stats`; the methods, ``mse`` by default,
are :mod:`onnxcomp.analysis.act_ranges`'s; ``auto`` builds the Q/DQ model with each and keeps the one with the best
output SQNR on the calibration data) and inserts ``x -> Q -> DQ -> consumers`` on the tensors the target's integer
kernels need, plus int32 biases. A layer whose weight is still float stays float (its reason is in ``skipped``).

Placement follows the target's rules, which belong to its emitter: ``target: onnxruntime``
(:func:`onnxcomp.emit.onnx_standard.place_qdq`: Q/DQ exactly where onnxruntime's CPU QDQ selectors fuse integer
kernels: Conv/Gemm/MatMul/Add/Mul/Concat/pool/Sigmoid/Softmax anchors, int32 biases at ``s_x * s_w``, data
movement sharing its input's grid, Relu/Clip absorbed by the following Q, every other op in float) or
``target: tensorrt`` (:func:`onnxcomp.emit.tensorrt.place_qdq`: int8 symmetric on the activation inputs of
weighted ops and on residual Add inputs, one pair per consumer, float biases). The insertion is
:class:`onnxcomp.emit.qdq.Inserter`'s.

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
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.analysis import act_ranges
from onnxcomp.analysis.act_ranges import INT8_SYMMETRIC, METHODS, UINT8_ASYMMETRIC, Grid
from onnxcomp.calibration.stats import RunningStats, collect_stats
from onnxcomp.emit import onnx_standard, tensorrt
from onnxcomp.emit.qdq import WEIGHTED, Entry, Inserter, Planner, QdqPlan
from onnxcomp.emit.qdq import root as root_of
from onnxcomp.errors import PassError, RecipeError
from onnxcomp.ir.graph_edit import is_standard, node_label
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import values_of
from onnxcomp.measure.fidelity import compare
from onnxcomp.passes.base import Pass, PassContext, PassResult, Requirement
from onnxcomp.runtime import int8_pairs_saturate

_CAPTURE_BYTES = 1 << 29  # captured activations of one batch held at once (512 MiB), else several passes
_MAX_REPLANS = 8  # placements made again after unbounded ranges keep nodes float
_RANGE_LIMIT = 1e30  # |min| or |max| beyond this is a mask constant (-inf, float-min, -1e38), not an activation
# The targets' Q/DQ placement rules, each its emitter's.
_PLACEMENT = {"onnxruntime": onnx_standard.place_qdq, "tensorrt": tensorrt.place_qdq}


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
            raise RecipeError(f"percentile must be a number in (50, 100), got {self.percentile!r}")
        if self.target == "tensorrt" and self.activation_dtype == "uint8":
            raise RecipeError(
                "activation_dtype must be int8 (or auto) for target tensorrt: TensorRT runs int8 "
                "symmetric activations with zero point 0, got 'uint8'"
            )
        for name in ("keep_float", "keep_float_ops"):
            if not all(isinstance(p, str) for p in getattr(self, name)):
                raise RecipeError(f"{name} must be a list of strings, got {getattr(self, name)!r}")
        for key, value in self.rules.items():
            _check_choice(f"rules[{key!r}]", value, METHODS + ("float",))
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 256 or self.bins % 2:
            raise RecipeError(f"bins must be an even integer >= 256, got {self.bins!r}")

    @property
    def grid(self) -> Grid:
        symmetric = self.target == "tensorrt" or self.activation_dtype == "int8"
        return INT8_SYMMETRIC if symmetric else UINT8_ASYMMETRIC


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RecipeError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


class QuantizeActivations(Pass):
    name = "quantize_activations"
    Config = QuantizeActivationsConfig
    description = "static activation quantization (Q/DQ placed for onnxruntime or TensorRT fusion), int32 biases"

    def requirements(self) -> list[Requirement]:
        return [Requirement("calibration", "activation ranges"), Requirement("opset10")]

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        cfg = self.config
        result = PassResult(modified=False)
        stats: dict[str, RunningStats] = {}
        unbounded: list[tuple[str, str]] = []  # (tensor, observed range) kept float
        for _ in range(_MAX_REPLANS):
            scratch = PassResult(modified=False)
            kept = _kept_float(model.graph, cfg, scratch)
            plan = _PLACEMENT[cfg.target](Planner(model, cfg.grid, cfg.target, kept, scratch.skipped))
            roots = [e.tensor.name for e in plan.entries.values() if e.share is None]
            missing = [r for r in roots if r not in stats]
            if missing:
                stats.update(collect_stats(model, missing, ctx.calibration, channels=False, bins=cfg.bins,
                                           max_batch_bytes=_CAPTURE_BYTES))
            bad = [r for r in roots if not _bounded(stats[r])]
            if not bad:
                break
            # A range that is not finite (an attention mask's -inf or float-min) has no grid: the nodes that would
            # quantize the tensor stay float, by their output names, and the placement is made again.
            names = []
            for r in bad:
                unbounded.append((r, f"[{stats[r].min:.3g}, {stats[r].max:.3g}]"))
                t = plan.entries[r].tensor
                names += [n.outputs[0].name for n in (*t.inputs, *t.outputs) if n.outputs and n.outputs[0].name]
            cfg = dataclasses.replace(cfg, keep_float=cfg.keep_float + tuple(_glob_escape(n) for n in names))
        else:
            raise PassError(f"pass '{self.name}': activation ranges stay unbounded after {_MAX_REPLANS} placements")
        result.skipped += scratch.skipped
        for tensor, observed in unbounded:
            result.skipped.append((tensor, f"kept float: its calibration range {observed} is not finite (a mask's "
                                           f"-inf or float-min?), so no 8-bit grid can hold it; its readers and "
                                           "writer run in float"))
        if not plan.entries:
            result.summary = "no activation quantized"
            return result
        chosen = ""
        if cfg.method == "auto":
            cfg, chosen = self._choose(model, ctx, stats, cfg)
        Inserter(model, self._params(plan, stats, result, cfg), cfg.grid).apply(plan, result.records)
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
                config: QuantizeActivationsConfig) -> tuple[QuantizeActivationsConfig, str]:
        """``method: auto``: the range method whose Q/DQ model is closest to this pass's input on the calibration
        data (total output SQNR; the first of :data:`METHODS` among equals). Which method wins depends on the
        model (PP-OCRv4 cls: minmax; heavy-tailed activations: mse or percentile), so it is measured, once, on
        copies; the statistics are collected once for all."""
        reference = model.to_proto()
        scores = {}
        for method in METHODS:
            cfg = dataclasses.replace(config, method=method)
            candidate, scratch = model.copy(), PassResult(modified=False)
            planner = Planner(candidate, cfg.grid, cfg.target, _kept_float(candidate.graph, cfg, scratch),
                              scratch.skipped)
            plan = _PLACEMENT[cfg.target](planner)
            Inserter(candidate, self._params(plan, stats, scratch, cfg), cfg.grid).apply(plan, scratch.records)
            report = compare(reference, candidate.to_proto(), ctx.calibration)
            scores[method] = sum(min(o.sqnr_db, 200.0) for o in report.outputs)
        best = max(METHODS, key=lambda m: (scores[m], -METHODS.index(m)))
        listed = ", ".join(f"{m} {scores[m]:.1f} dB" for m in METHODS)
        return dataclasses.replace(config, method=best), f" chosen by output SQNR: {listed}"

    def _params(self, plan: QdqPlan, stats: dict[str, RunningStats], result: PassResult,
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
                root = root_of(plan, entry)
                params[entry.tensor.name] = params[root.tensor.name]
                result.records.append({**_record(entry, params[root.tensor.name]), "shared_with": root.tensor.name})
        return params


def _bounded(stats: RunningStats) -> bool:
    """Whether a tensor's observed range can carry an 8-bit grid: finite, and not a mask's float-min."""
    lo, hi = stats.min, stats.max
    return bool(np.isfinite(lo) and np.isfinite(hi) and max(abs(lo), abs(hi)) < _RANGE_LIMIT)


def _glob_escape(name: str) -> str:
    """``name`` as a glob matching only itself (``keep_float`` patterns are fnmatch globs)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _record(entry: Entry, params: tuple) -> dict[str, Any]:
    consumers = entry.consumers if entry.consumers is not None else entry.tensor.outputs
    return {"tensor": entry.tensor.name, "kind": "activation", "scale": float(params[0]),
            "zero_point": int(params[1]), "consumers": [node_label(n) for n in consumers]}  # fmt: skip


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
    weighted = {id(n) for n in graph.nodes if is_standard(n, *WEIGHTED)}

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


def _wide_codes(model: Model) -> bool:
    """Whether a DequantizeLinear reads int8 weight codes beyond 7 bits (|code| > 63)."""
    for node in model.graph.nodes:
        codes = node.inputs[0] if node.op == "DequantizeLinear" and node.inputs else None
        values = values_of(codes) if isinstance(codes, gs.Constant) and codes.dtype == np.int8 else None
        if values is not None and values.size and int(np.abs(values.astype(np.int16)).max()) > 63:
            return True
    return False
