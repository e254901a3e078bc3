"""Loading and saving any exported model faithfully: subgraphs, RNNs, foreign domains, metadata, external data,
IR versions, an input that is never modified, atomic and deterministic writes, exporter weight patterns."""

from __future__ import annotations

import copy
import errno
import os
import pathlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import onnxcomp.ir.fileio
from onnxcomp.api import compress
from onnxcomp.errors import OutputError
from onnxcomp.ir.model import Model, lowest_ir_version
from onnxcomp.ir.weights import Layout, weight_table
from tests.conftest import rel_err, run_ort

TOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]
RESCNN = ROOT / "models" / "mnist_rescnn.onnx"
MNIST_CALIB = ROOT / "models" / "data" / "mnist_calib.npz"


def _rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _model(graph: onnx.GraphProto, opset: int = 17, extra: dict[str, int] | None = None, **kw) -> onnx.ModelProto:
    opsets = [h.make_opsetid("", opset)] + [h.make_opsetid(d, v) for d, v in (extra or {}).items()]
    m = h.make_model(graph, opset_imports=opsets, **kw)
    m.ir_version = 8 if opset <= 17 else m.ir_version
    onnx.checker.check_model(m)
    return m


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(proto, str(path))
    return path


def _assert_same_outputs(reference, candidate, feed: dict[str, np.ndarray]) -> None:
    ref, cand = run_ort(reference, feed), run_ort(candidate, feed)
    assert len(ref) == len(cand)
    for a, b in zip(ref, cand):
        assert a.shape == b.shape
        assert rel_err(a, b) <= TOL


def _uses(w) -> list[tuple[str, int, str]]:
    return [(u.op, u.slot, u.node.name) for u in w.uses]


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _all_nodes(sub)


def _branch(proto: onnx.ModelProto, name: str) -> onnx.GraphProto:
    node = next(n for n in proto.graph.node if n.op_type in ("If", "Loop"))
    return next(a.g for a in node.attribute if a.name == name)


# -- (a) If with weights in both branches ------------------------------------------------------------------
def _if_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    then_g = h.make_graph(
        [
            h.make_node("Constant", [], ["then_w"], value=nh.from_array(_rand(rng, 4, 4), "then_wv"),
                        name="then_const"),
            h.make_node("MatMul", ["x", "then_w"], ["then_mm"], name="then_matmul"),
            h.make_node("Add", ["then_mm", "then_b"], ["then_add"], name="then_add"),
            h.make_node("MatMul", ["then_add", "W_outer"], ["then_out"], name="then_outer_mm"),
        ],
        "then", [], [h.make_tensor_value_info("then_out", T.FLOAT, [2, 4])],
        [nh.from_array(_rand(rng, 4), "then_b")],
    )
    else_g = h.make_graph(
        [
            h.make_node("Constant", [], ["else_w"], value=nh.from_array(_rand(rng, 4, 4), "else_wv"),
                        name="else_const"),
            h.make_node("MatMul", ["x", "else_w"], ["else_mm"], name="else_matmul"),
            h.make_node("Mul", ["else_mm", "else_s"], ["else_out"], name="else_mul"),
        ],
        "else", [], [h.make_tensor_value_info("else_out", T.FLOAT, [2, 4])],
        [nh.from_array(_rand(rng, 4), "else_s")],
    )
    graph = h.make_graph(
        [h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="the_if")],
        "if_model",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 4]), h.make_tensor_value_info("cond", T.BOOL, [])],
        [h.make_tensor_value_info("y", T.FLOAT, [2, 4])],
        [nh.from_array(_rand(rng, 4, 4), "W_outer")],
    )
    return _model(graph)


def test_if_weight_table_finds_subgraph_weights(tmp_path):
    path = _save(_if_model(), tmp_path / "if.onnx")
    table = {w.name: w for w in weight_table(Model.load(path))}
    assert set(table) == {"then_w", "then_b", "W_outer", "else_w", "else_s"}
    assert table["then_w"].source == "constant" and _uses(table["then_w"]) == [("MatMul", 1, "then_matmul")]
    assert table["else_w"].source == "constant" and _uses(table["else_w"]) == [("MatMul", 1, "else_matmul")]
    assert table["then_b"].source == "initializer" and _uses(table["then_b"]) == [("Add", 1, "then_add")]
    assert table["else_s"].source == "initializer" and _uses(table["else_s"]) == [("Mul", 1, "else_mul")]
    # the outer-scope initializer is found through the graph boundary, at its consumer inside the branch
    assert table["W_outer"].source == "initializer"
    assert _uses(table["W_outer"]) == [("MatMul", 1, "then_outer_mm")]
    assert table["then_w"].role == table["else_w"].role == table["W_outer"].role == "weight"
    assert table["then_w"].layout == Layout(1, 0)


