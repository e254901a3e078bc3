"""Helpers shared by more than one test folder: tiny graphs (subgraphs, RNNs, metadata, a Gemm), the onnxruntime
check that two models compute the same, streamed statistics, and the Q/DQ tests' int8 stand-in models and runs.
A helper that one test file needs stays in that file."""

from __future__ import annotations

import errno
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxcomp.calibration.data import CalibrationData
from onnxcomp.calibration.stats import RunningStats
from onnxcomp.ir.model import Model
from onnxcomp.passes.base import PassContext
from onnxcomp.passes.quantize_activations import QuantizeActivations, QuantizeActivationsConfig
from tests.conftest import rel_err, run_ort

TOL = 1e-5


# -- tiny graphs for model I/O and graph passes ------------------------------------------------------------------
def rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    """Standard normal float32 values of ``shape``, times ``scale``."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def checked_model(graph: onnx.GraphProto, opset: int = 17, extra: dict[str, int] | None = None,
                  **kw) -> onnx.ModelProto:
    """A model of ``graph`` at ``opset`` (plus ``extra`` domains), checked by onnx."""
    opsets = [h.make_opsetid("", opset)] + [h.make_opsetid(d, v) for d, v in (extra or {}).items()]
    m = h.make_model(graph, opset_imports=opsets, **kw)
    m.ir_version = 8 if opset <= 17 else m.ir_version
    onnx.checker.check_model(m)
    return m


def tiny_model(nodes, inits, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
    """A main graph of ``nodes`` at ``opset``, IR version 8."""
    graph = h.make_graph(nodes, "g", inputs, outputs, inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def float_vi(name: str, *shape) -> onnx.ValueInfoProto:
    """A float32 value info of ``shape``."""
    return h.make_tensor_value_info(name, T.FLOAT, list(shape))


def save(proto: onnx.ModelProto, path: Path) -> Path:
    """``proto`` written to ``path``; returns ``path``."""
    onnx.save_model(proto, str(path))
    return path


def assert_same_outputs(reference, candidate, feed: dict[str, np.ndarray]) -> None:
    """onnxruntime gives both models the same outputs on ``feed`` (shapes equal, rel err <= TOL)."""
    ref, cand = run_ort(reference, feed), run_ort(candidate, feed)
    assert len(ref) == len(cand)
    for a, b in zip(ref, cand):
        assert a.shape == b.shape
        assert rel_err(a, b) <= TOL


def weight_uses(w) -> list[tuple[str, int, str]]:
    """A weight-table entry's uses as (op, slot, node name)."""
    return [(u.op, u.slot, u.node.name) for u in w.uses]


