"""Uniform integer grids (``onnxcomp/numerics/qscheme.py``): symmetric and asymmetric grids, exact zeros,
per-channel scales, the MSE clip search, binary weights, the rounding error bound, bit-identical dequantization
against onnxruntime's DequantizeLinear, and storage types by opset."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.numerics import qscheme
from onnxcomp.numerics.qscheme import QScheme

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_grids(bits: int) -> None:
    """Symmetric: the restricted signed grid (binary {-1, +1} at 1 bit); asymmetric: 0 .. 2^b - 1."""
    ramp = np.linspace(-1.0, 1.0, 1001, dtype=np.float32)
    scheme = QScheme(bits, symmetric=True, per_channel=False)
    scale, zp = qscheme.qparams(ramp, scheme)
    q = qscheme.quantize(ramp, scale, zp, bits, True)
    top = (1 << (bits - 1)) - 1
    expected = {-1, 1} if bits == 1 else set(range(-top, top + 1))
    assert set(np.unique(q)) == expected and zp == 0 and scheme.levels == len(expected)
    if bits > 1:  # w -> -w maps the grid onto itself
        np.testing.assert_array_equal(qscheme.quantize(-ramp, scale, zp, bits, True), -q)

    skewed = np.linspace(-0.3, 1.0, 1001, dtype=np.float32)
    scheme = QScheme(bits, symmetric=False, per_channel=False)
    scale, zp = qscheme.qparams(skewed, scheme)
    q = qscheme.quantize(skewed, scale, zp, bits, False)
    assert set(np.unique(q)) == set(range(1 << bits)) and scheme.levels == 1 << bits
    values = qscheme.dequantize(q, scale, zp)
    assert np.unique(values).size == 1 << bits and values.dtype == np.float32


@pytest.mark.parametrize("clip", ["none", "mse"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_asymmetric_zero_is_exact(bits: int, per_channel: bool, clip: str) -> None:
    w = RNG.standard_normal((6, 40)).astype(np.float32)
    w[1] = np.abs(w[1]) + 0.5  # all positive
    w[2] = -np.abs(w[2]) - 0.5  # all negative
    w[3] = 0.0  # all zero
    w[:, ::7] = 0.0  # zeros (padding, pruned weights) in every row
    scale, zp = qscheme.qparams(w, QScheme(bits, False, per_channel), axis=0, clip_search=clip)
    assert scale.shape == ((6,) if per_channel else ())
    assert zp.dtype == np.int32 and np.all((zp >= 0) & (zp <= (1 << bits) - 1))
    values = qscheme.dequantize(qscheme.quantize(w, scale, zp, bits, False), scale, zp)
    assert np.all(values[w == 0] == 0.0)
    if per_channel:
        assert np.all(values[3] == 0.0)


def test_per_channel_scales_follow_each_channel() -> None:
    w = RNG.standard_normal((5, 64)) * (10.0 ** np.arange(-2, 3))[:, None]
    w = w.astype(np.float32)
    scheme = QScheme(4, True, per_channel=True)
    scale, _ = qscheme.qparams(w, scheme)
    np.testing.assert_allclose(scale, np.abs(w).max(axis=1) / 7, rtol=1e-6)
    # The same scales along axis 1 of the transposed weight (Gemm transB=0, MatMul [K, N]).
    np.testing.assert_array_equal(qscheme.qparams(w.T, scheme, axis=1)[0], scale)

    def row_errors(per_channel: bool) -> np.ndarray:
        s, z = qscheme.qparams(w, QScheme(4, True, per_channel))
        values = qscheme.dequantize(qscheme.quantize(w, s, z, 4, True), s, z)
        return np.linalg.norm(values - w, axis=1) / np.linalg.norm(w, axis=1)

    channel, tensor = row_errors(True), row_errors(False)
    assert np.all(channel < 0.2) and tensor[0] == 1.0  # per tensor, the smallest channel is all zeros


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_clip_search_is_never_worse(symmetric: bool, per_channel: bool) -> None:
    """The MSE clip search includes alpha = 1, so no row gets worse; heavy tails get clearly better at 3-4 bits."""
    w = RNG.standard_t(3, size=(16, 300)).astype(np.float32)
    importance = RNG.random(300)
    for bits in range(1, 9):
        scheme = QScheme(bits, symmetric, per_channel)
        for imp in (None, importance):
            errors = []
            for clip in ("none", "mse"):
                s, z = qscheme.qparams(w, scheme, 0, clip, imp)
                diff = qscheme.dequantize(qscheme.quantize(w, s, z, bits, symmetric), s, z).astype(np.float64) - w
                weighted = diff**2 * (1.0 if imp is None else imp)
                errors.append(weighted.sum(axis=1) if per_channel else weighted.sum())
            assert np.all(errors[1] <= errors[0] * (1 + 1e-9)), (bits, imp is None)
            if bits in (3, 4) and imp is None:
                assert np.sum(errors[1]) < 0.9 * np.sum(errors[0])


def test_binary_is_sign_times_mean_magnitude() -> None:
    w = RNG.standard_normal((4, 50)).astype(np.float32)
    for clip in ("none", "mse"):
        scale, zp = qscheme.qparams(w, QScheme(1, True, True), clip_search=clip)
        np.testing.assert_allclose(scale, np.abs(w).mean(axis=1), rtol=1e-6)
        q = qscheme.quantize(w, scale, zp, 1, True)
        np.testing.assert_array_equal(q, np.where(w >= 0, 1, -1))


@pytest.mark.parametrize(
    ("elem", "opset", "scale_dtype", "axis"),
    [
        (TensorProto.INT8, 13, np.float32, 0),
        (TensorProto.UINT8, 13, np.float32, 1),
        (TensorProto.UINT8, 10, np.float32, None),
        (TensorProto.INT4, 21, np.float32, 0),
        (TensorProto.UINT4, 21, np.float32, 1),
        (TensorProto.INT2, 25, np.float32, 0),
        (TensorProto.INT8, 19, np.float16, 0),
    ],
)
def test_dequantize_is_bit_identical_to_onnxruntime(elem: int, opset: int, scale_dtype, axis: int | None) -> None:
    bits = qscheme.storage_bits(elem)
    signed = elem in (TensorProto.INT8, TensorProto.INT4, TensorProto.INT2)
    w = (RNG.standard_normal((6, 10)) * RNG.random((6, 1))).astype(scale_dtype)
    scheme = QScheme(bits, signed, axis is not None)
    scale, zp = qscheme.qparams(w, scheme, axis or 0)
    q = qscheme.quantize(w, scale, zp, bits, signed, axis or 0)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    inits = [
        numpy_helper.from_array(q.astype(dtype), "q"),
        numpy_helper.from_array(scale, "s"),
        numpy_helper.from_array(np.asarray(zp).astype(dtype), "z"),
    ]
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], **({} if axis is None else {"axis": axis}))
    out = helper.make_tensor_value_info("w", helper.np_dtype_to_tensor_dtype(np.dtype(scale_dtype)), None)
    proto = helper.make_model(
        helper.make_graph([node], "g", [], [out], inits), opset_imports=[helper.make_opsetid("", opset)]
    )
    proto.ir_version = 12 if opset >= 25 else 10 if opset >= 21 else 8
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    want = qscheme.dequantize(q, scale, zp, axis or 0)
    assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))


def test_storage_type() -> None:
    assert qscheme.storage_type(4, True, 17) == TensorProto.INT8
    assert qscheme.storage_type(3, False, 17) == TensorProto.UINT8
    assert qscheme.storage_type(4, True, 21) == TensorProto.INT4
    assert qscheme.storage_type(4, False, 21) == TensorProto.UINT4
    assert qscheme.storage_type(5, True, 21) == TensorProto.INT8
    assert qscheme.storage_type(2, True, 21) == TensorProto.INT4
    assert qscheme.storage_type(2, False, 25) == TensorProto.UINT2
    assert qscheme.storage_type(1, True, 25) == TensorProto.INT2
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 8"):
        QScheme(9)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize(("bits", "symmetric"), [(2, True), (3, True), (4, True), (8, True), (1, False), (2, False),
                                                 (4, False), (8, False)])
def test_rounding_error_is_at_most_half_a_step(bits: int, symmetric: bool, per_channel: bool) -> None:
    """Without clipping every value lies within the grid's range, so dequantize(quantize(w)) is within scale / 2
    of w (and of float32 rounding of the product); the bound is reached on a dense ramp."""
    w = (RNG.standard_normal((4, 500)) * np.array([[0.01], [1.0], [3.0], [0.2]])).astype(np.float32)
    w[3] = np.abs(w[3]) + 0.05  # all positive: the asymmetric range is [0, max]
    w[:, 0] = np.linspace(-1, 1, 4)  # a zero in some rows
    scale, zp = qscheme.qparams(w, QScheme(bits, symmetric, per_channel), axis=0)
    values = qscheme.dequantize(qscheme.quantize(w, scale, zp, bits, symmetric), scale, zp)
    step = (scale if per_channel else np.full(4, scale)).astype(np.float64)[:, None]
    err = np.abs(values.astype(np.float64) - w)
    assert np.all(err <= step / 2 * (1 + 1e-6) + 1e-7 * np.abs(w)), (err / step).max()
    ramp = np.linspace(-1.0, 1.0, 100001, dtype=np.float32)
    s, z = qscheme.qparams(ramp, QScheme(bits, symmetric, False))
    worst = np.abs(qscheme.dequantize(qscheme.quantize(ramp, s, z, bits, symmetric), s, z) - ramp).max()
    assert 0.49 * s <= worst <= 0.5 * s * (1 + 1e-6)