@pytest.mark.parametrize("cond", [True, False])
def test_if_round_trip_and_cleanup_keep_outputs(tmp_path, cond):
    path = _save(_if_model(), tmp_path / "if.onnx")
    feed = {"x": _rand(np.random.default_rng(1), 2, 4), "cond": np.array(cond)}
    out = Model.load(path).save(tmp_path / "saved.onnx")
    _assert_same_outputs(path, out, feed)
    cleaned = compress(path, recipe="cleanup").model.to_proto()
    _assert_same_outputs(path, cleaned, feed)
    # the branch Constants became initializers of their branch; nothing else in the branch changed
    then_g, else_g = _branch(cleaned, "then_branch"), _branch(cleaned, "else_branch")
    assert [n.op_type for n in then_g.node] == ["MatMul", "Add", "MatMul"]
    assert [n.op_type for n in else_g.node] == ["MatMul", "Mul"]
    assert {w.name for w in weight_table(Model.load(cleaned))} == {"then_w", "then_b", "W_outer", "else_w", "else_s"}


def test_outer_initializer_read_by_both_branches_is_stored_once():
    """An outer-scope weight read by both If branches must stay one main-graph initializer on save, not be copied
    into each branch (that doubles its bytes and turns one shared weight into two)."""
    rng = np.random.default_rng(2)

    def branch(name: str) -> onnx.GraphProto:
        return h.make_graph([h.make_node("MatMul", ["x", "W"], [name + "_o"], name=name + "_mm")], name, [],
                            [h.make_tensor_value_info(name + "_o", T.FLOAT, [2, 64])])

    graph = h.make_graph(
        [h.make_node("If", ["cond"], ["y"], then_branch=branch("t"), else_branch=branch("e"))], "m",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 64]), h.make_tensor_value_info("cond", T.BOOL, [])],
        [h.make_tensor_value_info("y", T.FLOAT, [2, 64])], [nh.from_array(_rand(rng, 64, 64), "W")],
    )
    proto = _model(graph)
    model = Model.load(proto)
    (w,) = weight_table(model)
    assert w.shared and len(w.uses) == 2
    saved = model.to_proto()
    assert [t.name for t in saved.graph.initializer] == ["W"]
    assert saved.ByteSize() <= proto.ByteSize() + 64
    reloaded = weight_table(Model.load(saved))
    assert len(reloaded) == 1 and reloaded[0].shared


# -- (b) Loop ------------------------------------------------------------------------------------------------
def _loop_model() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    body = h.make_graph(
        [
            h.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
            h.make_node("MatMul", ["h_in", "W"], ["mm"], name="body_mm"),
            h.make_node("Constant", [], ["Wb"], value=nh.from_array(_rand(rng, 4, 4, scale=0.5), "wbv"),
                        name="body_const"),
            h.make_node("MatMul", ["mm", "Wb"], ["mm2"], name="body_mm2"),
            h.make_node("Add", ["mm2", "b_body"], ["pre"], name="body_add"),
            h.make_node("Tanh", ["pre"], ["h_out"], name="body_tanh"),
        ],
        "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("h_in", T.FLOAT, [1, 4])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("h_out", T.FLOAT, [1, 4])],
        [nh.from_array(_rand(rng, 4, scale=0.1), "b_body")],
    )
    graph = h.make_graph(
        [h.make_node("Loop", ["trip", "", "x"], ["y"], body=body, name="loop")], "loop_model",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])],
        [nh.from_array(_rand(rng, 4, 4, scale=0.5), "W"), nh.from_array(np.array(3, np.int64), "trip")],
    )
    return _model(graph)


def test_loop_body_weights(tmp_path):
    path = _save(_loop_model(), tmp_path / "loop.onnx")
    table = {w.name: w for w in weight_table(Model.load(path))}
    assert set(table) == {"W", "Wb", "b_body"}  # the int64 trip count is not a float weight
    assert _uses(table["W"]) == [("MatMul", 1, "body_mm")]
    assert table["Wb"].source == "constant" and _uses(table["Wb"]) == [("MatMul", 1, "body_mm2")]
    assert _uses(table["b_body"]) == [("Add", 1, "body_add")]
    feed = {"x": _rand(np.random.default_rng(4), 1, 4)}
    _assert_same_outputs(path, Model.load(path).save(tmp_path / "saved.onnx"), feed)
    cleaned = compress(path, recipe="cleanup").model.to_proto()
    _assert_same_outputs(path, cleaned, feed)
    body = _branch(cleaned, "body")
    assert "Constant" not in [n.op_type for n in body.node]
    assert {w.name for w in weight_table(Model.load(cleaned))} == {"W", "Wb", "b_body"}


