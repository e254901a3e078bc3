"""The native fully connected kernels (``kernels/native/sparse_gemm.cc``): SparseGemm, CodebookGemm,
SparseCodebookGemm and their ...Relu variants, in onnxruntime with the library registered.

- every op against :mod:`onnxcomp.kernels.reference` and against its dense ONNX equivalent (MatMul, Add, Relu) in
  stock onnxruntime, rel err <= 1e-5 (max |diff| / max |ref|), over K, N from 1 to ~300 (odd, N not a multiple of
  8/16/32), A of rank 1, 2 and 3 with 1, 3, 5, 17, 40 and 64 rows, sparsity 0 / 50 / 99 / 100 %, empty rows and
  columns, uint8 and uint4 codes, codebooks of 1, 2, 16 and 256 entries, K >= 65536 (32-bit row indices), row
  gaps past 255 (the escapes of the uint8 delta rows);
- intra_op_num_threads 1 and 2 give bit-identical results; the AVX-512, AVX2 and scalar paths
  (``ONNXCOMP_NATIVE_ISA``) all agree with the reference; weights fed as graph inputs (packed in Compute) too;
- malformed weights and inputs are onnxruntime errors that name the problem, never a crash.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.kernels import reference
from onnxcomp.kernels.library import library_path, register

if library_path() is None:
    pytest.skip("onnxcomp's native kernels are not built", allow_module_level=True)

ort = pytest.importorskip("onnxruntime")

INPUTS = {
    "SparseGemm": ("A", "values", "indices", "bias"),
    "CodebookGemm": ("A", "codebook", "codes", "bias"),
    "SparseCodebookGemm": ("A", "codebook", "codes", "indices", "bias"),
}
U8, U4 = TensorProto.UINT8, TensorProto.UINT4
# A shapes (leading dims) every case runs: rank 1, 2 and 3; 1, 3, 5, 17, 40 and 64 rows (1-3 rows: the gather
# kernel; 4+: row tiles of 8, 16, 24 or 32, several tiles past 32)
LEADS = [(), (1,), (3,), (5,), (17,), (2, 20), (1, 1), (64,)]


# -- building models -------------------------------------------------------------------------------------------
def _tensor(name: str, arr: np.ndarray, dtype: int | None = None) -> onnx.TensorProto:
    if dtype == U4:
        return helper.make_tensor(name, U4, arr.shape, arr.reshape(-1).astype(np.uint8).tolist())
    return numpy_helper.from_array(arr, name)


def op_model(op: str, K: int, N: int, w: dict, relu: bool = False, codes_dtype: int = U8, const: bool = True,
             shape_attr=None, inputs=None) -> bytes:
    names = list(inputs or INPUTS[op])
    attrs = {} if shape_attr == "missing" else {"shape": shape_attr if shape_attr is not None else [K, N]}
    node = helper.make_node(op + ("Relu" if relu else ""), names, ["Y"], domain="ai.onnxcomp", **attrs)
    graph_inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)]
    inits = []
    for n in names[1:]:
        dtype = codes_dtype if n == "codes" else None
        if const:
            inits.append(_tensor(n, w[n], dtype))
        else:
            graph_inputs.append(helper.make_tensor_value_info(
                n, dtype or helper.np_dtype_to_tensor_dtype(w[n].dtype), w[n].shape))
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnxcomp", 1)],
                              ir_version=10)
    return model.SerializeToString()


def dense_model(W: np.ndarray, bias: np.ndarray, relu: bool) -> bytes:
    nodes = [helper.make_node("MatMul", ["A", "W"], ["M"]),
             helper.make_node("Add", ["M", "bias"], ["Z" if relu else "Y"])]
    if relu:
        nodes.append(helper.make_node("Relu", ["Z"], ["Y"]))
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W, "W"), numpy_helper.from_array(bias, "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def session(model: bytes, threads: int = 1, native: bool = True):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if native:
        assert register(so)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


# -- weights ---------------------------------------------------------------------------------------------------
def sparse_indices(rng, K: int, N: int, sparsity: float, empty_rows=(), empty_cols=()) -> np.ndarray:
    mask = rng.random((K, N)) >= sparsity
    mask[list(empty_rows), :] = False
    mask[:, list(empty_cols)] = False
    return np.flatnonzero(mask).astype(np.int32)


def make_weights(rng, op: str, K: int, N: int, sparsity: float = 0.0, k: int = 16, **empty) -> dict:
    w = {"bias": rng.standard_normal(N).astype(np.float32)}
    if op == "CodebookGemm":
        w["codebook"] = rng.standard_normal(k).astype(np.float32)
        w["codes"] = rng.integers(0, k, (K, N)).astype(np.uint8)
        return w
    w["indices"] = sparse_indices(rng, K, N, sparsity, **empty)
    if op == "SparseGemm":
        w["values"] = rng.standard_normal(w["indices"].size).astype(np.float32)
    else:
        w["codebook"] = rng.standard_normal(k).astype(np.float32)
        w["codes"] = rng.integers(0, k, w["indices"].size).astype(np.uint8)
    return w


def ref_output(op: str, K: int, N: int, w: dict, A: np.ndarray, relu: bool) -> np.ndarray:
    if op == "SparseGemm":
        return reference.sparse_gemm(A, w["values"], w["indices"], w["bias"], [K, N], relu)
    if op == "CodebookGemm":
        return reference.codebook_gemm(A, w["codebook"], w["codes"], w["bias"], [K, N], relu)
    return reference.sparse_codebook_gemm(A, w["codebook"], w["codes"], w["indices"], w["bias"], [K, N], relu)


def dense_w(op: str, K: int, N: int, w: dict) -> np.ndarray:
    if op == "SparseGemm":
        return reference.dense_weight([K, N], w["indices"], w["values"])
    if op == "CodebookGemm":
        return reference.codebook_values(w["codebook"], w["codes"]).reshape(K, N)
    return reference.dense_weight([K, N], w["indices"], reference.codebook_values(w["codebook"], w["codes"]))


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    assert y.shape == ref.shape and y.dtype == np.float32
    return float(np.abs(y.astype(np.float64) - ref).max(initial=0.0) / max(float(np.abs(ref).max(initial=0.0)), 1e-30))


def check(op: str, K: int, N: int, w: dict, relu: bool = False, codes_dtype: int = U8, leads=LEADS, rng=None,
          threads=(1,), const: bool = True) -> None:
    """The op (each thread count) against the reference and the dense ONNX equivalent, for every A shape."""
    rng = rng or np.random.default_rng(K * 1000 + N)
    natives = [session(op_model(op, K, N, w, relu, codes_dtype, const), t) for t in threads]
    dense = session(dense_model(dense_w(op, K, N, w), w["bias"], relu), native=False)
    extra = {} if const else {n: w[n] for n in INPUTS[op][1:]}
    for lead in leads:
        A = rng.standard_normal((*lead, K)).astype(np.float32)
        ref = ref_output(op, K, N, w, A, relu)
        outs = [s.run(None, {"A": A, **extra})[0] for s in natives]
        assert rel_err(outs[0], ref) <= 1e-5, (op, K, N, lead)
        assert rel_err(outs[0], dense.run(None, {"A": A})[0].astype(np.float64)) <= 1e-5, (op, K, N, lead)
        for other in outs[1:]:
            np.testing.assert_array_equal(other, outs[0])


# -- correctness -----------------------------------------------------------------------------------------------
SHAPES = [(1, 1), (1, 9), (7, 1), (13, 23), (64, 48), (100, 33), (129, 255), (300, 301)]


@pytest.mark.parametrize("K,N", SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99, 1.0])
def test_sparse_gemm(K, N, sparsity):
    rng = np.random.default_rng(K + N)
    check("SparseGemm", K, N, make_weights(rng, "SparseGemm", K, N, sparsity), relu=(K + N) % 2 == 0, rng=rng)


@pytest.mark.parametrize("K,N", SHAPES)
@pytest.mark.parametrize("k,codes_dtype", [(1, U8), (2, U4), (16, U4), (16, U8), (256, U8)])
def test_codebook_gemm(K, N, k, codes_dtype):
    rng = np.random.default_rng(K * N + k)
    check("CodebookGemm", K, N, make_weights(rng, "CodebookGemm", K, N, k=k), relu=k % 2 == 0,
          codes_dtype=codes_dtype, rng=rng)


@pytest.mark.parametrize("K,N", SHAPES[::2] + [(300, 301)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("k,codes_dtype", [(1, U4), (2, U8), (16, U4), (256, U8)])
def test_sparse_codebook_gemm(K, N, sparsity, k, codes_dtype):
    rng = np.random.default_rng(K + N + k)
    check("SparseCodebookGemm", K, N, make_weights(rng, "SparseCodebookGemm", K, N, sparsity, k=k),
          relu=sparsity == 0.5, codes_dtype=codes_dtype, rng=rng, leads=[(), (3,), (17,), (2, 20)])


@pytest.mark.parametrize("op", list(INPUTS))
@pytest.mark.parametrize("relu", [False, True])
def test_empty_rows_and_columns(op, relu):
    rng = np.random.default_rng(7)
    K, N = 61, 77
    if op == "CodebookGemm":  # a zero codebook entry empties whole rows and columns
        w = make_weights(rng, op, K, N, k=5)
        w["codebook"][0] = 0.0
        w["codes"][[0, 5, 60], :] = 0
        w["codes"][:, [1, 2, 40, 76]] = 0
    else:
        w = make_weights(rng, op, K, N, 0.3, k=16, empty_rows=(0, 5, 6, 60), empty_cols=(0, 1, 2, 40, 75, 76))
    check(op, K, N, w, relu=relu, codes_dtype=U4, rng=rng)


@pytest.mark.parametrize("op", ["SparseGemm", "SparseCodebookGemm"])
def test_32_bit_row_indices(op):
    """K >= 65536 and gaps too long for uint8 deltas: 32-bit row indices."""
    rng = np.random.default_rng(3)
    K, N = 70001, 5
    check(op, K, N, make_weights(rng, op, K, N, 0.995, k=16), codes_dtype=U4, rng=rng, leads=[(), (3,), (17,)])


@pytest.mark.parametrize("op", ["SparseGemm", "SparseCodebookGemm"])
def test_long_row_gaps(op):
    """Float values store rows as uint8 deltas when few gaps pass 255 rows: longer gaps (first nonzero at row 700,
    a band of 600 empty rows) are bridged by zero-valued escape entries; k = 40 decodes codes to float values."""
    rng = np.random.default_rng(17)
    K, N = 1300, 37
    w = make_weights(rng, op, K, N, 0.5, k=40)
    rows, cols = np.divmod(w["indices"], N)
    keep = ~((cols < 6) & (rows >= 10) & (rows < 900)) & ~((cols == 7) & (rows < 700))
    for name in ("indices", "values", "codes"):
        if name in w:
            w[name] = w[name][keep]
    rows, cols = np.divmod(w["indices"], N)
    gaps = np.concatenate([np.diff(rows[cols == c], prepend=0) for c in range(N)])
    escapes = int(np.sum(np.maximum(gaps - 1, 0) // 255))
    assert 0 < escapes * 50 <= w["indices"].size  # the delta layout, with escapes
    check(op, K, N, w, relu=True, rng=rng, leads=[(), (3,), (5,), (17,), (40,)], threads=(1, 2))


@pytest.mark.parametrize("op", list(INPUTS))
def test_threads_agree_bitwise(op):
    rng = np.random.default_rng(11)
    K, N = 257, 300
    check(op, K, N, make_weights(rng, op, K, N, 0.9, k=16), codes_dtype=U4, rng=rng, threads=(1, 2),
          leads=[(1,), (3,), (17,), (64,)])


@pytest.mark.parametrize("isa", ["scalar", "avx2", "native"])
@pytest.mark.parametrize("op", list(INPUTS))
def test_isa_paths(monkeypatch, isa, op):
    """ONNXCOMP_NATIVE_ISA caps the SIMD path a kernel picks when created; every path matches the reference."""
    if isa != "native":
        monkeypatch.setenv("ONNXCOMP_NATIVE_ISA", isa)
    rng = np.random.default_rng(5)
    for k, dt in ((8, U4), (16, U4), (200, U8)):
        K, N = 150, 97
        check(op, K, N, make_weights(rng, op, K, N, 0.8, k=k), relu=True, codes_dtype=dt, rng=rng,
              leads=[(1,), (3,), (17,), (40,)], threads=(2,))


@pytest.mark.parametrize("op", list(INPUTS))
def test_weights_as_graph_inputs(op):
    """Weights that are not constant initializers are packed in every Compute: same results."""
    rng = np.random.default_rng(13)
    K, N = 45, 70
    check(op, K, N, make_weights(rng, op, K, N, 0.6, k=16), const=False, rng=rng, leads=[(), (3,), (17,)])


def test_k_zero_gives_bias():
    rng = np.random.default_rng(0)
    w = make_weights(rng, "SparseGemm", 0, 6)
    y = session(op_model("SparseGemm", 0, 6, w)).run(None, {"A": np.zeros((3, 0), np.float32)})[0]
    np.testing.assert_array_equal(y, np.broadcast_to(w["bias"], (3, 6)))


# -- malformed inputs: onnxruntime errors, never a crash ---------------------------------------------------------
def _fails(model: bytes, A: np.ndarray, match: str, feeds=None):
    with pytest.raises(Exception, match=match):
        session(model).run(None, {"A": A, **(feeds or {})})


def _sparse_w(K=6, N=5):
    rng = np.random.default_rng(1)
    return make_weights(rng, "SparseGemm", K, N, 0.5)


def _scb_w(K=6, N=5, k=4):
    rng = np.random.default_rng(2)
    return make_weights(rng, "SparseCodebookGemm", K, N, 0.5, k=k)


A65 = np.ones((2, 6), np.float32)

MALFORMED = {
    "index past the weight": ("SparseGemm", lambda w: w.update(indices=np.append(w["indices"], 30).astype(np.int32),
                                                               values=np.append(w["values"], 1).astype(np.float32)),
                              "outside"),
    "negative index": ("SparseGemm", lambda w: w["indices"].__setitem__(0, -1), "outside"),
    "indices not increasing": ("SparseGemm", lambda w: w["indices"].__setitem__(1, w["indices"][0]), "increasing"),
    "values length": ("SparseGemm", lambda w: w.update(values=w["values"][:-1]), "values"),
    "bias length": ("SparseGemm", lambda w: w.update(bias=np.zeros(4, np.float32)), "bias"),
    "bias rank": ("SparseGemm", lambda w: w.update(bias=np.zeros((1, 5), np.float32)), "bias"),
    "indices rank": ("SparseGemm", lambda w: w.update(indices=w["indices"].reshape(1, -1),
                                                      values=w["values"].reshape(1, -1)), "rank"),
    "code past the codebook": ("SparseCodebookGemm", lambda w: w["codes"].__setitem__(0, 4), "codebook"),
    "codes length": ("SparseCodebookGemm", lambda w: w.update(codes=w["codes"][:-1]), "codes"),
    "codebook too large": ("SparseCodebookGemm", lambda w: w.update(codebook=np.zeros(257, np.float32)), "codebook"),
    "empty codebook": ("SparseCodebookGemm", lambda w: w.update(codebook=np.zeros(0, np.float32)), "codebook"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("const", [True, False])
def test_malformed_weights(case, const):
    op, spoil, match = MALFORMED[case]
    w = _sparse_w() if op == "SparseGemm" else _scb_w()
    spoil(w)
    model = op_model(op, 6, 5, w, const=const)
    feeds = None if const else {n: w[n] for n in INPUTS[op][1:]}
    _fails(model, A65, match, feeds)


@pytest.mark.parametrize("codes_dtype", [U8, U4])
def test_malformed_codebook_codes(codes_dtype):
    rng = np.random.default_rng(3)
    w = make_weights(rng, "CodebookGemm", 6, 5, k=3)
    w["codes"][2, 3] = 3
    _fails(op_model("CodebookGemm", 6, 5, w, codes_dtype=codes_dtype), A65, "codebook")
    w["codes"][2, 3] = 0
    w["codes"] = w["codes"][:, :4]
    _fails(op_model("CodebookGemm", 6, 5, w, codes_dtype=codes_dtype), A65, "codes must have shape")


@pytest.mark.parametrize("A,match", [(np.ones((2, 7), np.float32), r"A must have shape"),
                                     (np.ones((2, 3, 5), np.float32), r"A must have shape"),
                                     (np.array(1.0, np.float32), r"A must have shape")])
def test_malformed_A(A, match):
    _fails(op_model("SparseGemm", 6, 5, _sparse_w()), A, match)


@pytest.mark.parametrize("shape_attr,match", [("missing", "shape"), ([6], "shape"), ([6, 5, 1], "shape"),
                                              ([-6, 5], "shape"), ([7, 5], "outside|A must have shape")])
def test_malformed_shape_attribute(shape_attr, match):
    _fails(op_model("SparseGemm", 6, 5, _sparse_w(), shape_attr=shape_attr), A65, match)


def test_wrong_input_count_and_types():
    """The op schema (every input required, declared types) rejects these at load."""
    invalid_graph = ort.capi.onnxruntime_pybind11_state.InvalidGraph
    w = _sparse_w()
    with pytest.raises(invalid_graph):
        session(op_model("SparseGemm", 6, 5, w, inputs=("A", "values", "indices"))).run(None, {"A": A65})
    w["indices"] = w["indices"].astype(np.int64)
    with pytest.raises(invalid_graph, match="indices"):
        session(op_model("SparseGemm", 6, 5, w)).run(None, {"A": A65})
    w = _scb_w()
    w["codes"] = w["codes"].astype(np.int8)
    with pytest.raises(invalid_graph, match="codes"):
        session(op_model("SparseCodebookGemm", 6, 5, w)).run(None, {"A": A65})
