"""Uniform integer grids for weights: scales, zero points, rounding and the MSE-optimal clipping range.

A ``b``-bit uniform quantizer stores integers ``q`` and reconstructs ``w' = (q - zp) * scale``, which is exactly
what ONNX ``DequantizeLinear`` computes (``(int32(q) - zp)`` converted to float, times ``scale``, in float32; in
float32 and rounded for float16 scales). :func:`dequantize` computes it the same way, so the numbers a pass
writes and the numbers onnxruntime reconstructs are the same bits.

Grids (``qmin .. qmax`` of ``q``), chosen to be consistent with ``DequantizeLinear`` and with one another:

- **symmetric** (zero point 0, signed storage): the *restricted* signed grid
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (8 bits: -127..127; 4 bits: -7..7; 3 bits: -3..3), so ``w -> -w`` maps the
  grid onto itself and ``scale = max|w| / qmax`` reaches both ends; the unused code -2^(b-1) is the price
  (15 of 16 levels at 4 bits). 2 bits is ternary ``{-1, 0, 1} * scale``. 1 bit is **binary**
  ``{-1, +1} * scale`` (no zero: ``q = sign(w)``, with ``+1`` for ``w = 0``) and its scale is ``mean|w|``, the
  least-squares scale for those signs (XNOR-Net, Rastegari et al. 2016), with or without clip search.
- **asymmetric** (unsigned storage): ``[0, 2^b - 1]`` with an integer zero point ``zp`` in that range, computed
  from a range ``[lo, hi]`` that always contains 0: ``scale = (hi - lo) / qmax``, ``zp = round(-lo / scale)``.
  Real 0.0 is then exactly ``q = zp`` (zero padding and pruned weights stay exact). 1 bit asymmetric is
  ``{0, scale}`` or ``{-scale, 0}``, whichever side the range lies on.

A row (an output channel for ``per_channel``, the whole tensor otherwise) that is all zeros gets ``scale = 1``.

**Clipping** (``clip_search="mse"``): at low widths the max-abs range wastes levels on rare outliers. The range
is shrunk by a factor ``alpha`` (``scale = alpha * max|w| / qmax``, or ``[alpha lo, alpha hi]``) chosen per row
from a grid ``1, 0.99, ..., 0.2`` to minimise ``sum importance * (w - w')^2`` (GPTQ's and ZeroQ's grid search,
vectorised over rows: one pass over the tensor per candidate). ``alpha = 1`` is a candidate, so the result is
never worse than no clipping on that measure. ``importance`` (broadcast against ``W``) weighs the elements, e.g.
the diagonal of a layer's input Hessian.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

CLIP_SEARCHES = ("none", "mse")
INT4_OPSET = 21  # DequantizeLinear on int4/uint4 (ai.onnx opset 21; onnxruntime 1.32 runs it, per axis too)
INT2_OPSET = 25  # DequantizeLinear on int2/uint2 (ai.onnx opset 25; onnxruntime 1.32 runs it, per axis too)
_SHRINK = np.linspace(1.0, 0.2, 81)  # clip-search candidates for alpha


@dataclass(frozen=True)
class QScheme:
    """A uniform grid: width, symmetric (signed, zero point 0) or asymmetric, one scale per channel or tensor."""

    bits: int
    symmetric: bool = True
    per_channel: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be an integer from 1 to 8, got {self.bits!r}")

    @property
    def qmin(self) -> int:
        return grid(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return grid(self.bits, self.symmetric)[1]

    @property
    def levels(self) -> int:
        """How many distinct values the grid has (binary: 2, though -1..1 spans 3 codes)."""
        if self.symmetric and self.bits == 1:
            return 2
        return self.qmax - self.qmin + 1

    def __str__(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"{self.bits}-bit {kind} {'per-channel' if self.per_channel else 'per-tensor'}"


def grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of the integer codes (module docstring); binary's codes are -1 and +1 only."""
    if symmetric:
        top = max(1, (1 << (bits - 1)) - 1)
        return -top, top
    return 0, (1 << bits) - 1


def storage_type(bits: int, symmetric: bool, opset: int) -> int:
    """The ONNX element type that holds the codes and the zero point for ``DequantizeLinear`` at ``opset``.

    INT2/UINT2 from opset 25 and INT4/UINT4 from opset 21 when the codes fit (all checked to run in
    onnxruntime 1.32, per tensor and per axis); INT8/UINT8 otherwise (then holding values of fewer bits, which the
    packed format stores at their real width).
    """
    if bits <= 2 and opset >= INT2_OPSET:
        return onnx.TensorProto.INT2 if symmetric else onnx.TensorProto.UINT2
    if bits <= 4 and opset >= INT4_OPSET:
        return onnx.TensorProto.INT4 if symmetric else onnx.TensorProto.UINT4
    return onnx.TensorProto.INT8 if symmetric else onnx.TensorProto.UINT8


def storage_bits(elem_type: int) -> int:
    """Bits per stored code of an integer element type (INT4: 4, UINT8: 8, ...)."""
    return {
        onnx.TensorProto.INT2: 2,
        onnx.TensorProto.UINT2: 2,
        onnx.TensorProto.INT4: 4,
        onnx.TensorProto.UINT4: 4,
    }.get(elem_type, 8)


def scale_dtype(dtype: np.dtype) -> np.dtype:
    """The scale's float type: the weight's own for float16/float32, float32 for anything else."""
    dtype = np.dtype(dtype)
    return dtype if dtype in (np.float16, np.float32) else np.dtype(np.float32)


