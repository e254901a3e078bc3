"""Store compressed weights exactly in their cheapest form: a codebook Gather for stock onnxruntime, or packed blobs.

Earlier passes decide the *values* (pruning leaves exact zeros, weight sharing at most ``2**bits`` levels); this
pass decides how they are *stored*, exactly. Two formats:

- ``standard`` (any ONNX runtime, no custom op): a weight with at most 256 distinct values becomes
  ``W = Gather(codebook, Cast(indices, int32), axis=0)`` with ``codebook`` the k distinct floats and ``indices``
  a uint8 tensor of W's shape (UINT4 when k <= 16 and the model's opset is >= 21), so W keeps its name, shape and
  consumers. Gather copies, so W is bit-identical; onnxruntime folds the two nodes into a float initializer at
  load. Size: one byte (or half) per element instead of four.
- ``packed``: ``W = ai.onnxcomp.DecodeWeight(blob)`` with ``blob`` the uint8 serialisation of the cheapest exact
  codec stack (:mod:`onnxcomp.codecs.stack`: CSR relative indices with filler zeros, codebook indices, Huffman),
  expanded into a float initializer once at load by :mod:`onnxcomp.runtime` (or ``onnxcomp unpack``).
This pass chooses which weights are lowered and how; the lowerings themselves are the emitters'
(:mod:`onnxcomp.emit.onnx_standard`, :mod:`onnxcomp.emit.onnx_packed`).
  The int8/uint8 codes of quantized weights (``quantize_weights``: ``DequantizeLinear(W_quantized, scale, zp)``)
  are packed the same way: 3-bit codes held in int8 take 3 bits (bit-packed codebook indices) or fewer (Huffman),
  and DecodeWeight gives back the exact int8/uint8 tensor that DequantizeLinear reads.

Rules:
1. Only layer kernels (weight-table role ``weight``) of at least ``min_elements`` elements are considered.
2. A weight is lowered only when all its uses are standard-domain nodes in one graph (a shared weight is
   lowered once, for all of them) and it is not a graph output; otherwise it is skipped with the reason.
3. ``standard`` refuses weights with more than 256 distinct values (they stay float, with the reason recorded);
   ``packed`` refuses weights whose blob is not smaller than the float tensor.
4. The weight's tensor name survives: it becomes the output of the Gather / DecodeWeight node, which is placed
   first in the graph (or where the Constant node that held the weight was).
5. ``packed`` also lowers integer constants read only as the quantized input (slot 0) of DequantizeLinear
   nodes, under rules 1-4 (at least ``min_elements`` codes, one graph, not a graph output) and only when the blob
   is smaller than the stored tensor; int4/int2 codes (opset 21/25 storage) are packed as the int8/uint8 of the
   same values, which DequantizeLinear reads the same, when the blob beats their 4 or 2 bits (2- and 3-bit codes
   in int4 storage, Huffman-skewed codes).
   ``standard`` leaves all integer codes as they are: DequantizeLinear is standard ONNX.

6. ``half`` (both formats): a float32/float64 layer parameter (weight-table role ``weight`` or ``bias``, which
   includes the vector an Add puts on a MatMul's output) that was not lowered above and whose every value is
   exactly a float16 (``share_weights`` rounds the biases of the layers it shares so, ``bias_dtype``) is stored
   as a float16 initializer behind ``Cast``, under its own name; only when that saves more than the Cast node
   costs (``_CAST_BYTES``). Lossless, and standard ONNX (onnxruntime folds the Cast at load).

7. ``sparse`` (speed, not size): a main-graph Conv/Gemm/MatMul whose kernel is used once becomes one of
   onnxcomp's compute ops (``SparseConv``, ``SparseGemm``, ``CodebookGemm``, ``SparseCodebookGemm``, a following
   Relu fused; :mod:`onnxcomp.emit.onnx_sparse`) only where that op is measured at least ``min_speedup`` times
   faster than the dense node on this CPU, both alone at the layer's input shape (batch ``probe_batch``), with
   onnxcomp's native library; the others stay dense (the reason and both timings are in ``skipped``). Each op
   carries a model-local function with the dense equivalent, so the file also runs in stock onnxruntime. The
   whole model must then measure ``min_speedup`` faster too, else every layer stays dense (a note says why).
   Without the native library nothing is lowered (a note says why and how to get it).

Each lowered weight gives a record: layer, weight, format, encoding, bytes before/after, bytes by section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnxcomp.analysis.cost import tensor_shapes
from onnxcomp.codecs.stack import dense_codebook, exactly_float16
from onnxcomp.emit import onnx_sparse
from onnxcomp.emit.lowering import graph_tree, lowering_refusal
from onnxcomp.emit.onnx_packed import PACKED_CODES, lower_packed
from onnxcomp.emit.onnx_standard import CAST_BYTES, lower_codebook, lower_half
from onnxcomp.errors import OnnxcompError, PassError, RecipeError
from onnxcomp.ir.graph_edit import is_standard, node_label, tensor_names
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import NARROW_INTS, Weight, dequantized_codes, stored_nbytes, weight_table
from onnxcomp.kernels import library
from onnxcomp.measure.latency import benchmark
from onnxcomp.passes.base import Pass, PassContext, PassResult, check_number

_HALF_ROLES = ("weight", "bias")


@dataclass(frozen=True)
class PackConfig:
    format: Literal["packed", "standard", "sparse"] = "packed"
    min_elements: int = 1024
    huffman: bool = True  # packed: allow Huffman coding of indices and gaps
    sparse: bool = True  # packed: allow the CSR relative-index format
    half: bool = True  # float parameters whose values are all exact float16s stored as float16 + Cast (rule 6)
    probe_batch: int = 1  # sparse: the batch each layer is timed at, dense against its compute op (rule 7)
    min_speedup: float = 1.05  # sparse: a layer becomes a compute op only when measured at least this much faster

    def __post_init__(self) -> None:
        if self.format not in ("packed", "standard", "sparse"):
            raise RecipeError(f"format must be 'packed', 'standard' or 'sparse', got {self.format!r}")
        check_number("probe_batch", self.probe_batch, minimum=1, integer=True)
        check_number("min_speedup", self.min_speedup, minimum=0, open_min=True)
        if isinstance(self.min_elements, bool) or not isinstance(self.min_elements, int) or self.min_elements < 1:
            raise RecipeError(f"min_elements must be an integer >= 1, got {self.min_elements!r}")


class PackWeights(Pass):
    name = "pack_weights"
    Config = PackConfig
    description = "store layer weights in their cheapest exact encoding (codebook Gather or packed blobs)"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        cfg: PackConfig = self.config
        result = PassResult(modified=False)
        names = tensor_names(model.graphs())
        owner, parent = graph_tree(model)
        if cfg.format == "sparse":
            _lower_sparse_layers(model, cfg, names, result)
            owner, parent = graph_tree(model)
        todo = [] if cfg.format == "sparse" else [(w, False) for w in weight_table(model) if w.role == "weight"]
        if cfg.format == "packed":
            todo += [(w, True) for w in dequantized_codes(model)]
        for w, codes in todo:
            reason = _refusal(model, w, owner, cfg.min_elements, codes=codes)
            if reason is None:
                record_or_reason = (_standard(model, w, names, owner, parent) if cfg.format == "standard"
                                    else _packed(w, cfg, names, owner, parent))
                if isinstance(record_or_reason, dict):
                    result.records.append(record_or_reason)
                    result.modified = True
                    continue
                reason = record_or_reason
            result.skipped.append((w.name, reason))
        if cfg.half:
            for w in weight_table(model):
                if w.role in _HALF_ROLES and _refusal(model, w, owner, 1) is None:
                    record = _half(w, names, owner, parent)
                    if record is not None:
                        result.records.append(record)
                        result.modified = True
        before = sum(r["bytes_before"] for r in result.records)
        after = sum(r["bytes_after"] for r in result.records)
        result.summary = (f"{len(result.records)} weights {cfg.format}: {before:,} B -> {after:,} B"
                          if result.records else f"no weight {cfg.format}")
        return result


def _lower_sparse_layers(model: Model, cfg: PackConfig, names: set[str], result: PassResult) -> None:
    """Rule 7: each Conv/Gemm/MatMul whose compute op measures faster on this CPU becomes that op, and the whole
    model too must measure faster: a layer faster alone can slow the model down (onnxruntime's dense convolutions
    keep a blocked memory layout across layers that each compute op interrupts; MobileNetV2 at 90%: 35 layers each
    faster alone, the model 0.57x)."""
    missing = library.absent_reason()
    if missing is not None:
        result.notes.append(f"format sparse: every layer stays dense: {missing}")
        return
    try:
        shapes = tensor_shapes(model, batch=cfg.probe_batch)
    except PassError as e:
        result.notes.append(f"format sparse: every layer stays dense: no input shapes to time layers at ({e})")
        return
    trial = model.copy()
    trial_result = PassResult(modified=False)
    _lower_probed(trial, cfg, tensor_names(trial.graphs()), trial_result, shapes, None)
    if not trial_result.records:
        result.skipped += trial_result.skipped
        return
    feed = {t.name: np.random.default_rng(0).standard_normal(shapes[t.name]).astype(np.float32)
            for t in model.graph.inputs if t.name in shapes}
    try:
        dense_ms, sparse_ms = (r.median_ms for r in benchmark([model.to_proto(), trial.to_proto()], feed, rounds=15))
    except OnnxcompError as e:
        result.notes.append(f"format sparse: every layer stays dense: the whole model could not be timed ({e})")
        return
    whole = f"whole model {sparse_ms:.3f} ms with compute ops vs dense {dense_ms:.3f} ms"
    if dense_ms / max(sparse_ms, 1e-9) < cfg.min_speedup:
        result.notes.append(f"format sparse: every layer stays dense: {whole} ({len(trial_result.records)} layers "
                            "were faster alone)")
        result.skipped += trial_result.skipped
        return
    accepted = {r["weight"] for r in trial_result.records}
    _lower_probed(model, cfg, names, result, shapes, {r["weight"]: r for r in trial_result.records})
    result.notes.append(f"format sparse: {len(accepted)} layers as compute ops: {whole}")


def _lower_probed(model: Model, cfg: PackConfig, names: set[str], result: PassResult, shapes: dict,
                  decided: dict[str, dict] | None) -> None:
    """Lower every layer whose probe says so, or (``decided``) exactly the layers of an earlier trial's records."""
    for w in weight_table(model):
        if w.role != "weight" or not w.uses or any(id(u.node) not in {id(n) for n in model.graph.nodes}
                                                   for u in w.uses):
            continue
        node = w.primary.node
        if node.op not in ("Conv", "Gemm", "MatMul") or w.primary.slot != 1:
            continue
        reason = _refusal(model, w, {id(n): model.graph for n in model.graph.nodes}, cfg.min_elements)
        found = reason or (f"shared by {len(w.uses)} nodes" if w.shared else None) or onnx_sparse.candidate(
            model.graph, node, w)
        if isinstance(found, str):
            result.skipped.append((w.name, f"stays dense: {found}"))
            continue
        if not library.provides(found.name):
            result.skipped.append((w.name, f"stays dense: the native library has no {found.name} kernel"))
            continue
        if decided is not None:
            if w.name in decided:
                onnx_sparse.lower_sparse(model, model.graph, found, names)
                result.records.append(decided[w.name])
                result.modified = True
            continue
        shape = shapes.get(node.inputs[0].name)
        if shape is None:
            result.skipped.append((w.name, "stays dense: its input's shape is unknown"))
            continue
        dense_s, sparse_s = onnx_sparse.probe(found, tuple(shape), model.opset)
        speedup = dense_s / max(sparse_s, 1e-12)
        density = float(np.count_nonzero(found.matrix)) / max(found.matrix.size, 1)
        timing = f"{found.name} {sparse_s * 1e3:.3f} ms vs dense {dense_s * 1e3:.3f} ms ({speedup:.2f}x)"
        if speedup < cfg.min_speedup:
            result.skipped.append((w.name, f"stays dense: {timing} at {1 - density:.0%} sparsity"))
            continue
        where, before = _where(w), int(w.array.nbytes)
        arrays = onnx_sparse.operands(found, model.opset)
        onnx_sparse.lower_sparse(model, model.graph, found, names)
        after = sum(stored_nbytes(a.dtype, a.size) for a in arrays)
        record = _record(where, before, "sparse", timing, {"operands": after})
        record.update(sparsity=round(1 - density, 4), speedup=round(speedup, 2))
        result.records.append(record)
        result.modified = True


