"""The packed ONNX target: weights as ``ai.onnxcomp.DecodeWeight(blob)``, expanded once at load.

``blob`` is the uint8 serialisation of the cheapest exact codec stack of :mod:`onnxcomp.codecs.stack` (CSR
relative indices with filler zeros, codebook indices, Huffman; the byte format is ``kernels/FORMAT.md``), and the
node's ``shape``/``dtype`` attributes (:mod:`onnxcomp.kernels.schema`) repeat what it decodes to.
:mod:`onnxcomp.runtime` (or ``onnxcomp unpack``) expands every such node into a float initializer once at load, so
the graph runs on stock onnxruntime. The int8/uint8 codes of quantized weights are packed the same way: 3-bit
codes held in int8 take 3 bits (bit-packed codebook indices) or fewer (Huffman), and DecodeWeight gives back the
exact int8/uint8 tensor that DequantizeLinear reads; int4/int2 codes are packed as the int8/uint8 of the same
values, which DequantizeLinear reads alike.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp import limits
from onnxcomp.codecs.stack import EncodedWeight, encode_weight, to_blob
from onnxcomp.emit.lowering import take_weight_name
from onnxcomp.ir.graph_edit import unique_name
from onnxcomp.ir.weights import Weight, stored_nbytes, values_of
from onnxcomp.kernels import schema

PACKED_CODES = (np.int8, np.uint8)  # integer codes the packed format stores (the codecs' integer dtypes)
# What a packed weight costs in the graph besides its blob: the DecodeWeight node (name, shape and dtype
# attributes) and the blob initializer's proto fields (measured on the bundled models: 95-110 B).
PACKED_NODE_BYTES = 100


def lower_packed(w: Weight, names: set[str], owner: dict[int, gs.Graph], parent: dict[int, gs.Graph | None],
                 allow_sparse: bool = True, allow_huffman: bool = True) -> tuple[EncodedWeight, int] | str:
    """Replace ``w`` by ``DecodeWeight`` of its cheapest blob; returns the encoding and the bytes the tensor took
    before, or why not (the blob is not smaller)."""
    dtype = np.dtype(w.tensor.dtype)
    values = values_of(w.tensor)
    stored = stored_nbytes(dtype, values.size)
    enc = encode_weight(values, allow_sparse=allow_sparse, allow_huffman=allow_huffman, name=w.name)
    if enc.nbytes >= stored:
        kind = "float" if dtype.kind == "f" else str(dtype)
        return f"packed blob ({enc.nbytes:,} B, {enc.describe()}) is not smaller than the {kind} tensor"
    why = limits.expansion_refusal(enc.nbytes, values.nbytes)
    if why:  # readers refuse such blobs (a hostile one could claim any size): keep the tensor as it is
        return f"not packed: {why}"
    blob = gs.Constant(unique_name(w.name + "_packed", names), to_blob(enc))
    attrs = {schema.DECODE_ATTR_SHAPE: list(enc.shape),
             schema.DECODE_ATTR_DTYPE: int(onnx.helper.np_dtype_to_tensor_dtype(values.dtype))}
    node_name = unique_name(w.name + "_decode", names)
    graph, at, out = take_weight_name(w, owner, parent, values.dtype)
    node = gs.Node(schema.DECODE_OP, name=node_name, domain=schema.DOMAIN, inputs=[blob], outputs=[out], attrs=attrs)
    graph.nodes.insert(at, node)
    return enc, stored