def all_nodes(graph: onnx.GraphProto):
    """Every node of ``graph`` and of its subgraphs, depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from all_nodes(sub)


def if_model() -> onnx.ModelProto:
    """An If whose branches hold Constant-node weights and initializers, one branch reading an outer initializer."""
    rng = np.random.default_rng(0)
    then_g = h.make_graph(
        [
            h.make_node("Constant", [], ["then_w"], value=nh.from_array(rand(rng, 4, 4), "then_wv"),
                        name="then_const"),
            h.make_node("MatMul", ["x", "then_w"], ["then_mm"], name="then_matmul"),
            h.make_node("Add", ["then_mm", "then_b"], ["then_add"], name="then_add"),
            h.make_node("MatMul", ["then_add", "W_outer"], ["then_out"], name="then_outer_mm"),
        ],
        "then", [], [h.make_tensor_value_info("then_out", T.FLOAT, [2, 4])],
        [nh.from_array(rand(rng, 4), "then_b")],
    )
    else_g = h.make_graph(
        [
            h.make_node("Constant", [], ["else_w"], value=nh.from_array(rand(rng, 4, 4), "else_wv"),
                        name="else_const"),
            h.make_node("MatMul", ["x", "else_w"], ["else_mm"], name="else_matmul"),
            h.make_node("Mul", ["else_mm", "else_s"], ["else_out"], name="else_mul"),
        ],
        "else", [], [h.make_tensor_value_info("else_out", T.FLOAT, [2, 4])],
        [nh.from_array(rand(rng, 4), "else_s")],
    )
    graph = h.make_graph(
        [h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="the_if")],
        "if_model",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 4]), h.make_tensor_value_info("cond", T.BOOL, [])],
        [h.make_tensor_value_info("y", T.FLOAT, [2, 4])],
        [nh.from_array(rand(rng, 4, 4), "W_outer")],
    )
    return checked_model(graph)


def loop_model() -> onnx.ModelProto:
    """A Loop (3 trips) whose body reads an outer weight, a body Constant and a body initializer."""
    rng = np.random.default_rng(3)
    body = h.make_graph(
        [
            h.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
            h.make_node("MatMul", ["h_in", "W"], ["mm"], name="body_mm"),
            h.make_node("Constant", [], ["Wb"], value=nh.from_array(rand(rng, 4, 4, scale=0.5), "wbv"),
                        name="body_const"),
            h.make_node("MatMul", ["mm", "Wb"], ["mm2"], name="body_mm2"),
            h.make_node("Add", ["mm2", "b_body"], ["pre"], name="body_add"),
            h.make_node("Tanh", ["pre"], ["h_out"], name="body_tanh"),
        ],
        "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("h_in", T.FLOAT, [1, 4])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("h_out", T.FLOAT, [1, 4])],
        [nh.from_array(rand(rng, 4, scale=0.1), "b_body")],
    )
    graph = h.make_graph(
        [h.make_node("Loop", ["trip", "", "x"], ["y"], body=body, name="loop")], "loop_model",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])],
        [nh.from_array(rand(rng, 4, 4, scale=0.5), "W"), nh.from_array(np.array(3, np.int64), "trip")],
    )
    return checked_model(graph)


def rnn_model(op: str, gates: int, hidden: int = 5, inp: int = 3, seq: int = 4, batch: int = 2) -> onnx.ModelProto:
    """One LSTM or GRU (``op`` with ``gates`` gates) with W, R and B initializers."""
    rng = np.random.default_rng(5)
    graph = h.make_graph(
        [h.make_node(op, ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden, name="rnn")], "rnn",
        [h.make_tensor_value_info("x", T.FLOAT, [seq, batch, inp])],
        [h.make_tensor_value_info("Y", T.FLOAT, [seq, 1, batch, hidden]),
         h.make_tensor_value_info("Y_h", T.FLOAT, [1, batch, hidden])],
        [nh.from_array(rand(rng, 1, gates * hidden, inp, scale=0.3), "W"),
         nh.from_array(rand(rng, 1, gates * hidden, hidden, scale=0.3), "R"),
         nh.from_array(rand(rng, 1, 2 * gates * hidden, scale=0.3), "B")],
    )
    return checked_model(graph)


def metadata_model() -> onnx.ModelProto:
    """Conv -> BN -> Identity -> Relu with model, graph and node doc strings and metadata_props."""
    rng = np.random.default_rng(8)
    nodes = [
        h.make_node("Conv", ["x", "W", "Wb"], ["c"], name="conv", pads=[1, 1, 1, 1], doc_string="conv doc"),
        h.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn_out"], name="bn", doc_string="bn doc"),
        h.make_node("Identity", ["bn_out"], ["ident_out"], name="ident", doc_string="identity doc"),
        h.make_node("Relu", ["ident_out"], ["y"], name="relu", doc_string="relu doc"),
    ]
    for n in nodes:
        n.metadata_props.add(key="source", value=f"{n.name}.py:{len(n.name)}")
    graph = h.make_graph(
        nodes, "meta", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 5, 5])],
        [h.make_tensor_value_info("y", T.FLOAT, [1, 3, 5, 5])],
        [nh.from_array(rand(rng, 3, 3, 3, 3), "W"), nh.from_array(rand(rng, 3), "Wb"),
         nh.from_array(np.full(3, 1.5, np.float32), "g"), nh.from_array(np.full(3, 0.1, np.float32), "b"),
         nh.from_array(np.full(3, 0.2, np.float32), "m"), nh.from_array(np.full(3, 2.0, np.float32), "v")],
        doc_string="graph doc",
    )
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], producer_name="pytorch", producer_version="2.1.0",
                     model_version=7, domain="org.example.models", doc_string="model doc")
    h.set_model_props(m, {"author": "someone", "license": "MIT", "converted_from": "model.pt"})
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def gemm_model(n: int = 64) -> onnx.ModelProto:
    """One Gemm with an n x n weight and a bias."""
    rng = np.random.default_rng(10)
    graph = h.make_graph(
        [h.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc")], "gemm",
        [h.make_tensor_value_info("x", T.FLOAT, [2, n])], [h.make_tensor_value_info("y", T.FLOAT, [2, n])],
        [nh.from_array(rand(rng, n, n), "W"), nh.from_array(rand(rng, n), "B")],
    )
    return checked_model(graph)


def pruned_and_shared(w: np.ndarray, sparsity: float = 0.9, levels: int = 16) -> np.ndarray:
    """``w`` pruned and shared with plain numpy: the ``sparsity`` smallest magnitudes set to 0, the rest snapped to
    ``levels`` values evenly spaced between the kept minimum and maximum (what packing and decoding must keep)."""
    keep = np.abs(w) > np.quantile(np.abs(w), sparsity)
    book = np.linspace(w[keep].min(), w[keep].max(), levels).astype(w.dtype)
    nearest = np.abs(w[..., None] - book).argmin(axis=-1)
    return np.where(keep, book[nearest], 0).astype(w.dtype)


def disk_full(*_args, **_kwargs):
    """Stands in for a write that fails because the disk is full."""
    raise OSError(errno.ENOSPC, "No space left on device")


# -- streaming statistics (calibration/, analysis/) --------------------------------------------------------------
def streamed_stats(x: np.ndarray, chunks: int = 5) -> RunningStats:
    """``RunningStats`` (no per-channel moments) of ``x`` fed in ``chunks`` pieces, doubling its range on the way."""
    stats = RunningStats(channels=False)
    for c in np.array_split(x, chunks):
        stats.update(c)
    return stats


# -- static activation quantization (passes/quantize_activations, emit/) -----------------------------------------
def seeded_init(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    """Seeded by name: a builder called twice gives the same weights."""
    rng = np.random.default_rng(sum(map(ord, name)))
    return nh.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def resnetish() -> onnx.ModelProto:
    """Conv-Relu-MaxPool, a residual Conv + Add + Relu, GlobalAveragePool-Flatten-Gemm head."""
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        h.make_node("Add", ["c2", "p1"], ["a"], name="add"),
        h.make_node("Relu", ["a"], ["r2"], name="relu2"),
        h.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        h.make_node("Flatten", ["g"], ["f"], name="flatten"),
        h.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    inits = [
        seeded_init("w1", 8, 3, 3, 3),
        seeded_init("b1", 8, scale=0.1),
        seeded_init("w2", 8, 8, 3, 3, scale=0.15),
        seeded_init("b2", 8, scale=0.1),
        seeded_init("wf", 4, 8),
        seeded_init("bf", 4, scale=0.1),
    ]
    return tiny_model(nodes, inits, [float_vi("x", "N", 3, 8, 8)], [float_vi("logits", "N", 4)])


def int8_weights(proto: onnx.ModelProto, zero_point: bool = False) -> onnx.ModelProto:
    """Stand-in for quantize_weights: per-channel symmetric int8 kernels behind a DequantizeLinear that keeps the
    weight's name (the interface quantize_activations reads)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    dq_nodes = []
    for node in g.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in inits:
            continue
        w = nh.to_array(inits[node.input[1]])
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 1 if node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b) else 0
        amax = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis))
        scale = np.where(amax > 0, amax / 127, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        name = node.input[1]
        g.initializer.remove(inits.pop(name))
        g.initializer.extend([nh.from_array(q, name + "_q"), nh.from_array(scale, name + "_s")])
        dq_in = [name + "_q", name + "_s"]
        if zero_point:
            g.initializer.append(nh.from_array(np.zeros(scale.shape, np.int8), name + "_z"))
            dq_in.append(name + "_z")
        dq_nodes.append(h.make_node("DequantizeLinear", dq_in, [name], axis=axis, name=name + "_dq"))
    nodes = dq_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return out


def random_calibration(proto: onnx.ModelProto, shape: tuple[int, ...], n: int = 4, seed: int = 1) -> CalibrationData:
    """``n`` seeded standard-normal feeds of input ``x``."""
    rng = np.random.default_rng(seed)
    return CalibrationData.from_source([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)], proto)


def quantize_activations(proto: onnx.ModelProto, data: CalibrationData, **options):
    """The proto after QuantizeActivations with ``options``, and the pass's result."""
    model = Model.load(proto)
    result = QuantizeActivations(QuantizeActivationsConfig(**options)).run(model, PassContext(calibration=data))
    return model.to_proto(), result


def optimized_ops(proto: onnx.ModelProto, tmp_path) -> Counter:
    """Op types of onnxruntime's optimized graph (what it actually runs on CPU)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def consumers(proto: onnx.ModelProto, tensor: str) -> list[str]:
    """Op types of the main-graph nodes that read ``tensor``."""
    return [n.op_type for n in proto.graph.node if tensor in n.input]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays over all elements."""
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