def _refusal(model: Model, w: Weight, owner: dict, min_elements: int, codes: bool = False) -> str | None:
    """Rules 1, 2 and 5: why ``w`` is not lowered, or None."""
    if w.size < min_elements:
        return f"{w.size} elements, below min_elements {min_elements}"
    if codes:
        other = next((u for u in w.uses if not (is_standard(u.node, "DequantizeLinear") and u.slot == 0)), None)
        if other is not None:
            return f"integer tensor also read by {node_label(other.node)} (input {other.slot})"
        if np.dtype(w.tensor.dtype) not in PACKED_CODES and np.dtype(w.tensor.dtype).name not in NARROW_INTS:
            return f"{np.dtype(w.tensor.dtype)} codes are kept as they are (packed blobs hold integer codes)"
    graphs = {id(owner.get(id(u.node))) for u in w.uses}
    if w.producer is not None:
        graphs.add(id(owner.get(id(w.producer))))
    if len(graphs) != 1 or id(None) in graphs:
        return "used in several graphs (subgraph and outer scope)"
    return lowering_refusal(model, w)


def _standard(model: Model, w: Weight, names: set[str], owner: dict, parent: dict) -> dict | str:
    found = dense_codebook(w.array)
    if found is None:
        return "more than 256 distinct values: stays float (standard format stores at most 256 levels)"
    book, index = found
    where, before = _where(w), int(w.array.nbytes)
    encoding, sections = lower_codebook(model, w, book, index, names, owner, parent)
    return _record(where, before, "standard", encoding, sections)


