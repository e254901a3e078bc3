"""Weight-only quantization: integer weights + ``DequantizeLinear``, rounded to nearest or GPTQ-style.

Each layer kernel ``W`` is replaced by ``b``-bit integer codes ``q`` and a scale (and zero point), and the graph
reconstructs ``W' = (q - zp) * scale`` with a standard ``DequantizeLinear`` node whose output keeps ``W``'s name,
so the consumers are untouched and stock onnxruntime runs the model. The grids (restricted symmetric, asymmetric
with an exact zero, binary at 1 bit) and the MSE-optimal clipping search are :mod:`onnxcomp.numerics.qscheme`'s.

Rounding. ``nearest`` rounds every weight to its nearest grid point. ``gptq`` (Frantar et al., "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023) minimises the layer's output
error ``trace((W - W') H (W - W')^T)`` with ``H = E[x x^T]`` the input Gram matrix from calibration data
(:mod:`onnxcomp.calibration.hessian`): with the grid of every row fixed beforehand (from the weights, after the clip
search), columns are rounded one after another and each column's rounding error is pushed onto the columns not yet
rounded through ``H^{-1}`` (:func:`onnxcomp.numerics.obs.compensate`). Columns go in order of decreasing ``diag(H)``
(``act_order``: the inputs that matter most are rounded while the most columns remain to absorb their error).
When the layer has a Hessian (``gptq``, ``auto`` or ``sequential`` with calibration data) the clip search weighs
each weight by its input's ``diag(H)``.

onnxruntime (1.32, default optimization level) turns ``DequantizeLinear -> MatMul`` with per-tensor or
per-column scales into ``com.microsoft.MatMulNBits``, whose default accuracy level quantizes the activations to
int8 on the fly (about 0.5% relative output error on top of the weights' own); the session option
``session.qdq_matmulnbits_accuracy_level = 1`` keeps float arithmetic. Conv and Gemm read the dequantized
weights as they are.

Rules:
1. Fires on weight-table entries with role ``weight`` (Conv/ConvTranspose/Gemm/MatMul kernels, LSTM/GRU/RNN W
   and R), in the main graph, in subgraphs and in Constant nodes. ``skipped`` lists every other weight-table entry
   with its reason: biases and norm parameters (role), names matching an ``exclude`` glob (layer or weight name),
   fewer than ``min_elements`` elements, float64 tensors (``DequantizeLinear`` outputs float32/float16 only),
   NaN/infinity, weights that already feed a Quantize/DequantizeLinear, weights read by a non-standard node (it
   may need a constant), and weights that are graph outputs.
2. ``bits`` (1..8; ``bits_per_layer`` maps layer or weight name globs to their own width, first match wins).
   ``granularity``: ``per_channel`` gives each output channel (the weight's layout ``out_axis``: Conv axis 0,
   Gemm 0 or 1 by ``transB``, MatMul ``[K, N]`` axis 1) its own scale (and zero point); a weight without an output
   axis falls back to ``per_tensor``.
3. ``scheme``: ``symmetric`` or ``asymmetric``; ``auto`` quantizes the layer both ways and keeps the one with the
   lower output error (Hessian-weighted when the layer has one, else the weight MSE).
4. ``rounding: gptq`` needs calibration data and a layer with an input Hessian (Conv with explicit pads, Gemm,
   2-D MatMul kernels) used by one node; other layers are rounded to nearest, with the reason in ``skipped``.
   ``sequential`` quantizes layers in graph order, each one's Hessian measured on the partly quantized model and
   its weights first re-targeted to reproduce the ORIGINAL model's outputs from its quantized inputs
   (:func:`onnxcomp.numerics.retarget.retarget`, whose ridge pulls towards the original weights), so upstream
   error is corrected instead of accumulated.
5. Lowering: ``W`` becomes ``W_quantized`` (INT8/UINT8; INT4/UINT4 from opset 21 and INT2/UINT2 from opset 25
   when the codes fit, see :func:`onnxcomp.numerics.qscheme.storage_type`), ``W_scale`` (W's float type),
   ``W_zero_point`` (asymmetric only) and ``DequantizeLinear(axis=out_axis)``. ``DequantizeLinear`` needs ai.onnx opset
   10, 13 per axis, 19 for float16 scales: the model's default opset is raised to what is needed (and to ``opset`` when
   given, e.g. 21 for int4 storage) directly when that cannot change any node's meaning
   (:func:`onnxcomp.ir.opset.opset_refusal`), else by converting the model with onnx's version converter
   (:meth:`Model.convert_opset`: Paddle exports at opset 11/12 with Squeeze, Resize or Softmax); only when that fails
   are the weights that need it skipped with the reason (the summary says when a conversion happened). The node goes
   first in the innermost graph that encloses every use (or where the Constant node was). A weight used by several nodes
   is quantized once.
6. Narrower codes than the storage type (3-bit values in int8) are stored at their real width by
   ``pack_weights`` (``format: packed``), which bit-packs or Huffman-codes the integers.
7. Mixed precision, ``bits: auto`` (needs calibration data): every layer not fixed by ``bits_per_layer`` gets a
   width from ``choices`` by :func:`onnxcomp.passes.width_search.search_widths`: each layer is quantized at every
   width (with the configured scheme, clipping and rounding), its cost is the entropy of its codes plus its
   scales, its error is its Hessian output error scaled by its measured sensitivity, and the Lagrangian path from
   all-widest to all-narrowest is cut at the mean width ``budget`` or bisected for the fewest bytes whose
   ``metric`` drop stays within ``max_drop`` on the calibration data. The chosen widths are in the records.

Records, one per layer: layer, weight, bits, scheme, granularity, rounding, clip, storage, ``weight_err``
(``||W - W'|| / ||W||``), ``output_err`` (``trace(dW H dW^T) / trace(W H W^T)`` when the layer has a Hessian, else
None), with GPTQ also ``output_err_nearest`` (the same grid rounded to nearest), and bytes before/after.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
import onnx.defs
import onnx_graphsurgeon as gs
from tqdm import tqdm

from onnxcomp.calibration.hessian import RETARGET_FOLDS, LayerHessian, collect_hessians, supports
from onnxcomp.codecs.stack import encoded_nbytes
from onnxcomp.emit.lowering import graph_tree, lowering_refusal
from onnxcomp.emit.onnx_packed import PACKED_NODE_BYTES
from onnxcomp.emit.onnx_standard import lower_dequantize, stored_bytes
from onnxcomp.errors import RecipeError
from onnxcomp.ir.graph_edit import is_standard, tensor_names
from onnxcomp.ir.model import Model
from onnxcomp.ir.opset import opset_refusal, set_opset
from onnxcomp.ir.weights import Weight, weight_table
from onnxcomp.measure.evaluator import FidelityBound
from onnxcomp.numerics import qscheme
from onnxcomp.numerics.obs import DAMP, compensate
from onnxcomp.numerics.qscheme import QScheme
from onnxcomp.numerics.retarget import layer_output_error, retarget
from onnxcomp.passes.base import Pass, PassContext, PassResult, Requirement
from onnxcomp.passes.width_search import WidthConfig, matches, search_widths

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_DQ_OPSET, _DQ_AXIS_OPSET, _DQ_FLOAT16_OPSET = 10, 13, 19


@dataclass(frozen=True)
class QuantizeWeightsConfig(WidthConfig):
    bits: int | Literal["auto"] = 8  # auto: a width per layer (rule 7)
    scheme: Literal["symmetric", "asymmetric", "auto"] = "symmetric"
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"
    rounding: Literal["nearest", "gptq"] = "nearest"
    clip: Literal["none", "mse"] = "mse"  # MSE-optimal range per channel/tensor (qscheme)
    exclude: tuple[str, ...] = ()  # layer/weight name globs left float
    min_elements: int = 256
    damp: float = DAMP  # GPTQ/retarget dampening, relative to mean(diag H)
    act_order: bool = True  # GPTQ: columns by decreasing diag(H)
    sequential: bool = False  # layer by layer on already-quantized inputs, re-targeted to the original outputs
    opset: int = 0  # raise the default opset to at least this when safe (21: int4 storage, 25: int2); 0: as needed

    def __post_init__(self) -> None:
        self.check_widths()
        for name, allowed in (
            ("scheme", ("symmetric", "asymmetric", "auto")),
            ("granularity", ("per_channel", "per_tensor")),
            ("rounding", ("nearest", "gptq")),
            ("clip", qscheme.CLIP_SEARCHES),
        ):
            if getattr(self, name) not in allowed:
                raise RecipeError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if isinstance(self.min_elements, bool) or not isinstance(self.min_elements, int) or self.min_elements < 0:
            raise RecipeError(f"min_elements must be an integer >= 0, got {self.min_elements!r}")
        if not (isinstance(self.damp, (int, float)) and 0 < self.damp < 1):
            raise RecipeError(f"damp must be a number in (0, 1), got {self.damp!r}")
        if (
            isinstance(self.opset, bool)
            or not isinstance(self.opset, int)
            or not (self.opset == 0 or _DQ_OPSET <= self.opset <= onnx.defs.onnx_opset_version())
        ):
            raise RecipeError(
                f"opset must be 0 or an ai.onnx opset from {_DQ_OPSET} to "
                f"{onnx.defs.onnx_opset_version()}, got {self.opset!r}"
            )


@dataclass
class _Plan:
    """One weight to quantize and what its lowering needs."""

    weight: Weight
    bits: int
    axis: int | None  # output-channel axis for per-channel scales, None per tensor
    original: np.ndarray

    @property
    def opset(self) -> int:
        """The lowest default opset whose DequantizeLinear can hold this weight."""
        need = _DQ_AXIS_OPSET if self.axis is not None else _DQ_OPSET
        return max(need, _DQ_FLOAT16_OPSET) if self.original.dtype == np.float16 else need


@dataclass
class _Quantized:
    """The decision for one weight: codes, grid and the errors to report."""

    scheme: QScheme
    q: np.ndarray  # int32 codes, W's shape
    scale: np.ndarray
    zero_point: np.ndarray
    values: np.ndarray  # dequantized, W's dtype (bit-identical to DequantizeLinear's output)
    rounding: str
    output_err: float | None
    output_err_nearest: float | None = None


class QuantizeWeights(Pass):
    name = "quantize_weights"
    Config = QuantizeWeightsConfig
    description = "weight-only integer quantization + DequantizeLinear (round-to-nearest or GPTQ)"

    def requirements(self) -> list[Requirement]:
        return self.config.width_requirements()

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        cfg = self.config
        result = PassResult(modified=False)
        planned = PassResult(modified=False)  # the skip reasons of the planning that is kept
        plans, converted = self._settle_opset(model, self._plans(model, planned), result)
        if converted:  # the model was converted to a newer opset: its weights are new objects
            planned = PassResult(modified=False)
            plans, _ = self._settle_opset(model, self._plans(model, planned), result)
        result.skipped[:0] = planned.skipped

        calibrated = ctx.calibration is not None
        wants_hessian = cfg.rounding == "gptq" or cfg.scheme == "auto" or cfg.sequential
        if plans and not calibrated:
            if cfg.rounding == "gptq":
                result.skipped.append(("gptq", "no calibration data: weights rounded to nearest"))
            if cfg.sequential:
                result.skipped.append(("sequential", "no calibration data: layers are not re-targeted"))
        # Layer inputs are captured from the main graph: a kernel used once, there, can have a Hessian.
        main = {id(n) for n in model.graph.nodes}
        measurable = {
            p.weight.name
            for p in plans
            if not p.weight.shared and id(p.weight.primary.node) in main and supports(p.weight)
        }
        to_allocate = [p for p in plans if not p.bits]
        reference = model.copy() if calibrated and wants_hessian and cfg.sequential and plans else None
        # Hessians of the unmodified model: for the rounding (unless sequential) and for the width search.
        hessians: dict[str, LayerHessian] = {}
        if calibrated and plans and ((wants_hessian and reference is None) or to_allocate):
            hessians = collect_hessians(
                model, [p.weight for p in plans if p.weight.name in measurable], ctx.calibration
            )
        allocated = self._allocate(model, to_allocate, ctx, result, hessians)
        if reference is not None or not wants_hessian:
            hessians = {}  # sequential: each layer's comes from the partly quantized model

        decided = []
        for plan in tqdm(
            plans, desc="quantize", unit="layer", leave=False, file=sys.stderr, disable=None if ctx.progress else True
        ):
            w = plan.weight
            target = plan.original.astype(np.float64)
            hessian = None
            if reference is not None and w.name in measurable:
                hessian = collect_hessians(model, [w], ctx.calibration, reference=reference,
                                           folds=RETARGET_FOLDS).get(w.name)
                if hessian is not None:
                    target = hessian.from_matrix(retarget(hessian, hessian.to_matrix(target), cfg.damp))
            else:
                hessian = hessians.get(w.name)
            if cfg.rounding == "gptq" and calibrated and hessian is None:
                if w.shared:
                    why = f"shared by {len(w.uses)} nodes"
                elif id(w.primary.node) not in main:
                    why = "inside a subgraph"
                else:
                    why = f"no input Hessian for {w.primary.op}"
                result.skipped.append((w.name, f"gptq skipped: {why} (rounded to nearest)"))
            chosen = self._quantize(plan, target, hessian)
            w.set(chosen.values)  # later layers (sequential) see the quantized values
            decided.append((plan, chosen))

        names = tensor_names(model.graphs())
        owner, parent = graph_tree(model)
        for plan, chosen in decided:
            result.records.append(_lower(model, plan, chosen, cfg, names, owner, parent))
            result.modified = True
        if result.records:
            kinds = sorted({f"W{r['bits']} {r['scheme'][:4]} {r['rounding']}" for r in result.records})
            before = sum(r["bytes_before"] for r in result.records)
            after = sum(r["bytes_after"] for r in result.records)
            result.summary = (
                f"quantized {len(result.records)} weights ({', '.join(kinds)}): {before:,} B -> {after:,} B"
            )
        else:
            result.summary = "no weight quantized"
        if allocated:
            result.summary += f"; {allocated}"
        if converted:
            result.summary += f"; {converted}"
        return result

    def _allocate(self, model: Model, plans: list[_Plan], ctx: PassContext, result: PassResult,
                  hessians: dict[str, LayerHessian]) -> str:
        """Rule 7: set the width of every plan not fixed by ``bits``/``bits_per_layer``; a summary line."""
        if not plans:
            return ""
        cfg = self.config
        by_name = {p.weight.name: p for p in plans}

        def candidate(w: Weight, array: np.ndarray, bits: int, h: LayerHessian | None,
                      _ctx: PassContext) -> tuple[np.ndarray, float]:
            found = self._quantize(_Plan(w, bits, by_name[w.name].axis, array), array.astype(np.float64), h)
            params = found.scale.size * array.itemsize + (0 if found.scheme.symmetric else found.zero_point.size)
            # stored as ONNX integers, or packed by pack_weights when its cheapest stack (Huffman tables and
            # headers included) is smaller: the real bytes, so that a budget compares like with like
            elem = qscheme.storage_type(bits, found.scheme.symmetric, model.opset)
            codes = found.q.astype(np.int8 if found.q.min() < 0 else np.uint8)
            packed = encoded_nbytes(codes) + PACKED_NODE_BYTES
            return found.values, min(stored_bytes(codes.size, elem), packed) + params

        chosen, summary = search_widths(model, [(p.weight, p.original) for p in plans], ctx, result, cfg.choices,
                                        candidate, FidelityBound(cfg.metric, cfg.max_drop), cfg.budget, hessians)
        for p in plans:
            p.bits = chosen[p.weight.name]
        return summary

    # -- which weights, and at which opset ------------------------------------------------------------------
    def _plans(self, model: Model, result: PassResult) -> list[_Plan]:
        return [p for w in weight_table(model) if (p := self._plan(model, w, result)) is not None]

    def _plan(self, model: Model, w: Weight, result: PassResult) -> _Plan | None:
        cfg = self.config
        reason = _refusal(model, w, cfg)
        if reason is not None:
            result.skipped.append((w.name, reason))
            return None
        layout = w.layout
        axis = None
        if cfg.granularity == "per_channel" and layout is not None and layout.out_axis is not None and len(w.shape):
            axis = layout.out_axis
        return _Plan(w, cfg.fixed_bits(w) or 0, axis, w.array)  # 0: allocated by _allocate (rule 7)

    def _settle_opset(self, model: Model, plans: list[_Plan], result: PassResult) -> tuple[list[_Plan], str]:
        """Raise the default opset to what the plans (and ``opset``) need when that is safe, else convert the
        model with onnx's version converter (then the second item says so and the plans must be made again);
        drop what cannot be lowered at the opset the model keeps."""
        current = model.opset
        wanted = max([self.config.opset, *(p.opset for p in plans)]) if plans else current
        if wanted > current:
            refusal = opset_refusal(model, wanted)
            if refusal is None:
                set_opset(model, wanted)
                current = wanted
            else:
                failure = model.convert_opset(wanted)
                if failure is None:
                    return [], f"opset {current} -> {wanted} by onnx.version_converter (raising it {refusal})"
                result.skipped.append(("opset", f"kept at {current}: raising it to {wanted} {refusal}, and "
                                                f"onnx.version_converter failed: {failure}"))
        kept = []
        for p in plans:
            if p.opset <= current:
                kept.append(p)
                continue
            what = (
                "float16 scales"
                if p.original.dtype == np.float16 and p.opset == _DQ_FLOAT16_OPSET
                else ("per-axis scales" if p.axis is not None else "DequantizeLinear")
            )
            result.skipped.append((p.weight.name, f"{what} need ai.onnx opset {p.opset}; the model has {current}"))
        return kept, ""

    # -- the values -------------------------------------------------------------------------------------------
    def _quantize(self, plan: _Plan, target: np.ndarray, hessian: LayerHessian | None) -> _Quantized:
        cfg = self.config
        kinds = (True, False) if cfg.scheme == "auto" else (cfg.scheme == "symmetric",)
        best = None
        for symmetric in kinds:
            scheme = QScheme(plan.bits, symmetric, plan.axis is not None)
            found = self._quantize_as(plan, target, hessian, scheme)
            if best is None or _score(found, target) < _score(best, target):
                best = found
        return best

    def _quantize_as(
        self, plan: _Plan, target: np.ndarray, hessian: LayerHessian | None, scheme: QScheme
    ) -> _Quantized:
        cfg = self.config
        axis = plan.axis or 0
        importance = None
        if hessian is not None:
            diag = np.stack([np.diag(h) for h in hessian.H])[:, None, :]  # (groups, 1, d)
            importance = hessian.from_matrix(np.broadcast_to(diag, hessian.to_matrix(target).shape).copy())
        scale, zp = qscheme.qparams(target, scheme, axis, cfg.clip, importance, dtype=plan.original.dtype)
        q = qscheme.quantize(target, scale, zp, scheme.bits, scheme.symmetric, axis)
        rounding, err_nearest = "nearest", None
        if cfg.rounding == "gptq" and hessian is not None:
            err_nearest = layer_output_error(hessian, target, qscheme.dequantize(q, scale, zp, axis))
            swept = _gptq(hessian, target, scale, zp, scheme, cfg.damp, cfg.act_order)
            q = qscheme.quantize(swept, scale, zp, scheme.bits, scheme.symmetric, axis)
            rounding = "gptq"
        values = qscheme.dequantize(q, scale, zp, axis).astype(plan.original.dtype)
        err = layer_output_error(hessian, target, values) if hessian is not None else None
        return _Quantized(scheme, q, scale, zp, values, rounding, err, err_nearest)


def _score(found: _Quantized, target: np.ndarray) -> float:
    """What ``auto`` compares: the output error when there is a Hessian, else the weight MSE."""
    if found.output_err is not None:
        return found.output_err
    return float(np.sum((found.values.astype(np.float64) - target) ** 2))


def _gptq(
    h: LayerHessian,
    target: np.ndarray,
    scale: np.ndarray,
    zp: np.ndarray,
    scheme: QScheme,
    damp: float,
    act_order: bool,
) -> np.ndarray:
    """GPTQ rounding of ``target`` (ONNX layout) on the fixed grid: the grid values it chose, float64."""
    W = h.to_matrix(target)  # (groups, rows, d); row (g, r) is output channel g * rows + r
    groups, rows, d = W.shape
    s = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (groups * rows,)).reshape(groups, rows)
    z = np.broadcast_to(np.asarray(zp, np.float64).reshape(-1), (groups * rows,)).reshape(groups, rows)
    binary = scheme.symmetric and scheme.bits == 1
    out = np.empty_like(W)
    for g in range(groups):
        H = h.H[g]
        order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(d)

        def nearest(col: np.ndarray, _j: int, s=s[g], z=z[g]) -> np.ndarray:
            return qscheme.snap(col, s, z, scheme.qmin, scheme.qmax, binary)

        out[g][:, order] = compensate(W[g][:, order], H[np.ix_(order, order)], nearest, damp)
    return h.from_matrix(out)


# -- refusals and the opset ----------------------------------------------------------------------------------
def _refusal(model: Model, w: Weight, cfg: QuantizeWeightsConfig) -> str | None:
    qdq = next((u.node for u in w.uses if is_standard(u.node, *_QDQ_OPS)), None)
    if qdq is not None:
        return f"already feeds a {qdq.op}"
    if w.role != "weight":
        return f"{w.role} tensor: only layer kernels are quantized"
    excluded = next((p for p in cfg.exclude if matches(w, p)), None)
    if excluded is not None:
        return f"excluded by name (pattern {excluded!r})"
    if w.size < cfg.min_elements:
        return f"{w.size} elements < min_elements {cfg.min_elements}"
    array = w.array
    if array.dtype == np.float64:
        return "float64 tensor: DequantizeLinear outputs float32 or float16"
    if not np.all(np.isfinite(array)):
        return "holds NaN or infinity"
    return lowering_refusal(model, w)


# -- the record ---------------------------------------------------------------------------------------------
def _lower(model: Model, plan: _Plan, chosen: _Quantized, cfg: QuantizeWeightsConfig, names: set[str],
           owner: dict[int, gs.Graph], parent: dict[int, gs.Graph | None]) -> dict[str, Any]:
    """Rule 5 by the standard ONNX emitter; the layer's record."""
    w, scheme = plan.weight, chosen.scheme
    name, layer = w.name, w.layer  # before the Constant node that may hold the weight is detached
    zero_point = None if scheme.symmetric else chosen.zero_point
    elem, after = lower_dequantize(model, w, chosen.q, chosen.scale, zero_point, plan.axis, scheme.bits,
                                   scheme.symmetric, names, owner, parent)
    original = plan.original.astype(np.float64)
    norm = float(np.linalg.norm(original))
    diff = float(np.linalg.norm(original - chosen.values.astype(np.float64)))
    return {
        "layer": layer,
        "weight": name,
        "bits": scheme.bits,
        "scheme": "symmetric" if scheme.symmetric else "asymmetric",
        "granularity": "per_channel" if plan.axis is not None else "per_tensor",
        "rounding": chosen.rounding,
        "clip": cfg.clip,
        "storage": onnx.TensorProto.DataType.Name(elem).lower(),
        "weight_err": diff / norm if norm > 0 else 0.0,
        "output_err": chosen.output_err,
        "output_err_nearest": chosen.output_err_nearest,
        "bytes_before": int(plan.original.nbytes),
        "bytes_after": after,
    }
