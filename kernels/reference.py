"""Numpy reference implementations of onnxcomp's custom operators: they define the semantics.

``DecodeWeight(blob) -> weight``: parse the uint8 blob (:func:`onnxcomp.codecs.stack.from_blob`, which checks
magic, version, CRC, lengths and Huffman tables) and decode it exactly
(:func:`onnxcomp.codecs.stack.decode_weight`): a float tensor, or the int8/uint8 codes of a quantized weight.
When the node's ``shape`` / ``dtype`` attributes are given they must match the blob. Every problem is a
:class:`~onnxcomp.errors.CodecError` naming the weight. The blob's byte format, and every check in order, is
``kernels/FORMAT.md``; ``kernels/testdata`` holds its golden blobs.

The compute ops (``SparseGemm``, ``CodebookGemm``, ``SparseCodebookGemm``, ``SparseConv`` and their ``...Relu``
variants, :mod:`onnxcomp.kernels.schema`): :func:`sparse_gemm`, :func:`codebook_gemm`,
:func:`sparse_codebook_gemm`, :func:`sparse_conv` compute what the native kernels must (float32 results; the
convolution is accumulated in float64), from the dense weight :func:`dense_weight` rebuilds.
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


# -- the compute ops (kernels/schema.py) ---------------------------------------------------------------------------
def dense_weight(shape: Sequence[int], indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The dense float32 tensor of ``shape`` holding ``values`` at the row-major positions ``indices``."""
    size = int(np.prod(shape))
    indices = np.asarray(indices).reshape(-1).astype(np.int64)
    values = np.asarray(values, np.float32).reshape(-1)
    if indices.size != values.size:
        raise ValueError(f"{indices.size} indices for {values.size} values")
    if indices.size and (indices.min() < 0 or indices.max() >= size or np.any(np.diff(indices) <= 0)):
        raise ValueError("indices must be strictly increasing positions inside the weight")
    dense = np.zeros(size, np.float32)
    dense[indices] = values
    return dense.reshape(tuple(shape))


def codebook_values(codebook: np.ndarray, codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes).astype(np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= len(codebook)):
        raise ValueError("a code points past the codebook")
    return np.asarray(codebook, np.float32)[codes]


def _gemm(A: np.ndarray, W: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
    y = (np.asarray(A, np.float32) @ W + np.asarray(bias, np.float32)).astype(np.float32)
    return np.maximum(y, 0) if relu else y


def sparse_gemm(A, values, indices, bias, shape, relu: bool = False) -> np.ndarray:
    return _gemm(A, dense_weight(shape, indices, values), bias, relu)


def codebook_gemm(A, codebook, codes, bias, shape, relu: bool = False) -> np.ndarray:
    return _gemm(A, codebook_values(codebook, codes).reshape(tuple(shape)), bias, relu)


def sparse_codebook_gemm(A, codebook, codes, indices, bias, shape, relu: bool = False) -> np.ndarray:
    return _gemm(A, dense_weight(shape, indices, codebook_values(codebook, codes)), bias, relu)


def conv2d(X: np.ndarray, W: np.ndarray, bias: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
           group: int = 1) -> np.ndarray:
    """ONNX Conv (2-D, explicit pads) in float64 numpy: the reference the native kernels are checked against."""
    X = np.asarray(X, np.float64)
    W = np.asarray(W, np.float64)
    n, c, h, w = X.shape
    m, cg, kh, kw = W.shape
    sh, sw = strides
    dh, dw = dilations
    xp = np.pad(X, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, m, oh, ow))
    mg = m // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                y[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", patch, W[g * mg:(g + 1) * mg, :, i, j])
    y += np.asarray(bias, np.float64)[None, :, None, None]
    return y.astype(np.float32)


def sparse_conv(X, values, indices, bias, shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
                relu: bool = False) -> np.ndarray:
    y = conv2d(X, dense_weight(shape, indices, values), bias, strides, pads, dilations, group)
    return np.maximum(y, 0) if relu else y
