"""Numpy reference implementations of onnxcomp's custom operators: they define the semantics.

``DecodeWeight(blob) -> weight``: parse the uint8 blob (:func:`onnxcomp.codecs.stack.from_blob`, which checks
magic, version, CRC, lengths and Huffman tables) and decode it exactly
(:func:`onnxcomp.codecs.stack.decode_weight`): a float tensor, or the int8/uint8 codes of a quantized weight.
When the node's ``shape`` / ``dtype`` attributes are given they must match the blob. Every problem is a
:class:`~onnxcomp.errors.CodecError` naming the weight. The blob's byte format, and every check in order, is
``kernels/FORMAT.md``; ``kernels/testdata`` holds its golden blobs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnxcomp.codecs.stack import decode_weight as _decode
from onnxcomp.codecs.stack import from_blob
from onnxcomp.errors import CodecError


def decode_weight(blob: np.ndarray, shape: Sequence[int] | None = None, dtype: int | None = None,
                  name: str = "") -> np.ndarray:
    """The weight a ``DecodeWeight`` node outputs for this ``blob`` (and its ``shape``/``dtype`` attributes)."""
    blob = np.asarray(blob)
    if blob.dtype != np.uint8:
        raise CodecError(f"malformed packed weight {name!r}: the blob is {blob.dtype}, DecodeWeight reads uint8")
    enc = from_blob(blob, name)
    if shape is not None and tuple(int(d) for d in shape) != enc.shape:
        raise CodecError(f"malformed packed weight {name!r}: node attribute shape {list(shape)} "
                         f"but the blob holds {list(enc.shape)}")
    if dtype is not None and dtype != onnx.helper.np_dtype_to_tensor_dtype(np.dtype(enc.dtype)):
        raise CodecError(f"malformed packed weight {name!r}: node attribute dtype {dtype} "
                         f"but the blob holds {enc.dtype}")
    return _decode(enc)