# -- (c) LSTM and GRU ---------------------------------------------------------------------------------------
def _rnn_model(op: str, gates: int, hidden: int = 5, inp: int = 3, seq: int = 4, batch: int = 2) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    graph = h.make_graph(
        [h.make_node(op, ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden, name="rnn")], "rnn",
        [h.make_tensor_value_info("x", T.FLOAT, [seq, batch, inp])],
        [h.make_tensor_value_info("Y", T.FLOAT, [seq, 1, batch, hidden]),
         h.make_tensor_value_info("Y_h", T.FLOAT, [1, batch, hidden])],
        [nh.from_array(_rand(rng, 1, gates * hidden, inp, scale=0.3), "W"),
         nh.from_array(_rand(rng, 1, gates * hidden, hidden, scale=0.3), "R"),
         nh.from_array(_rand(rng, 1, 2 * gates * hidden, scale=0.3), "B")],
    )
    return _model(graph)


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3)])
def test_rnn_weights_roles_layout_round_trip(tmp_path, op, gates):
    rng = np.random.default_rng(6)
    inp, seq, batch = 3, 4, 2
    path = _save(_rnn_model(op, gates), tmp_path / f"{op}.onnx")
    table = {w.name: w for w in weight_table(Model.load(path))}
    assert set(table) == {"W", "R", "B"}
    for name, slot in (("W", 1), ("R", 2)):
        assert table[name].role == "weight"
        assert table[name].layout == Layout(out_axis=1, in_axis=2)
        assert _uses(table[name]) == [(op, slot, "rnn")]
    assert table["B"].role == "bias" and _uses(table["B"]) == [(op, 3, "rnn")]

    feed = {"x": _rand(rng, seq, batch, inp)}
    saved = Model.load(path).save(tmp_path / "saved.onnx")
    _assert_same_outputs(path, saved, feed)
    _assert_same_outputs(path, compress(path, recipe="cleanup").model.to_proto(), feed)
    # untouched weights are written back bit-exact
    src = {t.name: t.raw_data for t in onnx.load(str(path)).graph.initializer}
    out = {t.name: t.raw_data for t in onnx.load(str(saved)).graph.initializer}
    assert src == out


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3)])
def test_rnn_bias_layout_channel_axis(op, gates):
    """B is [num_directions, 2 * gates * hidden]: its channels are on axis 1, as for W and R ([num_directions,
    gates * hidden, ...]); axis 0 is the direction axis, not output channels."""
    table = {w.name: w for w in weight_table(Model.load(_rnn_model(op, gates)))}
    assert table["W"].layout.out_axis == 1
    assert table["B"].layout == Layout(out_axis=1, in_axis=None)


# -- (d) ai.onnx.ml and com.microsoft ------------------------------------------------------------------------
def _foreign_domains_model() -> onnx.ModelProto:
    rng = np.random.default_rng(6)
    graph = h.make_graph(
        [
            h.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
            h.make_node("Gelu", ["mm"], ["g"], domain="com.microsoft", name="gelu"),
            h.make_node("FusedMatMul", ["g", "W2"], ["fm"], domain="com.microsoft", alpha=0.5, name="fused"),
            h.make_node("Normalizer", ["fm"], ["y"], domain="ai.onnx.ml", norm="L2", name="normalizer"),
        ],
        "foreign", [h.make_tensor_value_info("x", T.FLOAT, [2, 4])], [h.make_tensor_value_info("y", T.FLOAT, [2, 3])],
        [nh.from_array(_rand(rng, 4, 6), "W"), nh.from_array(_rand(rng, 6, 3), "W2")],
    )
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.onnx.ml", 3),
                                           h.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m


def _opsets(proto: onnx.ModelProto) -> dict[str, int]:
    return {o.domain: o.version for o in proto.opset_import}


def test_foreign_domain_opsets_survive(tmp_path):
    path = _save(_foreign_domains_model(), tmp_path / "foreign.onnx")
    want = {"": 17, "ai.onnx.ml": 3, "com.microsoft": 1}
    feed = {"x": _rand(np.random.default_rng(7), 2, 4)}
    saved = Model.load(path).save(tmp_path / "saved.onnx")
    assert _opsets(onnx.load(str(saved))) == want
    _assert_same_outputs(path, saved, feed)
    cleaned = compress(path, recipe="cleanup").model.to_proto()
    assert _opsets(cleaned) == want
    assert [(n.domain, n.op_type) for n in cleaned.graph.node] == [
        ("", "MatMul"), ("com.microsoft", "Gelu"), ("com.microsoft", "FusedMatMul"), ("ai.onnx.ml", "Normalizer")]
    _assert_same_outputs(path, cleaned, feed)
    table = {w.name: w for w in weight_table(Model.load(saved))}
    assert _uses(table["W2"]) == [("FusedMatMul", 1, "fused")]


