"""Lower compressed weights to ONNX: a codebook Gather for stock onnxruntime, or packed blobs decoded at load.

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

Each lowered weight gives a record: layer, weight, format, encoding, bytes before/after, bytes by section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnxcomp.kernels import schema

from onnxcomp.codecs.stack import dense_codebook, encode_weight, exactly_float16, to_blob
from onnxcomp.graph_edit import (
    detach,
    is_graph_output,
    is_standard,
    node_label,
    replace_uses,
    tensor_names,
    unique_name,
)
from onnxcomp.model import Model
from onnxcomp.pipeline import Pass, PassContext, PassResult
from onnxcomp.weights import NARROW_INTS, Use, Weight, is_integer_dtype, stored_nbytes, values_of, weight_table

_UINT4_OPSET = 21  # Cast from UINT4 (and UINT4 tensors in general) is ai.onnx opset 21
_PACKED_CODES = (np.int8, np.uint8)  # integer codes the packed format stores (stack.py's integer dtypes)
_CAST_BYTES = 32  # about what a Cast node and its float16 initializer's header add to the file (rule 6)
_HALF_ROLES = ("weight", "bias")


@dataclass(frozen=True)
class PackConfig:
    format: Literal["packed", "standard"] = "packed"
    min_elements: int = 1024
    huffman: bool = True  # packed: allow Huffman coding of indices and gaps
    sparse: bool = True  # packed: allow the CSR relative-index format
    half: bool = True  # float parameters whose values are all exact float16s stored as float16 + Cast (rule 6)

    def __post_init__(self) -> None:
        if self.format not in ("packed", "standard"):
            raise ValueError(f"format must be 'packed' or 'standard', got {self.format!r}")
        if self.min_elements < 1:
            raise ValueError(f"min_elements must be at least 1, got {self.min_elements}")


class PackWeights(Pass):
    name = "pack_weights"
    Config = PackConfig
    description = "store layer weights in their cheapest exact encoding (codebook Gather or packed blobs)"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        cfg: PackConfig = self.config
        result = PassResult(modified=False)
        names = tensor_names(model.graphs())
        owner = {id(n): g for g in model.graphs() for n in g.nodes}
        lower = _lower_standard if cfg.format == "standard" else _lower_packed
        todo = [(w, False) for w in weight_table(model) if w.role == "weight"]
        if cfg.format == "packed":
            todo += [(w, True) for w in _quantized_codes(model)]
        for w, codes in todo:
            reason = _refusal(w, owner, cfg.min_elements, codes=codes)
            if reason is None:
                record_or_reason = lower(model, owner[id(w.uses[0].node)], w, cfg, names)
                if isinstance(record_or_reason, dict):
                    result.records.append(record_or_reason)
                    result.modified = True
                    continue
                reason = record_or_reason
            result.skipped.append((w.name, reason))
        if cfg.half:
            for w in weight_table(model):
                if w.role in _HALF_ROLES and _refusal(w, owner, 1) is None:
                    record = _lower_half(owner[id(w.uses[0].node)], w, names)
                    if record is not None:
                        result.records.append(record)
                        result.modified = True
        before = sum(r["bytes_before"] for r in result.records)
        after = sum(r["bytes_after"] for r in result.records)
        result.summary = (f"{len(result.records)} weights {cfg.format}: {before:,} B -> {after:,} B"
                          if result.records else f"no weight {cfg.format}")
        return result


def _refusal(w: Weight, owner: dict[int, gs.Graph], min_elements: int, codes: bool = False) -> str | None:
    if w.size < min_elements:
        return f"{w.size} elements, below min_elements {min_elements}"
    if codes:
        other = next((u for u in w.uses if not (is_standard(u.node, "DequantizeLinear") and u.slot == 0)), None)
        if other is not None:
            return f"integer tensor also read by {node_label(other.node)} (input {other.slot})"
        if np.dtype(w.tensor.dtype) not in _PACKED_CODES and np.dtype(w.tensor.dtype).name not in NARROW_INTS:
            return f"{np.dtype(w.tensor.dtype)} codes are kept as they are (packed blobs hold integer codes)"
    graphs = {id(owner.get(id(u.node))) for u in w.uses}
    if w.producer is not None:
        graphs.add(id(owner.get(id(w.producer))))
    if len(graphs) != 1 or id(None) in graphs:
        return "used in several graphs (subgraph and outer scope)"
    graph = owner[id(w.uses[0].node)]
    outputs = w.producer.outputs[0] if w.producer is not None else w.tensor
    if is_graph_output(graph, outputs):
        return "the weight is a graph output"
    foreign = [u.node for u in w.uses if not is_standard(u.node)]
    if foreign:
        return f"read by a {foreign[0].domain}.{foreign[0].op} node, which may need a constant"
    return None


def _lower_standard(model: Model, graph: gs.Graph, w: Weight, cfg: PackConfig, names: set[str]) -> dict | str:
    values = w.array
    found = dense_codebook(values)
    if found is None:
        return "more than 256 distinct values: stays float (standard format stores at most 256 levels)"
    book, index = found
    uint4 = book.size <= 16 and model.opset >= _UINT4_OPSET
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
    record = _record(w, "standard", f"codebook(k={book.size}) {'uint4' if uint4 else 'uint8'} + Gather",
                     {"indices": index_bytes, "codebook": int(book.nbytes)})
    out, at = _take_weight_name(graph, w)
    gather = gs.Node("Gather", name=gather_name, inputs=[codebook, index32], outputs=[out], attrs={"axis": 0})
    graph.nodes[at:at] = [cast, gather]
    return record


def _lower_packed(model: Model, graph: gs.Graph, w: Weight, cfg: PackConfig, names: set[str]) -> dict | str:
    # int4/int2 codes are packed (and decoded) as the int8/uint8 of the same values: DequantizeLinear reads them alike
    dtype = np.dtype(w.tensor.dtype)
    values = values_of(w.tensor)
    stored = stored_nbytes(dtype, values.size)
    enc = encode_weight(values, allow_sparse=cfg.sparse, allow_huffman=cfg.huffman, name=w.name)
    if enc.nbytes >= stored:
        kind = "float" if dtype.kind == "f" else str(dtype)
        return f"packed blob ({enc.nbytes:,} B, {enc.describe()}) is not smaller than the {kind} tensor"
    blob = gs.Constant(unique_name(w.name + "_packed", names), to_blob(enc))
    attrs = {schema.DECODE_ATTR_SHAPE: list(enc.shape),
             schema.DECODE_ATTR_DTYPE: int(onnx.helper.np_dtype_to_tensor_dtype(values.dtype))}
    node_name = unique_name(w.name + "_decode", names)
    record = _record(w, "packed", enc.describe(), enc.bytes_by_section(), stored)
    out, at = _take_weight_name(graph, w, values.dtype)
    node = gs.Node(schema.DECODE_OP, name=node_name, domain=schema.DOMAIN, inputs=[blob], outputs=[out], attrs=attrs)
    graph.nodes.insert(at, node)
    return record


def _lower_half(graph: gs.Graph, w: Weight, names: set[str]) -> dict | None:
    """Rule 6, or None when the tensor is not float32/64, not exactly float16, or too small to gain."""
    values = w.array
    if not exactly_float16(values) or values.nbytes - 2 * values.size <= _CAST_BYTES:
        return None
    half = values.astype(np.float16)
    stored = gs.Constant(unique_name(w.name + "_f16", names), half)
    cast = gs.Node("Cast", name=unique_name(w.name + "_cast", names), inputs=[stored],
                   attrs={"to": int(onnx.helper.np_dtype_to_tensor_dtype(values.dtype))})
    record = _record(w, "float16", "float16 + Cast", {}, after=int(half.nbytes))
    out, at = _take_weight_name(graph, w)
    cast.outputs = [out]
    graph.nodes.insert(at, cast)
    return record


def _take_weight_name(graph: gs.Graph, w: Weight, dtype=None) -> tuple[gs.Variable, int]:
    """A variable under the weight's name that its consumers now read, and where its producer goes (rule 4)."""
    if w.producer is not None:  # a Constant node: its output variable (name, consumers) is kept
        out = w.producer.outputs[0]
        if dtype is not None:
            out.dtype = dtype
        at = next(i for i, n in enumerate(graph.nodes) if n is w.producer)
        detach(graph, w.producer)
        return out, at
    out = gs.Variable(w.tensor.name, dtype=dtype or w.array.dtype, shape=list(w.shape))
    replace_uses(w.tensor, out)
    return out, 0


