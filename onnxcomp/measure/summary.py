"""What a model is made of: op histogram, size by section, and a per-layer table of weights.

Sizes are real serialized bytes (``ByteSize`` of each protobuf part), not estimates:
- ``float weights``: float tensors in initializers and Constant nodes (the weight table);
- ``packed weights``: uint8 blobs read by ``ai.onnxcomp.DecodeWeight`` (codec stacks: CSR, codebook, Huffman);
- ``codebook indices``: narrow integer tensors (uint8, uint4, ...) that index a codebook through ``Gather``
  (directly or through a Cast);
- ``quantized tensors``: what Quantize/DequantizeLinear nodes read (integer weight codes, scales, zero points);
- ``other tensors``: other integer/bool tensors (shapes, indices);
- ``metadata``: model metadata_props and doc strings;
- ``graph``: everything else (nodes, names, value_info, opset imports).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.errors import CodecError
from onnxcomp.ir.graph_edit import is_standard, node_label
from onnxcomp.ir.model import Model
from onnxcomp.ir.proto import subgraphs, walk_tensors
from onnxcomp.ir.weights import stored_nbytes, values_of, weight_table
from onnxcomp.kernels import reference, schema
from onnxcomp.numerics import qscheme

SECTIONS = ("float weights", "packed weights", "codebook indices", "quantized tensors", "other tensors", "metadata",
            "graph")
_QDQ = ("QuantizeLinear", "DequantizeLinear")
# Narrow integer types written for codebook indices (regular Gather indices are int32/int64).
_INDEX_TYPES = {onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT4, onnx.TensorProto.INT4,
                onnx.TensorProto.INT8}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class LayerRow:
    layer: str
    op: str
    weight: str
    role: str
    shape: list[int]
    params: int
    bytes: int
    dtype: str
    sparsity: float
    bits: int | None = None  # bits per stored value: quantized codes, or a codebook of 2^bits nonzero values


def size_by_section(proto: onnx.ModelProto) -> dict[str, int]:
    sizes = dict.fromkeys(SECTIONS, 0)
    packed, indices, quantized = _encoded_tensor_names(proto.graph)
    for tensor in walk_tensors(proto.graph):
        if tensor.name in quantized and tensor.name not in packed:
            key = "quantized tensors"
        elif tensor.data_type in _FLOAT_TYPES:
            key = "float weights"
        else:
            key = ("packed weights" if tensor.name in packed else
                   "codebook indices" if tensor.name in indices and tensor.data_type in _INDEX_TYPES else
                   "other tensors")
        sizes[key] += _tensor_bytes(tensor)
    sizes["metadata"] = sum(p.ByteSize() for p in proto.metadata_props) + len(proto.doc_string.encode())
    total = proto.ByteSize() + sum(_external_bytes(t) for t in walk_tensors(proto.graph))
    sizes["graph"] = max(0, total - sum(sizes.values()))
    sizes["total"] = total
    return sizes


def _encoded_tensor_names(graph: onnx.GraphProto) -> tuple[set[str], set[str], set[str]]:
    """Names of the blobs DecodeWeight nodes read, of the tensors that index a Gather (maybe via a Cast), and of
    what Q/DQ nodes read."""
    packed, gather_indices, casts, quantized = set(), set(), {}, set()

    def walk(g: onnx.GraphProto) -> None:
        for node in g.node:
            if node.domain == schema.DOMAIN and node.op_type == schema.DECODE_OP:
                packed.update(node.input[:1])
            elif node.op_type in _QDQ and node.domain in ("", "ai.onnx"):
                quantized.update(node.input)
            elif node.op_type == "Gather" and len(node.input) > 1:
                gather_indices.add(node.input[1])
            elif node.op_type == "Cast" and node.input and node.output:
                casts[node.output[0]] = node.input[0]
            for sub in subgraphs(node):
                walk(sub)

    walk(graph)
    return packed, gather_indices | {casts[name] for name in gather_indices if name in casts}, quantized


def op_histogram(proto: onnx.ModelProto) -> dict[str, int]:
    counts: Counter[str] = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
            for sub in subgraphs(node):
                walk(sub)

    walk(proto.graph)
    return dict(counts.most_common())


def layer_rows(model: Model) -> list[LayerRow]:
    """One row per float weight, layer kernels first in graph order, then biases, norms and other constants."""
    rows = []
    for w in weight_table(model):
        values = w.array
        rows.append(LayerRow(
            layer=w.layer,
            op=w.primary.op if w.primary else "",
            weight=w.name,
            role=w.role,
            shape=list(values.shape),
            params=int(values.size),
            bytes=int(values.nbytes),
            dtype=str(values.dtype),
            sparsity=float(1.0 - np.count_nonzero(values) / values.size) if values.size else 0.0,
        ))
    rows += _encoded_rows(model)
    order = {"weight": 0, "bias": 1, "norm": 2, "other": 3}
    rows.sort(key=lambda r: order[r.role])
    return rows


def _encoded_rows(model: Model) -> list[LayerRow]:
    """Rows for weights stored encoded: a DecodeWeight blob, codebook indices gathered from a codebook, or integer
    codes read by a DequantizeLinear (maybe themselves packed in a blob).

    Params and sparsity come from the decoded values; bytes are what is stored (blob, indices + codebook, codes +
    scale + zero point).
    """
    rows = []
    for graph in model.graphs():
        for node in graph.nodes:
            decoded = _decoded(node)
            if decoded is None:
                continue
            values, stored, bits = decoded
            out = node.outputs[0]
            consumer = out.outputs[0] if out.outputs else node
            if _is_dequantize(consumer) and consumer.inputs[0] is out:
                continue  # packed integer codes: the DequantizeLinear's row covers them
            slot = next((i for i, t in enumerate(consumer.inputs) if t is out), 1)
            rows.append(LayerRow(
                layer=node_label(consumer),
                op=consumer.op,
                weight=out.name,
                role="weight" if slot == 1 else "bias" if slot == 2 else "other",
                shape=list(values.shape),
                params=int(values.size),
                bytes=sum(stored_nbytes(c.dtype, int(np.prod(c.shape))) for c in stored),
                dtype=str(values.dtype),
                sparsity=float(1.0 - np.count_nonzero(values) / values.size) if values.size else 0.0,
                bits=bits,
            ))
    return rows


def _decoded(node: gs.Node) -> tuple[np.ndarray, list[gs.Constant], int | None] | None:
    """``(values, stored constants, bits)`` of an encoded weight produced by ``node``, or None."""
    if node.domain == schema.DOMAIN and node.op == schema.DECODE_OP:
        label = node.outputs[0].name if node.outputs else node.name
        if len(node.inputs) != 1 or len(node.outputs) != 1 or not isinstance(node.inputs[0], gs.Constant):
            raise CodecError(f"malformed packed weight {label!r}: a DecodeWeight node must read one constant uint8 "
                             f"blob (it reads {[t.name for t in node.inputs]})")
        values = reference.decode_weight(node.inputs[0].values, name=label)
        return values, [node.inputs[0]], _codebook_bits(values)
    if node.op == "Gather" and isinstance(node.inputs[0], gs.Constant):
        index = node.inputs[1]
        if len(index.inputs) == 1 and index.inputs[0].op == "Cast":
            index = index.inputs[0].inputs[0]
        if not isinstance(index, gs.Constant) or np.dtype(index.dtype).name not in ("uint4", "uint8", "uint16"):
            return None
        values = np.asarray(node.inputs[0].values)[values_of(index).astype(np.int64)]
        return values, [node.inputs[0], index], _codebook_bits(values)
    if _is_dequantize(node) and all(isinstance(t, gs.Constant) for t in node.inputs[1:]):
        source = node.inputs[0]
        if isinstance(source, gs.Constant):
            codes, stored = values_of(source), [source]
        elif len(source.inputs) == 1 and (inner := _decoded(source.inputs[0])) is not None:
            codes, stored = inner[0], inner[1]
        else:
            return None
        if codes.dtype.kind not in "iu" or int(node.attrs.get("block_size", 0)):
            return None
        codes = codes.astype(np.int32)
        scale = np.asarray(node.inputs[1].values)
        zero = np.asarray(node.inputs[2].values) if len(node.inputs) > 2 else np.zeros((), np.int32)
        axis = int(node.attrs.get("axis", 1)) % max(codes.ndim, 1)
        values = qscheme.dequantize(codes, scale, zero, axis)
        span = int(codes.max()) - int(codes.min()) + 1 if codes.size else 1
        return values, stored + list(node.inputs[1:]), max(1, (span - 1).bit_length())
    return None


def _is_dequantize(node: gs.Node) -> bool:
    return is_standard(node, "DequantizeLinear")


def _codebook_bits(values: np.ndarray) -> int | None:
    """log2 of the number of distinct nonzero values, when it is a codebook's (at most 256)."""
    distinct = np.unique(values[values != 0]).size
    return max(1, (distinct - 1).bit_length()) if 0 < distinct <= 256 else None


def summarize(model: Model) -> dict:
    """Everything ``onnxcomp inspect`` prints, as plain data."""
    proto = model.to_proto()
    inits = {t.name for t in proto.graph.initializer}
    rows = layer_rows(model)
    weights = [r for r in rows if r.role == "weight"]
    return {
        "path": str(model.path) if model.path else None,
        "ir_version": proto.ir_version,
        "opsets": model.opsets,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": [_value_info(v) for v in proto.graph.input if v.name not in inits],
        "outputs": [_value_info(v) for v in proto.graph.output],
        "metadata": model.metadata,
        "ops": op_histogram(proto),
        "size": size_by_section(proto),
        "parameters": sum(r.params for r in rows),
        "layer_parameters": sum(r.params for r in weights),
        "layers": [asdict(r) for r in rows],
    }


def _value_info(v: onnx.ValueInfoProto) -> dict:
    tt = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "?"
    return {"name": v.name, "dtype": dtype, "shape": dims}


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    return tensor.ByteSize() + _external_bytes(tensor)


def _external_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return 0
    entries = {e.key: e.value for e in tensor.external_data}
    return int(entries.get("length", 0))