# -- (e) metadata ---------------------------------------------------------------------------------------------
def _metadata_model() -> onnx.ModelProto:
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
        [nh.from_array(_rand(rng, 3, 3, 3, 3), "W"), nh.from_array(_rand(rng, 3), "Wb"),
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


def _model_fields(p: onnx.ModelProto) -> dict:
    return {
        "metadata_props": [(e.key, e.value) for e in p.metadata_props],
        "doc_string": p.doc_string,
        "graph_doc": p.graph.doc_string,
        "producer_name": p.producer_name,
        "producer_version": p.producer_version,
        "model_version": p.model_version,
        "domain": p.domain,
    }


def _node_fields(p: onnx.ModelProto) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    return {n.name: (n.doc_string, [(e.key, e.value) for e in n.metadata_props]) for n in _all_nodes(p.graph)}


def test_metadata_survives_round_trip(tmp_path):
    src = _metadata_model()
    path = _save(src, tmp_path / "meta.onnx")
    out = Model.load(path).save(tmp_path / "saved.onnx")
    reloaded = onnx.load(str(out))
    assert _model_fields(reloaded) == _model_fields(src)
    assert _node_fields(reloaded) == _node_fields(src)
    again = Model.load(out).to_proto()  # load -> save -> reload -> save
    assert _model_fields(again) == _model_fields(src) and _node_fields(again) == _node_fields(src)


def test_metadata_survives_cleanup(tmp_path):
    src = _metadata_model()
    path = _save(src, tmp_path / "meta.onnx")
    cleaned = compress(path, recipe="cleanup").model.to_proto()
    assert _model_fields(cleaned) == _model_fields(src)
    # BN is folded into the Conv and the Identity removed: the surviving nodes keep their own doc strings and
    # metadata (the Conv now writes the BN's output name but is still the Conv)
    assert [n.name for n in cleaned.graph.node] == ["conv", "relu"]
    want = _node_fields(src)
    assert _node_fields(cleaned) == {"conv": want["conv"], "relu": want["relu"]}
    _assert_same_outputs(path, cleaned, {"x": _rand(np.random.default_rng(9), 1, 3, 5, 5)})


# -- (f) external data ------------------------------------------------------------------------------------------
def _gemm_model(n: int = 64) -> onnx.ModelProto:
    rng = np.random.default_rng(10)
    graph = h.make_graph(
        [h.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc")], "gemm",
        [h.make_tensor_value_info("x", T.FLOAT, [2, n])], [h.make_tensor_value_info("y", T.FLOAT, [2, n])],
        [nh.from_array(_rand(rng, n, n), "W"), nh.from_array(_rand(rng, n), "B")],
    )
    return _model(graph)


def test_external_data_load_and_save(tmp_path):
    reference = _gemm_model()
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    ext = copy.deepcopy(reference)
    onnx.save_model(ext, str(src_dir / "in.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="in.onnx.data", size_threshold=0)
    assert (src_dir / "in.onnx.data").exists()

    model = Model.load(src_dir / "in.onnx")
    table = {w.name: w for w in weight_table(model)}
    assert set(table) == {"W", "B"}
    assert np.array_equal(table["W"].array, nh.to_array(reference.graph.initializer[0]))
    assert table["W"].role == "weight" and table["B"].role == "bias"

    out = model.save(out_dir / "out.onnx", external_data=True)
    assert out == out_dir / "out.onnx"
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.onnx", "out.onnx.data"]
    assert (out_dir / "out.onnx.data").stat().st_size >= 64 * 64 * 4
    assert (out_dir / "out.onnx").stat().st_size < 64 * 64 * 4
    feed = {"x": _rand(np.random.default_rng(11), 2, 64)}
    _assert_same_outputs(reference, str(out), feed)

    # reloading the external-data output works as well, and no temporary folder is left behind
    assert {w.name for w in weight_table(Model.load(out))} == {"W", "B"}
    single = model.save(out_dir / "single.onnx")  # external_data=None: a small model is one file
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.onnx", "out.onnx.data", "single.onnx"]
    inits = onnx.load(str(single), load_external_data=False).graph.initializer
    assert all(t.data_location != T.EXTERNAL for t in inits)
    _assert_same_outputs(reference, str(single), feed)


def test_external_data_cleanup_recipe_writes_single_file(tmp_path):
    reference = _gemm_model()
    ext = copy.deepcopy(reference)
    onnx.save_model(ext, str(tmp_path / "in.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    compress(tmp_path / "in.onnx", recipe="cleanup", output=out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.onnx", "o.onnx.report.json", "o.onnx.report.md"]
    _assert_same_outputs(reference, str(out), {"x": _rand(np.random.default_rng(12), 2, 64)})


# -- (g) IR version ------------------------------------------------------------------------------------------
def test_ir_version_lowered_to_what_opset_needs(tmp_path):
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["y"])], "ir",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 2])], [h.make_tensor_value_info("y", T.FLOAT, [2, 2])],
        [nh.from_array(np.arange(4, dtype=np.float32).reshape(2, 2), "W")],
    )
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 10
    path = _save(m, tmp_path / "ir10.onnx")
    assert lowest_ir_version(m) == 7
    out = Model.load(path).save(tmp_path / "saved.onnx")
    saved = onnx.load(str(out))
    assert saved.ir_version == 7
    feed = {"x": np.eye(2, dtype=np.float32)}
    _assert_same_outputs(path, out, feed)
    assert onnx.load(str(compress(path, output=tmp_path / "c.onnx").report.output)).ir_version == 7