def _record(w: Weight, fmt: str, encoding: str, sections: dict[str, int], stored: int | None = None,
            after: int | None = None) -> dict:
    """``sections``: the bytes of a packed blob by section (``after`` defaults to their sum)."""
    before = int(w.array.nbytes if stored is None else stored)
    after = int(sum(sections.values()) if after is None else after)
    layer = w.layer
    if np.dtype(w.tensor.dtype).kind != "f":  # quantized codes: the layer reads the DequantizeLinear's output
        readers = w.primary.node.outputs[0].outputs if w.primary.node.outputs else []
        layer = node_label(readers[0]) if readers else layer
    return {"layer": layer, "weight": w.name, "format": fmt, "encoding": encoding, "bytes_before": before,
            "bytes_after": after, "ratio": round(before / max(after, 1), 2), "sections": dict(sections)}


def _quantized_codes(model: Model) -> list[Weight]:
    """Integer constants (initializers or Constant nodes, any graph) that some DequantizeLinear reads as its
    quantized input, each once with all its uses (as :func:`~onnxcomp.weights.weight_table` lists floats)."""
    found: dict[int, Weight] = {}
    dequantized: set[int] = set()
    for graph in model.graphs():
        for node in graph.nodes:
            for slot, tensor in enumerate(node.inputs):
                producer = None
                if not isinstance(tensor, gs.Constant):
                    if len(tensor.inputs) != 1 or not is_standard(tensor.inputs[0], "Constant"):
                        continue
                    producer, tensor = tensor.inputs[0], tensor.inputs[0].attrs.get("value")
                    if not isinstance(tensor, gs.Constant):
                        continue
                if not is_integer_dtype(tensor.dtype):
                    continue
                entry = found.setdefault(id(tensor), Weight(tensor, producer, []))
                entry.uses.append(Use(node, slot))
                if slot == 0 and is_standard(node, "DequantizeLinear"):
                    dequantized.add(id(tensor))
    return [w for key, w in found.items() if key in dequantized]
