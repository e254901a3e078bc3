"""Loading onnxcomp's outputs (``onnxcomp/runtime.py``): ``InferenceSession`` decodes every DecodeWeight once (in
subgraphs too) and keeps the decoded buffers alive for later runs; ``unpack`` gives the plain-ONNX equivalent. With
the native library the kernel decodes them, to the same bits and with the same errors as the numpy reference.
Packed outputs of the pass itself are run in ``tests/passes/test_pack_weights.py``."""

from __future__ import annotations

import gc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp import runtime
from onnxcomp.codecs import encode_weight, to_blob
from onnxcomp.codecs.stack import from_blob
from onnxcomp.errors import CodecError
from onnxcomp.kernels import library, schema
from tests.conftest import ROOT
from tests.helpers import pruned_and_shared


def _float_run(proto: onnx.ModelProto, feed) -> np.ndarray:
    """Stock onnxruntime's first output."""
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_runtime_decodes_in_subgraphs_and_keeps_buffers_alive():
    """DecodeWeight in an If branch (decoded into that branch) and a main-graph one read from inside the branch."""
    rng = np.random.default_rng(6)
    w1, w2 = (pruned_and_shared(rng.standard_normal((32, 32)).astype(np.float32)) for _ in range(2))
    blob1, blob2 = (numpy_helper.from_array(to_blob(encode_weight(w)), n) for w, n in ((w1, "b1"), (w2, "b2")))
    decode = {"domain": schema.DOMAIN, "shape": [32, 32], "dtype": TensorProto.FLOAT}
    out = helper.make_tensor_value_info("t", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node(schema.DECODE_OP, ["b2"], ["W2"], **decode),
                              helper.make_node("MatMul", ["x", "W1"], ["h"]),
                              helper.make_node("MatMul", ["h", "W2"], ["t"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "else", [], [out])
    nodes = [helper.make_node(schema.DECODE_OP, ["b1"], ["W1"], **decode),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                           helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [blob1, blob2])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(schema.DOMAIN, 1)])
    proto.ir_version = 8
    sess = runtime.InferenceSession(proto)
    assert sess.native_weights == (2 if runtime.native_kernels() else 0)  # the branch's weight too
    gc.collect()
    x = rng.standard_normal((4, 32)).astype(np.float32)
    want = _float_run(runtime.unpack(proto), {"x": x, "c": np.array(True)})
    np.testing.assert_allclose(want, x @ w1 @ w2, rtol=1e-5, atol=1e-5)
    for _ in range(3):
        assert np.array_equal(sess.run(None, {"x": x, "c": np.array(True)})[0], want)
    plain = runtime.unpack(proto)
    assert {t.name for t in plain.graph.initializer} == {"W1"}  # b1/b2 gone; W2 lives in the branch
    assert "ai.onnxcomp" not in {o.domain for o in plain.opset_import}


# -- the native DecodeWeight kernel (kernels/native): the same weights and errors as the numpy reference ----------
native = pytest.mark.skipif(library.library_path() is None, reason=f"no native library: {library.absent_reason()}")


def _packed_model(blobs: dict[str, np.ndarray], decode_attrs: dict[str, dict], extra_nodes=()) -> onnx.ModelProto:
    """DecodeWeight nodes (one per blob, output ``W_<name>``) whose outputs are the graph's outputs."""
    nodes = [helper.make_node(schema.DECODE_OP, [name], [f"W_{name}"], domain=schema.DOMAIN, **decode_attrs[name])
             for name in blobs]
    outputs = [helper.make_tensor_value_info(f"W_{name}", decode_attrs[name]["dtype"], None) for name in blobs]
    graph = helper.make_graph([*nodes, *extra_nodes], "g", [], outputs,
                              [numpy_helper.from_array(b, name) for name, b in blobs.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(schema.DOMAIN, 1)])
    proto.ir_version = 8
    return proto


def _attrs(w: np.ndarray) -> dict:
    return {"shape": list(w.shape), "dtype": helper.np_dtype_to_tensor_dtype(w.dtype)}