def _packed(w: Weight, cfg: PackConfig, names: set[str], owner: dict, parent: dict) -> dict | str:
    where = _where(w)
    lowered = lower_packed(w, names, owner, parent, allow_sparse=cfg.sparse, allow_huffman=cfg.huffman)
    if isinstance(lowered, str):
        return lowered
    enc, stored = lowered
    return _record(where, stored, "packed", enc.describe(), enc.bytes_by_section())


def _half(w: Weight, names: set[str], owner: dict, parent: dict) -> dict | None:
    """Rule 6, or None when the tensor is not float32/64, not exactly float16, or too small to gain."""
    values = w.array
    if not exactly_float16(values) or values.nbytes - 2 * values.size <= CAST_BYTES:
        return None
    where = _where(w)
    after = lower_half(w, values, names, owner, parent)
    return _record(where, int(values.nbytes), "float16", "float16 + Cast", {}, after=after)


def _where(w: Weight) -> tuple[str, str]:
    """The report's layer and weight names, read before the lowering detaches anything."""
    layer = w.layer
    if np.dtype(w.tensor.dtype).kind != "f":  # quantized codes: the layer reads the DequantizeLinear's output
        readers = w.primary.node.outputs[0].outputs if w.primary.node.outputs else []
        layer = node_label(readers[0]) if readers else layer
    return layer, w.name


def _record(where: tuple[str, str], before: int, fmt: str, encoding: str, sections: dict[str, int],
            after: int | None = None) -> dict:
    """``sections``: the bytes of the stored form by section (``after`` defaults to their sum)."""
    after = int(sum(sections.values()) if after is None else after)
    return {"layer": where[0], "weight": where[1], "format": fmt, "encoding": encoding, "bytes_before": before,
            "bytes_after": after, "ratio": round(before / max(after, 1), 2), "sections": dict(sections)}