def _int4_initializer() -> onnx.TensorProto:
    return h.make_tensor("w4", T.INT4, [4], [1, -2, 3, -4])


def test_int4_initializer_forces_ir_10():
    graph = h.make_graph(
        [h.make_node("Identity", ["x"], ["y"])], "int4",
        [h.make_tensor_value_info("x", T.FLOAT, [4])], [h.make_tensor_value_info("y", T.FLOAT, [4])],
        [_int4_initializer()],
    )
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    assert lowest_ir_version(m) >= 10
    # in a Constant node of a subgraph as well
    then_g = h.make_graph([h.make_node("Constant", [], ["c"], value=_int4_initializer())], "t", [],
                          [h.make_tensor_value_info("c", T.INT4, [4])])
    m2 = h.make_model(h.make_graph(
        [h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=then_g)], "g",
        [h.make_tensor_value_info("cond", T.BOOL, [])], [h.make_tensor_value_info("y", T.INT4, [4])]),
        opset_imports=[h.make_opsetid("", 13)])
    assert lowest_ir_version(m2) >= 10


def test_int4_model_saves_with_ir_10_and_runs(tmp_path):
    graph = h.make_graph(
        [h.make_node("DequantizeLinear", ["w4", "s"], ["w"]), h.make_node("Add", ["x", "w"], ["y"])], "int4",
        [h.make_tensor_value_info("x", T.FLOAT, [4])], [h.make_tensor_value_info("y", T.FLOAT, [4])],
        [_int4_initializer(), nh.from_array(np.array(0.5, np.float32), "s")],
    )
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 11
    path = _save(m, tmp_path / "int4.onnx")
    out = Model.load(path).save(tmp_path / "saved.onnx")
    assert onnx.load(str(out)).ir_version == 10
    (y,) = run_ort(out, {"x": np.zeros(4, np.float32)})
    assert y.tolist() == [0.5, -1.0, 1.5, -2.0]


# -- (h) the input is never modified -----------------------------------------------------------------------------
def test_compress_never_modifies_input(tmp_path):
    path = tmp_path / "in.onnx"
    path.write_bytes(RESCNN.read_bytes())
    os.utime(path, (1_000_000_000, 1_000_000_000))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    compress(path, recipe="cleanup", calibration=MNIST_CALIB, output=tmp_path / "out.onnx")
    compress(path, recipe="cleanup")  # in memory only
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx", "out.onnx.report.json",
                                                          "out.onnx.report.md"]


def test_compress_never_modifies_input_proto():
    proto = _metadata_model()
    before = proto.SerializeToString()
    compress(proto, recipe="cleanup")
    assert proto.SerializeToString() == before


def test_external_data_input_never_modified(tmp_path):
    ext = _gemm_model()
    onnx.save_model(ext, str(tmp_path / "in.onnx"), save_as_external_data=True, location="in.onnx.data",
                    size_threshold=0)
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    compress(tmp_path / "in.onnx", recipe="cleanup", output=tmp_path / "out.onnx")
    Model.load(tmp_path / "in.onnx").save(tmp_path / "ext.onnx", external_data=True)
    for name, state in files.items():
        assert ((tmp_path / name).read_bytes(), (tmp_path / name).stat().st_mtime_ns) == state