@native
def test_native_kernel_decodes_what_the_reference_decodes(monkeypatch):
    rng = np.random.default_rng(3)
    weights = {"a": pruned_and_shared(rng.standard_normal((64, 48)).astype(np.float32)),
               "b": rng.integers(-4, 4, (5, 7)).astype(np.int8),
               "c": np.zeros((1000,), np.float64)}
    weights["c"][::97] = 1.5
    blobs = {n: to_blob(encode_weight(w)) for n, w in weights.items()}
    # A version-1 blob (JSON meta): the kernel leaves it to the reference.
    legacy = np.fromfile(ROOT / "kernels" / "testdata" / "legacy_v1_sparse.blob", dtype=np.uint8)
    weights["v1"] = np.load(ROOT / "kernels" / "testdata" / "legacy_v1_sparse.npy")
    blobs["v1"] = legacy
    proto = _packed_model(blobs, {n: _attrs(w) for n, w in weights.items()})
    assert runtime.native_kernels()
    sess = runtime.InferenceSession(proto)
    assert sess.native_weights == 3 and sess.kernels_note is None
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {})))
    for name, w in weights.items():
        assert got[f"W_{name}"].dtype == w.dtype and got[f"W_{name}"].tobytes() == w.tobytes()
    plain = runtime.unpack(proto)
    assert {t.name for t in plain.graph.initializer} == {f"W_{n}" for n in weights}
    monkeypatch.setenv("ONNXCOMP_NO_NATIVE", "1")
    assert not runtime.native_kernels()
    python = runtime.InferenceSession(proto)
    assert python.native_weights == 0
    assert all(np.array_equal(a, b) for a, b in zip(python.run(None, {}), sess.run(None, {})))
    assert runtime.unpack(proto) == plain


@native
@pytest.mark.parametrize("case", ["sparse_gaps_past_end", "index_outside_codebook", "bad_crc", "attribute"])
def test_native_kernel_fails_with_the_reference_message(monkeypatch, case):
    blob = np.fromfile(ROOT / "kernels" / "testdata" / f"{case if case != 'attribute' else 'plain_int8'}.blob",
                       dtype=np.uint8)
    if case == "bad_crc":
        attrs = {"shape": [4], "dtype": TensorProto.FLOAT}
    else:
        enc = from_blob(blob)
        attrs = {"shape": list(enc.shape), "dtype": helper.np_dtype_to_tensor_dtype(np.dtype(enc.dtype))}
        if case == "attribute":
            attrs["shape"] = [*attrs["shape"], 1]
    proto = _packed_model({"blob": blob}, {"blob": attrs})
    messages = []
    for off in ("", "1"):
        monkeypatch.setenv("ONNXCOMP_NO_NATIVE", off)
        with pytest.raises(CodecError) as info:
            runtime.InferenceSession(proto)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and messages[0].startswith("malformed packed weight 'W_blob': ")
    monkeypatch.delenv("ONNXCOMP_NO_NATIVE")
    so = ort.SessionOptions()
    so.log_severity_level = 4
    assert library.register(so)
    with pytest.raises(Exception) as info:  # the kernel itself, in a plain onnxruntime session: the same words
        ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {})
    assert messages[0] in str(info.value)


def test_kernels_note_only_for_compute_ops_without_the_library(monkeypatch):
    w = pruned_and_shared(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))
    proto = _packed_model({"b": to_blob(encode_weight(w))}, {"b": _attrs(w)})
    monkeypatch.setenv("ONNXCOMP_NO_NATIVE", "1")
    assert runtime.InferenceSession(proto).kernels_note is None  # DecodeWeight alone: decoded in Python, no note
    compute = helper.make_node("SparseGemm", ["x", "v", "i", "bias"], ["y"], domain=schema.DOMAIN)
    proto.graph.node.append(compute)
    assert runtime.kernels_note(proto) == library.absent_reason() and "ONNXCOMP_NO_NATIVE" in library.absent_reason()
    monkeypatch.delenv("ONNXCOMP_NO_NATIVE")
    if library.library_path() is not None:
        assert runtime.kernels_note(proto) is None