def qparams(
    W: np.ndarray,
    scheme: QScheme,
    axis: int = 0,
    clip_search: Literal["none", "mse"] = "none",
    importance: np.ndarray | None = None,
    dtype: np.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, zero_point)`` for ``W``: shape ``(W.shape[axis],)`` per channel, ``()`` per tensor.

    ``scale`` has :func:`scale_dtype` of ``dtype`` (default: ``W``'s; it is stored as is, and rounding uses the
    stored value); ``zero_point`` is int32 (0 when symmetric).
    """
    if clip_search not in CLIP_SEARCHES:
        raise ValueError(f"clip_search must be one of {', '.join(CLIP_SEARCHES)}, got {clip_search!r}")
    W = np.asarray(W)
    rows = _rows(W.astype(np.float64), axis, scheme.per_channel)
    imp = (
        None
        if importance is None
        else _rows(np.broadcast_to(importance, W.shape).astype(np.float64), axis, scheme.per_channel)
    )
    sdtype = scale_dtype(W.dtype if dtype is None else dtype)
    qmin, qmax = grid(scheme.bits, scheme.symmetric)
    if scheme.symmetric and scheme.bits == 1:
        a = np.abs(rows)
        mean = (
            a.mean(axis=1)
            if imp is None
            else (a * imp).sum(axis=1) / np.maximum(imp.sum(axis=1), np.finfo(np.float64).tiny)
        )
        scale = _finish_scale(mean, sdtype)
        return _shaped(scale, scheme), _shaped(np.zeros(scale.shape, np.int32), scheme)
    lo, hi = np.minimum(rows.min(axis=1), 0.0), np.maximum(rows.max(axis=1), 0.0)
    if scheme.symmetric:
        lo, hi = -np.maximum(-lo, hi), np.maximum(-lo, hi)

    def params(alpha: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        span = (hi - lo) * alpha / (qmax - qmin)  # symmetric: 2 max|w| alpha / 2 qmax
        scale = _finish_scale(span, sdtype)
        if scheme.symmetric:
            return scale, np.zeros(scale.shape, np.int32)
        zp = np.clip(np.rint(-lo * alpha / scale.astype(np.float64)), qmin, qmax).astype(np.int32)
        return scale, zp

    if clip_search == "mse":
        best = np.full(rows.shape[0], np.inf)
        alpha = np.ones(rows.shape[0])
        for a in _SHRINK:
            scale, zp = params(a)
            s, z = scale.astype(np.float64)[:, None], zp[:, None]
            err = (np.clip(np.rint(rows / s) + z, qmin, qmax) - z) * s - rows
            err = (err * err if imp is None else err * err * imp).sum(axis=1)
            better = err < best
            best[better], alpha[better] = err[better], a
        scale, zp = params(alpha)
    else:
        scale, zp = params(1.0)
    return _shaped(scale, scheme), _shaped(zp, scheme)


def quantize(
    W: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, bits: int, symmetric: bool, axis: int = 0
) -> np.ndarray:
    """Round-to-nearest codes (int32) of ``W`` on the grid of ``scale``/``zero_point`` (per channel along ``axis``
    when they are 1-D), clipped to the grid; ties to even, as QuantizeLinear."""
    W = np.asarray(W, dtype=np.float64)
    if symmetric and bits == 1:
        return np.where(W >= 0, 1, -1).astype(np.int32)
    s = _along(np.asarray(scale, dtype=np.float64), W.ndim, axis)
    z = _along(np.asarray(zero_point, dtype=np.int64), W.ndim, axis)
    qmin, qmax = grid(bits, symmetric)
    return np.clip(np.rint(W / s) + z, qmin, qmax).astype(np.int32)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int = 0) -> np.ndarray:
    """``(q - zero_point) * scale`` exactly as DequantizeLinear: the difference in int32, the product in float32,
    the result in ``scale``'s dtype."""
    q = np.asarray(q)
    scale = np.asarray(scale)
    diff = q.astype(np.int32) - _along(np.asarray(zero_point, dtype=np.int32), q.ndim, axis)
    product = diff.astype(np.float32) * _along(scale.astype(np.float32), q.ndim, axis)
    return product.astype(scale.dtype)


def snap(
    values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qmin: int, qmax: int, binary: bool = False
) -> np.ndarray:
    """The nearest grid value (float64) of each entry of ``values``, with ``scale``/``zero_point`` broadcast."""
    if binary:
        return np.where(values >= 0, 1.0, -1.0) * scale
    return (np.clip(np.rint(values / scale) + zero_point, qmin, qmax) - zero_point) * scale


def _rows(W: np.ndarray, axis: int, per_channel: bool) -> np.ndarray:
    """The tensor as rows: one per channel along ``axis`` (per channel), or a single row."""
    if not per_channel or W.ndim == 0:
        return W.reshape(1, -1)
    return np.moveaxis(W, axis, 0).reshape(W.shape[axis], -1)


def _finish_scale(span: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Scales in the stored dtype: a zero range gets 1 (its row is all zeros, exact at any scale), and a range
    too small for the dtype gets its smallest normal number."""
    scale = np.where(span > 0, span, 1.0).astype(dtype)
    return np.maximum(scale, np.finfo(dtype).tiny).astype(dtype)


def _shaped(values: np.ndarray, scheme: QScheme) -> np.ndarray:
    return values if scheme.per_channel else values.reshape(())


def _along(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along ``axis`` of an ``ndim`` tensor; scalars as they are."""
    if values.ndim == 0 or ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)
