"""The native convolution kernels (``kernels/native/sparse_conv.cc``): SparseConv and SparseConvRelu in onnxruntime
with the library registered.

- against :func:`onnxcomp.kernels.reference.sparse_conv` and against the dense ONNX Conv (+ Relu) in stock
  onnxruntime, rel err <= 1e-5 (max |diff| / max |ref|), over kernel sizes 1x1, 2x2, 3x3, 5x5, 1x3, 7x1, strides
  1, 2 and 3, symmetric and asymmetric pads, dilations 1 and 2, groups 1, 2 and depthwise (multiplier 1 and 2),
  batch sizes 1, 2, 3 and 5, odd spatial sizes (1x1, 7x5, 13x17, 37x41), channel counts that are not multiples
  of 8, sparsity 0 / 50 / 99 / 100 %, empty output channels, and layers big enough for every inner path (full
  and short tiles, input-channel chunks, residue groups, the direct 1x1 path, the zero-padded and phase copies);
- intra_op_num_threads 1 and 2 give bit-identical results; the AVX-512, AVX2 and scalar paths
  (``ONNXCOMP_NATIVE_ISA``) all agree with the reference; weights fed as graph inputs (packed in Compute) and
  inputs whose size changes between runs of one session too;
- malformed attributes, weights and inputs are onnxruntime errors that name the problem, never a crash.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.kernels import reference
from onnxcomp.kernels.library import library_path, register

if library_path() is None:
    pytest.skip("onnxcomp's native kernels are not built", allow_module_level=True)

ort = pytest.importorskip("onnxruntime")

RTOL = 1e-5


# -- building models -------------------------------------------------------------------------------------------
def conv_model(shape, values, indices, bias, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
               relu=False, const=True, x_shape=None, attrs=None) -> bytes:
    if attrs is None:
        attrs = dict(shape=list(shape), strides=list(strides), pads=list(pads), dilations=list(dilations), group=group)
    node = helper.make_node("SparseConvRelu" if relu else "SparseConv", ["X", "values", "indices", "bias"], ["Y"],
                            domain="ai.onnxcomp", **attrs)
    weights = [numpy_helper.from_array(np.asarray(values, np.float32), "values"),
               numpy_helper.from_array(np.asarray(indices, np.int32), "indices"),
               numpy_helper.from_array(np.asarray(bias, np.float32), "bias")]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if not const:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, None) for t in weights]
        weights = []
    graph = helper.make_graph([node], "conv", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnxcomp", 1)],
                              ir_version=10)
    return model.SerializeToString()


def dense_model(W, bias, strides, pads, dilations, group, relu) -> bytes:
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["Z" if relu else "Y"], strides=list(strides), pads=list(pads),
                              dilations=list(dilations), group=group)]
    if relu:
        nodes.append(helper.make_node("Relu", ["Z"], ["Y"]))
    weights = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.asarray(bias, np.float32), "B")]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10).SerializeToString()


def session(model: bytes, threads: int = 1, native: bool = True):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if native:
        assert register(so)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def sparse_weight(shape, sparsity: float, rng, empty_channels=()):
    """(dense W, indices, values): about `sparsity` of the entries zero, the listed output channels all zero."""
    W = rng.standard_normal(shape).astype(np.float32)
    W[rng.random(shape) < sparsity] = 0
    if sparsity >= 1:
        W[:] = 0
    W[list(empty_channels)] = 0
    indices = np.flatnonzero(W).astype(np.int32)
    return W, indices, W.reshape(-1)[indices].copy()


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    assert y.shape == ref.shape, (y.shape, ref.shape)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(y.astype(np.float64) - ref).max()) if ref.size else 0.0
    return diff / scale if scale > 0 else diff


def check(N, C, H, W, M, kernel, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, sparsity=0.5,
          relu=False, seed=0, empty_channels=(), threads=1, dense=True):
    """The native op against the numpy reference and (dense=True) onnxruntime's dense Conv; returns its output."""
    rng = np.random.default_rng(seed)
    shape = (M, C // group) + tuple(kernel)
    Wd, indices, values = sparse_weight(shape, sparsity, rng, empty_channels)
    bias = rng.standard_normal(M).astype(np.float32)
    X = rng.standard_normal((N, C, H, W)).astype(np.float32)
    y = session(conv_model(shape, values, indices, bias, strides, pads, dilations, group, relu), threads).run(
        None, {"X": X})[0]
    ref = reference.sparse_conv(X, values, indices, bias, shape, strides, pads, dilations, group, relu)
    assert rel_err(y, ref) <= RTOL
    if dense:
        yd = session(dense_model(Wd, bias, strides, pads, dilations, group, relu), native=False).run(None, {"X": X})[0]
        assert rel_err(y, yd) <= RTOL
    if relu:
        assert (y >= 0).all()
    return y


# -- every geometry -------------------------------------------------------------------------------------------
# (kernel, strides, pads [top, left, bottom, right], dilations)
GEOMETRIES = [
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    ((1, 1), (1, 1), (1, 0, 0, 2), (1, 1)),
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((3, 3), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ((3, 3), (2, 2), (0, 1, 2, 0), (2, 1)),
    ((3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
    ((5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    ((5, 5), (2, 1), (0, 2, 1, 3), (1, 2)),
    ((1, 3), (1, 2), (0, 1, 0, 0), (1, 1)),
    ((7, 1), (1, 1), (3, 0, 3, 0), (1, 1)),
    ((2, 2), (3, 3), (1, 1, 0, 0), (1, 1)),
]
# (N, C, H, W, M, group)
SHAPES = [
    (1, 3, 1, 1, 5, 1),
    (2, 6, 7, 5, 9, 1),
    (5, 5, 13, 17, 11, 1),
    (2, 6, 13, 17, 10, 2),
    (1, 12, 13, 17, 12, 12),
    (3, 6, 7, 5, 12, 6),
]
SPARSITIES = (0.0, 0.5, 0.99, 1.0)


def _fits(shape, geometry) -> bool:
    (_, _, H, W, _, _), (k, _, p, d) = shape, geometry
    return H + p[0] + p[2] >= d[0] * (k[0] - 1) + 1 and W + p[1] + p[3] >= d[1] * (k[1] - 1) + 1


GRID = [(s, g) for s in SHAPES for g in GEOMETRIES if _fits(s, g)]


@pytest.mark.parametrize("case", range(len(GRID)))
def test_geometries(case):
    (N, C, H, W, M, group), (kernel, strides, pads, dilations) = GRID[case]
    check(N, C, H, W, M, kernel, strides, pads, dilations, group, sparsity=SPARSITIES[case % 4], relu=case % 3 == 0,
          seed=case)


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("relu", [False, True])
def test_sparsity(sparsity, relu):
    check(2, 7, 13, 17, 10, (3, 3), (1, 1), (1, 1, 1, 1), sparsity=sparsity, relu=relu)
    check(1, 9, 7, 5, 6, (1, 1), sparsity=sparsity, relu=relu)


@pytest.mark.parametrize("relu", [False, True])
def test_empty_output_channels(relu):
    """Channels without a nonzero give their bias (Relu'd), next to full ones."""
    check(2, 10, 13, 17, 9, (3, 3), (1, 1), (1, 1, 1, 1), sparsity=0.3, relu=relu, empty_channels=(0, 4, 8))
    check(1, 70, 20, 20, 9, (1, 1), sparsity=0.5, relu=relu, empty_channels=(1, 2, 3))


# Layers big enough for every inner path: full tiles and a short last tile, several input-channel chunks, residue
# groups of the AVX-512 path, the direct 1x1 path (H*W a multiple of 16) and its padded copy (not), phase copies.
BIG = [
    dict(N=2, C=203, H=37, W=41, M=19, kernel=(3, 3), pads=(1, 1, 1, 1), sparsity=0.5),
    dict(N=1, C=96, H=32, W=32, M=40, kernel=(1, 1), sparsity=0.5),
    dict(N=2, C=64, H=30, W=30, M=33, kernel=(1, 1), sparsity=0.7),
    dict(N=1, C=48, H=21, W=19, M=24, kernel=(3, 3), strides=(2, 2), pads=(1, 0, 1, 1), sparsity=0.7),
    dict(N=3, C=40, H=28, W=28, M=64, kernel=(3, 3), pads=(1, 1, 1, 1), group=2, sparsity=0.9, relu=True),
    dict(N=1, C=72, H=33, W=35, M=72, kernel=(3, 3), pads=(1, 1, 1, 1), group=72, sparsity=0.2),
    dict(N=1, C=150, H=14, W=14, M=150, kernel=(3, 3), pads=(1, 1, 1, 1), sparsity=0.8),
    dict(N=1, C=32, H=56, W=56, M=17, kernel=(5, 5), pads=(2, 1, 2, 3), dilations=(1, 2), sparsity=0.6),
]


@pytest.mark.parametrize("case", range(len(BIG)))
def test_big_layers(case):
    check(**BIG[case], seed=100 + case)


def test_threads_agree_bitwise():
    for case in (BIG[0], BIG[4], BIG[6]):
        y1 = check(**case, threads=1, dense=False)
        y2 = check(**case, threads=2, dense=False)
        assert np.array_equal(y1, y2)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_isa_paths(monkeypatch, isa):
    """ONNXCOMP_NATIVE_ISA caps the SIMD path a kernel picks when created; every path matches the reference."""
    monkeypatch.setenv("ONNXCOMP_NATIVE_ISA", isa)
    for case in (BIG[0], BIG[2], BIG[3], BIG[5]):
        check(**case, dense=False)
    check(2, 6, 13, 17, 10, (5, 5), (2, 1), (0, 2, 1, 3), (1, 2), group=2, relu=True)


def test_weights_as_graph_inputs():
    """values / indices / bias fed at run time: packed in every run, same results."""
    rng = np.random.default_rng(7)
    shape = (12, 5, 3, 3)
    _, indices, values = sparse_weight(shape, 0.6, rng)
    bias = rng.standard_normal(12).astype(np.float32)
    sess = session(conv_model(shape, values, indices, bias, (2, 1), (1, 2, 0, 1), (1, 1), 1, relu=True, const=False))
    for H, W in ((13, 17), (7, 5)):
        X = rng.standard_normal((2, 5, H, W)).astype(np.float32)
        y = sess.run(None, {"X": X, "values": values, "indices": indices, "bias": bias})[0]
        ref = reference.sparse_conv(X, values, indices, bias, shape, (2, 1), (1, 2, 0, 1), (1, 1), 1, relu=True)
        assert rel_err(y, ref) <= RTOL


def test_input_size_changes_between_runs():
    """One session, inputs of several sizes: the per-size layout is rebuilt, never reused wrongly."""
    rng = np.random.default_rng(8)
    shape = (20, 24, 3, 3)
    _, indices, values = sparse_weight(shape, 0.5, rng)
    bias = rng.standard_normal(20).astype(np.float32)
    sess = session(conv_model(shape, values, indices, bias, pads=(1, 1, 1, 1), x_shape=["n", 24, "h", "w"]))
    for N, H, W in ((1, 13, 17), (2, 40, 9), (1, 13, 17), (3, 1, 1)):
        X = rng.standard_normal((N, 24, H, W)).astype(np.float32)
        y = sess.run(None, {"X": X})[0]
        assert rel_err(y, reference.sparse_conv(X, values, indices, bias, shape, pads=(1, 1, 1, 1))) <= RTOL


def test_defaults_and_empty_batch():
    """strides / pads / dilations / group default to ONNX Conv's; a batch of 0 gives an empty output."""
    rng = np.random.default_rng(9)
    shape = (4, 3, 2, 2)
    _, indices, values = sparse_weight(shape, 0.5, rng)
    bias = rng.standard_normal(4).astype(np.float32)
    sess = session(conv_model(shape, values, indices, bias, attrs={"shape": list(shape)}))
    X = rng.standard_normal((1, 3, 6, 5)).astype(np.float32)
    assert rel_err(sess.run(None, {"X": X})[0], reference.sparse_conv(X, values, indices, bias, shape)) <= RTOL
    assert sess.run(None, {"X": np.zeros((0, 3, 6, 5), np.float32)})[0].shape == (0, 4, 5, 4)


# -- malformed ------------------------------------------------------------------------------------------------
def _raises(match, fn):
    with pytest.raises(Exception, match=match) as err:
        fn()
    assert type(err.value).__module__.startswith("onnxruntime"), type(err.value)


SHAPE = (4, 3, 3, 3)  # 108 weight elements
GOOD = dict(values=np.ones(3, np.float32), indices=np.array([0, 50, 107], np.int32), bias=np.zeros(4, np.float32))
BAD_WEIGHTS = [
    (dict(indices=np.array([0, 50, 108], np.int32)), "strictly increasing positions inside the weight"),
    (dict(indices=np.array([-1, 50, 60], np.int32)), "strictly increasing"),
    (dict(indices=np.array([0, 50, 50], np.int32)), "strictly increasing"),
    (dict(indices=np.array([9, 5, 60], np.int32)), "strictly increasing"),
    (dict(values=np.ones(2, np.float32)), "2 indices for|3 indices for 2 values"),
    (dict(values=np.ones((3, 1), np.float32)), "must be 1-D"),
    (dict(bias=np.zeros(3, np.float32)), r"bias has shape \[3\], expected \[4\]"),
]


@pytest.mark.parametrize("const", [True, False])
@pytest.mark.parametrize("case", range(len(BAD_WEIGHTS)))
def test_malformed_weights(case, const):
    """Constant weights fail session creation; weights fed at run time fail the run."""
    bad, match = BAD_WEIGHTS[case]
    w = {**GOOD, **bad}
    model = conv_model(SHAPE, w["values"], w["indices"], w["bias"], const=const)
    X = np.zeros((1, 3, 5, 5), np.float32)
    if const:
        _raises(match, lambda: session(model))
    else:
        _raises(match, lambda: session(model).run(None, {"X": X, **w}))


BAD_ATTRS = [
    ({}, "attribute shape is required"),
    ({"shape": [4, 3, 3]}, "is not"),
    ({"shape": [4, 3, 0, 3]}, "must be positive"),
    ({"shape": list(SHAPE), "group": 3}, "group 3 must be positive and divide M = 4"),
    ({"shape": list(SHAPE), "group": 0}, "group 0"),
    ({"shape": list(SHAPE), "strides": [0, 1]}, "strides"),
    ({"shape": list(SHAPE), "strides": [1, 1, 1]}, "strides"),
    ({"shape": list(SHAPE), "dilations": [1, 0]}, "dilations"),
    ({"shape": list(SHAPE), "pads": [1, 1, 1]}, "pads"),
    ({"shape": list(SHAPE), "pads": [1, -1, 1, 1]}, "pads"),
]


@pytest.mark.parametrize("case", range(len(BAD_ATTRS)))
def test_malformed_attributes(case):
    attrs, match = BAD_ATTRS[case]
    model = conv_model(SHAPE, GOOD["values"], GOOD["indices"], GOOD["bias"], attrs=attrs)
    _raises(match, lambda: session(model))


@pytest.mark.parametrize("X, match", [
    (np.zeros((3, 5, 5), np.float32), "expected rank 4"),
    (np.zeros((1, 3, 5, 5, 1), np.float32), "expected rank 4"),
    (np.zeros((1, 4, 5, 5), np.float32), "X has 4 channels, the weight expects 3"),
    (np.zeros((1, 3, 2, 5), np.float32), "smaller than the"),
    (np.zeros((1, 3, 5, 5), np.float64), "."),
])
def test_malformed_X(X, match):
    sess = session(conv_model(SHAPE, GOOD["values"], GOOD["indices"], GOOD["bias"]))
    _raises(match, lambda: sess.run(None, {"X": X}))
    assert sess.run(None, {"X": np.ones((1, 3, 5, 5), np.float32)})[0].shape == (1, 4, 3, 3)  # still usable
