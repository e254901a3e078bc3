"""Loading and saving any exported model faithfully (``onnxcomp/ir/model.py``): subgraphs, RNNs, foreign
domains, metadata, external data, IR versions, local functions; each round trip and the ``cleanup`` recipe keep
onnxruntime's outputs. The weight table is ``test_weights.py``'s, atomic writes ``test_fileio.py``'s, what
``compress`` leaves on disk ``tests/test_api.py``'s."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxcomp.api import compress
from onnxcomp.errors import OutputError
from onnxcomp.ir.model import Model, lowest_ir_version
from onnxcomp.ir.weights import Layout, weight_table
from tests.conftest import ROOT, run_ort
from tests.helpers import (
    all_nodes,
    assert_same_outputs,
    checked_model,
    gemm_model,
    if_model,
    loop_model,
    metadata_model,
    rand,
    rnn_model,
    save,
    weight_uses,
)

RESCNN = ROOT / "models" / "mnist_rescnn.onnx"
MNIST_CALIB = ROOT / "models" / "data" / "mnist_calib.npz"


def _branch(proto: onnx.ModelProto, name: str) -> onnx.GraphProto:
    node = next(n for n in proto.graph.node if n.op_type in ("If", "Loop"))
    return next(a.g for a in node.attribute if a.name == name)


# -- (a) If with weights in both branches ------------------------------------------------------------------
@pytest.mark.parametrize("cond", [True, False])
def test_if_round_trip_and_cleanup_keep_outputs(tmp_path, cond):
    path = save(if_model(), tmp_path / "if.onnx")
    feed = {"x": rand(np.random.default_rng(1), 2, 4), "cond": np.array(cond)}
    out = Model.load(path).save(tmp_path / "saved.onnx")
    assert_same_outputs(path, out, feed)
    cleaned = compress(path, recipe="cleanup").model.to_proto()
    assert_same_outputs(path, cleaned, feed)
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
        [h.make_tensor_value_info("y", T.FLOAT, [2, 64])], [nh.from_array(rand(rng, 64, 64), "W")],
    )
    proto = checked_model(graph)
    model = Model.load(proto)
    (w,) = weight_table(model)
    assert w.shared and len(w.uses) == 2
    saved = model.to_proto()
    assert [t.name for t in saved.graph.initializer] == ["W"]
    assert saved.ByteSize() <= proto.ByteSize() + 64
    reloaded = weight_table(Model.load(saved))
    assert len(reloaded) == 1 and reloaded[0].shared


# -- (b) Loop ------------------------------------------------------------------------------------------------
def test_loop_body_weights(tmp_path):
    path = save(loop_model(), tmp_path / "loop.onnx")
    table = {w.name: w for w in weight_table(Model.load(path))}
    assert set(table) == {"W", "Wb", "b_body"}  # the int64 trip count is not a float weight
    assert weight_uses(table["W"]) == [("MatMul", 1, "body_mm")]
    assert table["Wb"].source == "constant" and weight_uses(table["Wb"]) == [("MatMul", 1, "body_mm2")]
    assert weight_uses(table["b_body"]) == [("Add", 1, "body_add")]
    feed = {"x": rand(np.random.default_rng(4), 1, 4)}
    assert_same_outputs(path, Model.load(path).save(tmp_path / "saved.onnx"), feed)
    cleaned = compress(path, recipe="cleanup").model.to_proto()
    assert_same_outputs(path, cleaned, feed)
    body = _branch(cleaned, "body")
    assert "Constant" not in [n.op_type for n in body.node]
    assert {w.name for w in weight_table(Model.load(cleaned))} == {"W", "Wb", "b_body"}


# -- (c) LSTM and GRU ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3)])
def test_rnn_weights_roles_layout_round_trip(tmp_path, op, gates):
    rng = np.random.default_rng(6)
    inp, seq, batch = 3, 4, 2
    path = save(rnn_model(op, gates), tmp_path / f"{op}.onnx")
    table = {w.name: w for w in weight_table(Model.load(path))}
    assert set(table) == {"W", "R", "B"}
    for name, slot in (("W", 1), ("R", 2)):
        assert table[name].role == "weight"
        assert table[name].layout == Layout(out_axis=1, in_axis=2)
        assert weight_uses(table[name]) == [(op, slot, "rnn")]
    assert table["B"].role == "bias" and weight_uses(table["B"]) == [(op, 3, "rnn")]

    feed = {"x": rand(rng, seq, batch, inp)}
    saved = Model.load(path).save(tmp_path / "saved.onnx")
    assert_same_outputs(path, saved, feed)
    assert_same_outputs(path, compress(path, recipe="cleanup").model.to_proto(), feed)
    # untouched weights are written back bit-exact
    src = {t.name: t.raw_data for t in onnx.load(str(path)).graph.initializer}
    out = {t.name: t.raw_data for t in onnx.load(str(saved)).graph.initializer}
    assert src == out


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
        [nh.from_array(rand(rng, 4, 6), "W"), nh.from_array(rand(rng, 6, 3), "W2")],
    )
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.onnx.ml", 3),
                                           h.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m


def _opsets(proto: onnx.ModelProto) -> dict[str, int]:
    return {o.domain: o.version for o in proto.opset_import}


def test_foreign_domain_opsets_survive(tmp_path):
    path = save(_foreign_domains_model(), tmp_path / "foreign.onnx")
    want = {"": 17, "ai.onnx.ml": 3, "com.microsoft": 1}
    feed = {"x": rand(np.random.default_rng(7), 2, 4)}
    saved = Model.load(path).save(tmp_path / "saved.onnx")
    assert _opsets(onnx.load(str(saved))) == want
    assert_same_outputs(path, saved, feed)
    cleaned = compress(path, recipe="cleanup").model.to_proto()
    assert _opsets(cleaned) == want
    assert [(n.domain, n.op_type) for n in cleaned.graph.node] == [
        ("", "MatMul"), ("com.microsoft", "Gelu"), ("com.microsoft", "FusedMatMul"), ("ai.onnx.ml", "Normalizer")]
    assert_same_outputs(path, cleaned, feed)
    table = {w.name: w for w in weight_table(Model.load(saved))}
    assert weight_uses(table["W2"]) == [("FusedMatMul", 1, "fused")]


# -- (e) metadata ---------------------------------------------------------------------------------------------
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
    return {n.name: (n.doc_string, [(e.key, e.value) for e in n.metadata_props]) for n in all_nodes(p.graph)}


def test_metadata_survives_round_trip(tmp_path):
    src = metadata_model()
    path = save(src, tmp_path / "meta.onnx")
    out = Model.load(path).save(tmp_path / "saved.onnx")
    reloaded = onnx.load(str(out))
    assert _model_fields(reloaded) == _model_fields(src)
    assert _node_fields(reloaded) == _node_fields(src)
    again = Model.load(out).to_proto()  # load -> save -> reload -> save
    assert _model_fields(again) == _model_fields(src) and _node_fields(again) == _node_fields(src)


def test_metadata_survives_cleanup(tmp_path):
    src = metadata_model()
    path = save(src, tmp_path / "meta.onnx")
    cleaned = compress(path, recipe="cleanup").model.to_proto()
    assert _model_fields(cleaned) == _model_fields(src)
    # BN is folded into the Conv and the Identity removed: the surviving nodes keep their own doc strings and
    # metadata (the Conv now writes the BN's output name but is still the Conv)
    assert [n.name for n in cleaned.graph.node] == ["conv", "relu"]
    want = _node_fields(src)
    assert _node_fields(cleaned) == {"conv": want["conv"], "relu": want["relu"]}
    assert_same_outputs(path, cleaned, {"x": rand(np.random.default_rng(9), 1, 3, 5, 5)})


# -- (f) external data ------------------------------------------------------------------------------------------
def test_external_data_load_and_save(tmp_path):
    reference = gemm_model()
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
    feed = {"x": rand(np.random.default_rng(11), 2, 64)}
    assert_same_outputs(reference, str(out), feed)

    # reloading the external-data output works as well, and no temporary folder is left behind
    assert {w.name for w in weight_table(Model.load(out))} == {"W", "B"}
    single = model.save(out_dir / "single.onnx")  # external_data=None: a small model is one file
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.onnx", "out.onnx.data", "single.onnx"]
    inits = onnx.load(str(single), load_external_data=False).graph.initializer
    assert all(t.data_location != T.EXTERNAL for t in inits)
    assert_same_outputs(reference, str(single), feed)


# -- (g) IR version ------------------------------------------------------------------------------------------
def test_ir_version_lowered_to_what_opset_needs(tmp_path):
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["y"])], "ir",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 2])], [h.make_tensor_value_info("y", T.FLOAT, [2, 2])],
        [nh.from_array(np.arange(4, dtype=np.float32).reshape(2, 2), "W")],
    )
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 10
    path = save(m, tmp_path / "ir10.onnx")
    assert lowest_ir_version(m) == 7
    out = Model.load(path).save(tmp_path / "saved.onnx")
    saved = onnx.load(str(out))
    assert saved.ir_version == 7
    feed = {"x": np.eye(2, dtype=np.float32)}
    assert_same_outputs(path, out, feed)
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
    path = save(m, tmp_path / "int4.onnx")
    out = Model.load(path).save(tmp_path / "saved.onnx")
    assert onnx.load(str(out)).ir_version == 10
    (y,) = run_ort(out, {"x": np.zeros(4, np.float32)})
    assert y.tolist() == [0.5, -1.0, 1.5, -2.0]


# -- (h) an external-data input is never overwritten -------------------------------------------------------
def test_external_data_save_never_overwrites_input_data_file(tmp_path):
    """PyTorch names the data file after the model it exported (model.onnx -> model.onnx.data); a user who renamed
    the .onnx and now saves to model.onnx with external data must not overwrite the input's weights."""
    src = gemm_model()
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


# -- (i) more exporter shapes ----------------------------------------------------------------------------------------
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
    path = save(m, tmp_path / "fn.onnx")
    feed = {"x": np.array([[1, 2], [3, 4]], np.float32)}
    out = Model.load(path).save(tmp_path / "saved.onnx")
    saved = onnx.load(str(out))
    assert [f.name for f in saved.functions] == ["MatRelu"] and _opsets(saved) == {"": 17, "custom": 1}
    assert_same_outputs(path, out, feed)
    assert_same_outputs(path, compress(path, recipe="cleanup").model.to_proto(), feed)


def test_rescnn_round_trip_bit_exact_weights(tmp_path):
    out = Model.load(RESCNN).save(tmp_path / "rescnn.onnx")
    src = {t.name: t.SerializeToString() for t in onnx.load(str(RESCNN)).graph.initializer}
    dst = {t.name: t.SerializeToString() for t in onnx.load(str(out)).graph.initializer}
    assert src == dst
    x = np.load(MNIST_CALIB)["input"][:4]
    assert_same_outputs(RESCNN, out, {"input": x})