def test_external_data_save_never_overwrites_input_data_file(tmp_path):
    """PyTorch names the data file after the model it exported (model.onnx -> model.onnx.data); a user who renamed
    the .onnx and now saves to model.onnx with external data must not overwrite the input's weights."""
    src = _gemm_model()
    onnx.save_model(copy.deepcopy(src), str(tmp_path / "renamed.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model = Model.load(tmp_path / "renamed.onnx")
    w = next(w for w in weight_table(model) if w.name == "W")
    w.set(np.zeros_like(w.array))  # what a compression pass does
    try:
        model.save(tmp_path / "model.onnx", external_data=True)
    except OutputError:
        pass  # refusing is fine too
    for name, data in files.items():
        assert (tmp_path / name).read_bytes() == data, f"input file {name} was overwritten"
    reloaded = {w.name: w.array for w in weight_table(Model.load(tmp_path / "renamed.onnx"))}
    assert np.array_equal(reloaded["W"], nh.to_array(src.graph.initializer[0]))


def test_output_path_equal_to_input_is_refused(tmp_path):
    path = _save(_gemm_model(), tmp_path / "m.onnx")
    before = path.read_bytes()
    with pytest.raises(OutputError, match="input"):
        compress(path, output=tmp_path / "." / "m.onnx")
    with pytest.raises(OutputError):
        Model.load(path).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# -- (i) atomic saves -----------------------------------------------------------------------------------------
def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_save_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    model = Model.load(_gemm_model())
    real = pathlib.Path.write_bytes

    def half_then_fail(self, data):
        real(self, data[: len(data) // 2])
        _disk_full()

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_fail)
    with pytest.raises(OutputError, match="No space left"):
        model.save(tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_save_failing_midway_keeps_previous_file(tmp_path, monkeypatch):
    """Overwriting an existing output: a failed write leaves the old file as it was, and no temporary."""
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")
    model = Model.load(_gemm_model())
    real = pathlib.Path.write_bytes

    def half_then_fail(self, data):
        real(self, data[:10])
        _disk_full()

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_fail)
    with pytest.raises(OutputError):
        model.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"] and target.read_bytes() == b"previous"


def test_external_data_save_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    model = Model.load(_gemm_model())
    real = onnx.save_model

    def write_data_then_fail(proto, path, *args, **kwargs):
        Path(str(path) + ".data").write_bytes(b"\0" * 100)
        Path(path).write_bytes(b"partial")
        _disk_full()

    monkeypatch.setattr(onnx, "save_model", write_data_then_fail)
    with pytest.raises(OutputError):
        model.save(tmp_path / "out.onnx", external_data=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(onnx, "save_model", real)


def test_compress_failing_on_report_leaves_nothing(tmp_path, monkeypatch):
    """A run that fails while writing its report (disk full) is a user-facing OutputError and leaves neither the
    model nor a half set of reports behind."""
    path = _save(_gemm_model(), tmp_path / "in.onnx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real = pathlib.Path.write_text

    def fail_on_md(self, text, *args, **kwargs):
        if ".report.md" in self.name:
            real(self, text[:5], *args, **kwargs)
            _disk_full()
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", fail_on_md)
    with pytest.raises((OutputError, OSError)):
        compress(path, recipe="cleanup", output=out_dir / "out.onnx")
    assert sorted(p.name for p in out_dir.iterdir()) == []


def test_compress_report_write_error_is_output_error(tmp_path, monkeypatch):
    """A disk-full error while writing the report is a user-facing OutputError (CLI exit 2), not an internal one."""
    path = _save(_gemm_model(), tmp_path / "in.onnx")
    real = pathlib.Path.write_text

    def fail_on_report(self, text, *args, **kwargs):
        if ".report." in self.name:
            _disk_full()
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", fail_on_report)
    with pytest.raises(OutputError, match="No space left"):
        compress(path, recipe="cleanup", output=tmp_path / "out.onnx")


def test_staged_dir_removes_everything_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with onnxcomp.ir.fileio.staged_dir(tmp_path / "x.onnx") as stage:
            (stage / "x.onnx").write_bytes(b"abc")
            (stage / "x.onnx.data").write_bytes(b"abc")
            assert stage.name.startswith(".x.onnx.") and stage.parent == tmp_path
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_save_uses_user_file_mode(tmp_path):
    out = Model.load(_gemm_model()).save(tmp_path / "m.onnx")
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


# -- (j) determinism ------------------------------------------------------------------------------------------
def test_compress_is_deterministic(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}.onnx"
        compress(RESCNN, recipe="cleanup", calibration=MNIST_CALIB, output=out, seed=123)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    # and saving the same Model twice gives the same bytes
    model = Model.load(_if_model())
    a, b = model.save(tmp_path / "a.onnx"), model.save(tmp_path / "b.onnx")
    assert a.read_bytes() == b.read_bytes()


# -- (k) exporter weight patterns -------------------------------------------------------------------------------
def _exporter_patterns_model() -> onnx.ModelProto:
    rng = np.random.default_rng(13)
    kernel_t = _rand(rng, 6, 4)  # Keras stores [out, in] here and the converter transposes it
    nodes = [
        h.make_node("Constant", [], ["k_t"], value=nh.from_array(kernel_t, "k_tv"), name="keras_const"),
        h.make_node("Transpose", ["k_t"], ["kernel"], perm=[1, 0], name="keras_transpose"),
        h.make_node("MatMul", ["x", "kernel"], ["mm"], name="dense"),
        h.make_node("Constant", [], ["bias_flat"], value=nh.from_array(_rand(rng, 6), "bias_v"), name="paddle_const"),
        h.make_node("Constant", [], ["bias_shape"], value=nh.from_array(np.array([1, 6], np.int64), "shape_v"),
                    name="paddle_shape"),
        h.make_node("Reshape", ["bias_flat", "bias_shape"], ["bias"], name="paddle_reshape"),
        h.make_node("Add", ["mm", "bias"], ["y"], name="bias_add"),
    ]
    graph = h.make_graph(nodes, "exporters", [h.make_tensor_value_info("x", T.FLOAT, [3, 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, [3, 6])])
    return _model(graph)


def test_exporter_weight_patterns_become_initializers(tmp_path):
    path = _save(_exporter_patterns_model(), tmp_path / "exp.onnx")
    before = {w.name: w for w in weight_table(Model.load(path))}
    assert _uses(before["k_t"]) == [("Transpose", 0, "keras_transpose")]  # behind a Transpose: not yet a kernel
    result = compress(path, recipe="cleanup")
    cleaned = result.model.to_proto()
    assert [n.op_type for n in cleaned.graph.node] == ["MatMul", "Add"]
    table = {w.name: w for w in weight_table(result.model)}
    assert set(table) == {"kernel", "bias"}
    assert table["kernel"].source == "initializer" and table["kernel"].role == "weight"
    assert table["kernel"].shape == (4, 6) and _uses(table["kernel"]) == [("MatMul", 1, "dense")]
    assert table["kernel"].layout == Layout(1, 0)
    assert table["bias"].source == "initializer" and table["bias"].shape == (1, 6)
    assert _uses(table["bias"]) == [("Add", 1, "bias_add")]
    assert {t.name for t in cleaned.graph.initializer} == {"kernel", "bias"}
    _assert_same_outputs(path, cleaned, {"x": _rand(np.random.default_rng(14), 3, 4)})


# -- (l) shared weights and a BN fold that must not fire ---------------------------------------------------------
def _shared_conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(15)

    def bn_params(prefix: str) -> list[onnx.TensorProto]:
        return [nh.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), prefix + "_g"),
                nh.from_array(_rand(rng, 4, scale=0.1), prefix + "_b"),
                nh.from_array(_rand(rng, 4, scale=0.1), prefix + "_m"),
                nh.from_array(rng.uniform(0.5, 2.0, 4).astype(np.float32), prefix + "_v")]

    nodes = [
        # conv_a and conv_b share W and Wb; conv_a's BN folds, so W must be copied for conv_a only
        h.make_node("Conv", ["x", "W", "Wb"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        h.make_node("BatchNormalization", ["a", "bna_g", "bna_b", "bna_m", "bna_v"], ["a_bn"], name="bn_a"),
        h.make_node("Conv", ["x", "W", "Wb"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
        h.make_node("BatchNormalization", ["b", "bnb_g", "bnb_b", "bnb_m", "bnb_v"], ["b_bn"], name="bn_b"),
        # conv_c's output also feeds a Relu: its BN fold must not fire
        h.make_node("Conv", ["x", "W2"], ["c"], pads=[1, 1, 1, 1], name="conv_c"),
        h.make_node("BatchNormalization", ["c", "bnc_g", "bnc_b", "bnc_m", "bnc_v"], ["c_bn"], name="bn_c"),
        h.make_node("Relu", ["c"], ["c_relu"], name="relu_c"),
        h.make_node("Add", ["a_bn", "b_bn"], ["ab"], name="add_ab"),
        h.make_node("Add", ["ab", "c_bn"], ["abc"], name="add_abc"),
        h.make_node("Add", ["abc", "c_relu"], ["y"], name="add_y"),
    ]
    inits = [nh.from_array(_rand(rng, 4, 3, 3, 3, scale=0.3), "W"), nh.from_array(_rand(rng, 4, scale=0.1), "Wb"),
             nh.from_array(_rand(rng, 4, 3, 3, 3, scale=0.3), "W2")]
    inits += bn_params("bna") + bn_params("bnb") + bn_params("bnc")
    graph = h.make_graph(nodes, "shared", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 6, 6])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 6, 6])], inits)
    return _model(graph)


def test_shared_weight_stays_intact_for_other_user(tmp_path):
    src = _shared_conv_model()
    path = _save(src, tmp_path / "shared.onnx")
    original = {t.name: nh.to_array(t) for t in src.graph.initializer}
    before = {w.name: w for w in weight_table(Model.load(path))}
    assert before["W"].shared and [u.node.name for u in before["W"].uses] == ["conv_a", "conv_b"]

    result = compress(path, recipe="cleanup")
    cleaned = result.model.to_proto()
    _assert_same_outputs(path, cleaned, {"x": _rand(np.random.default_rng(16), 1, 3, 6, 6)})
    nodes = {n.name: n for n in cleaned.graph.node}
    # bn_a and bn_b folded, bn_c kept (conv_c's output also feeds relu_c)
    assert "bn_a" not in nodes and "bn_b" not in nodes and "bn_c" in nodes
    assert nodes["bn_c"].input[0] == "c" and nodes["relu_c"].input[0] == "c"
    inits = {t.name: nh.to_array(t) for t in cleaned.graph.initializer}
    assert np.array_equal(inits["W2"], original["W2"])  # conv_c untouched
    assert list(nodes["conv_c"].input) == ["x", "W2"]
    # every conv got its own folded copy; none of them writes into another's weights
    wa, wb = nodes["conv_a"].input[1], nodes["conv_b"].input[1]
    assert wa != wb
    for conv, bn in (("conv_a", "bna"), ("conv_b", "bnb")):
        scale = original[f"{bn}_g"] / np.sqrt(original[f"{bn}_v"] + 1e-5)
        w = inits[nodes[conv].input[1]]
        np.testing.assert_allclose(w, original["W"] * scale[:, None, None, None], rtol=1e-5, atol=1e-6)
        b = inits[nodes[conv].input[2]]
        np.testing.assert_allclose(b, (original["Wb"] - original[f"{bn}_m"]) * scale + original[f"{bn}_b"],
                                   rtol=1e-5, atol=1e-6)


def test_shared_weight_one_user_folds_other_keeps_original(tmp_path):
    """W is shared by conv_a (whose BN folds) and conv_b (no BN): conv_b must still read the original W."""
    rng = np.random.default_rng(17)
    W, Wb = _rand(rng, 4, 3, 3, 3, scale=0.3), _rand(rng, 4, scale=0.1)
    nodes = [
        h.make_node("Conv", ["x", "W", "Wb"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        h.make_node("BatchNormalization", ["a", "bn_g", "bn_beta", "bn_m", "bn_v"], ["a_bn"], name="bn_a"),
        h.make_node("Conv", ["x", "W", "Wb"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
        h.make_node("Add", ["a_bn", "b"], ["y"], name="add"),
    ]
    graph = h.make_graph(
        nodes, "shared2", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 6, 6])],
        [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 6, 6])],
        [nh.from_array(W, "W"), nh.from_array(Wb, "Wb"),
         nh.from_array(np.full(4, 2.0, np.float32), "bn_g"), nh.from_array(np.full(4, 0.5, np.float32), "bn_beta"),
         nh.from_array(np.full(4, 0.1, np.float32), "bn_m"), nh.from_array(np.full(4, 0.25, np.float32), "bn_v")],
    )
    path = _save(_model(graph), tmp_path / "shared2.onnx")
    cleaned = compress(path, recipe="cleanup").model.to_proto()
    nodes = {n.name: n for n in cleaned.graph.node}
    inits = {t.name: nh.to_array(t) for t in cleaned.graph.initializer}
    assert "bn_a" not in nodes
    assert list(nodes["conv_b"].input) == ["x", "W", "Wb"]
    assert np.array_equal(inits["W"], W) and np.array_equal(inits["Wb"], Wb)
    assert nodes["conv_a"].input[1] != "W" and nodes["conv_a"].input[2] != "Wb"
    _assert_same_outputs(path, cleaned, {"x": _rand(rng, 1, 3, 6, 6)})


# -- more exporter shapes ----------------------------------------------------------------------------------------
def test_local_function_model_round_trip(tmp_path):
    fn = h.make_function("custom", "MatRelu", ["a", "b"], ["c"],
                         [h.make_node("MatMul", ["a", "b"], ["t"]), h.make_node("Relu", ["t"], ["c"])],
                         [h.make_opsetid("", 17)])
    graph = h.make_graph(
        [h.make_node("MatRelu", ["x", "W"], ["y"], domain="custom", name="fn")], "fn",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 2])], [h.make_tensor_value_info("y", T.FLOAT, [2, 2])],
        [nh.from_array(np.array([[1, -2], [3, -4]], np.float32), "W")],
    )
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("custom", 1)], functions=[fn])
    m.ir_version = 8
    path = _save(m, tmp_path / "fn.onnx")
    feed = {"x": np.array([[1, 2], [3, 4]], np.float32)}
    out = Model.load(path).save(tmp_path / "saved.onnx")
    saved = onnx.load(str(out))
    assert [f.name for f in saved.functions] == ["MatRelu"] and _opsets(saved) == {"": 17, "custom": 1}
    _assert_same_outputs(path, out, feed)
    _assert_same_outputs(path, compress(path, recipe="cleanup").model.to_proto(), feed)


def test_rescnn_round_trip_bit_exact_weights(tmp_path):
    out = Model.load(RESCNN).save(tmp_path / "rescnn.onnx")
    src = {t.name: t.SerializeToString() for t in onnx.load(str(RESCNN)).graph.initializer}
    dst = {t.name: t.SerializeToString() for t in onnx.load(str(out)).graph.initializer}
    assert src == dst
    x = np.load(MNIST_CALIB)["input"][:4]
    _assert_same_outputs(RESCNN, out, {"input": x})
