"""Loading onnxcomp's outputs (``onnxcomp/runtime.py``): ``InferenceSession`` decodes every DecodeWeight once (in
subgraphs too) and keeps the decoded buffers alive for later runs; ``unpack`` gives the plain-ONNX equivalent.
Packed outputs of the pass itself are run in ``tests/passes/test_pack_weights.py``."""

from __future__ import annotations

import gc

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxcomp import runtime
from onnxcomp.codecs import encode_weight, to_blob
from onnxcomp.kernels import schema
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
    gc.collect()
    x = rng.standard_normal((4, 32)).astype(np.float32)
    want = _float_run(runtime.unpack(proto), {"x": x, "c": np.array(True)})
    np.testing.assert_allclose(want, x @ w1 @ w2, rtol=1e-5, atol=1e-5)
    for _ in range(3):
        assert np.array_equal(sess.run(None, {"x": x, "c": np.array(True)})[0], want)
    plain = runtime.unpack(proto)
    assert {t.name for t in plain.graph.initializer} == {"W1"}  # b1/b2 gone; W2 lives in the branch
    assert "ai.onnxcomp" not in {o.domain for o in plain.opset_import}
