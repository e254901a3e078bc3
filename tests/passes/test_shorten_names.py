"""shorten_names: internal tensors get short ids, the interface keeps its names, outputs stay bit-identical."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxcomp.api import compress
from tests.conftest import run_ort
from tests.helpers import all_nodes, if_model, loop_model, save

RECIPE = {"name": "short", "passes": ["shorten_names"]}


def _names(proto: onnx.ModelProto) -> set[str]:
    out = set()
    for node in all_nodes(proto.graph):
        out.update(n for n in [*node.input, *node.output] if n)
    return out


def test_rescnn_smaller_same_outputs_interface_kept(root, tmp_path):
    src = root / "models" / "mnist_rescnn.onnx"
    before = src.read_bytes()
    result = compress(src, recipe=RECIPE, output=tmp_path / "short.onnx")
    assert src.read_bytes() == before  # the input model is never modified
    out = onnx.load(tmp_path / "short.onnx")
    ref = onnx.load(src)
    assert [i.name for i in out.graph.input] == [i.name for i in ref.graph.input]
    assert [o.name for o in out.graph.output] == [o.name for o in ref.graph.output]
    assert [n.name for n in out.graph.node] == [n.name for n in ref.graph.node]  # layer names stay
    assert max(len(n) for n in _names(out) - {"input", "logits"}) <= 2
    assert (tmp_path / "short.onnx").stat().st_size < src.stat().st_size - 1000
    x = np.load(root / "models" / "data" / "mnist_test.npz")["input"][:16]
    np.testing.assert_array_equal(run_ort(str(src), {"input": x})[0], run_ort(out, {"input": x})[0])
    assert "tensors renamed" in result.report.passes[0].summary


def test_keep_glob_and_node_names_drop(root, tmp_path):
    src = root / "models" / "mnist_rescnn.onnx"
    recipe = {"name": "s", "passes": [{"shorten_names": {"keep": ["/block1/*"], "node_names": "drop"}}]}
    compress(src, recipe=recipe, output=tmp_path / "s.onnx")
    out = onnx.load(tmp_path / "s.onnx")
    kept = {n for n in _names(onnx.load(src)) if n.startswith("/block1/")}
    assert kept and kept <= _names(out)
    assert all(n.name == "" for n in out.graph.node)


@pytest.mark.parametrize("build, feed", [
    (if_model, {"x": np.arange(8, dtype=np.float32).reshape(2, 4), "cond": np.array(True)}),
    (if_model, {"x": np.arange(8, dtype=np.float32).reshape(2, 4), "cond": np.array(False)}),
    (loop_model, {"x": np.ones((1, 4), np.float32)}),
])
def test_subgraphs_read_renamed_outer_tensors(tmp_path, build, feed):
    src = save(build(), tmp_path / "m.onnx")
    compress(src, recipe=RECIPE, output=tmp_path / "s.onnx")
    out = onnx.load(tmp_path / "s.onnx")
    onnx.checker.check_model(out)
    assert "W_outer" not in _names(out) and "W" not in _names(out) - {"x", "y"}
    np.testing.assert_array_equal(run_ort(str(src), feed)[0], run_ort(out, feed)[0])


def test_does_not_fire_when_every_tensor_is_interface(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    src = save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    result = compress(src, recipe=RECIPE, output=tmp_path / "s.onnx")
    assert not result.report.passes[0].modified
    assert result.report.passes[0].summary.startswith("0 tensors renamed")


def test_same_model_same_bytes(root, tmp_path):
    src = root / "models" / "digits_concat.onnx"
    compress(src, recipe=RECIPE, output=tmp_path / "a.onnx")
    compress(src, recipe=RECIPE, output=tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_short_node_names_report_keeps_the_source_names(root, tmp_path):
    src = root / "models" / "mnist_rescnn.onnx"
    recipe = {"name": "s", "passes": [{"prune_magnitude": {"mode": "layer", "sparsity": 0.5, "compensate": False}},
                                      {"shorten_names": {"node_names": "short"}}]}
    result = compress(src, recipe=recipe, output=tmp_path / "s.onnx")
    out = onnx.load(tmp_path / "s.onnx")
    assert max(len(n.name) for n in out.graph.node) <= 2
    assert len({n.name for n in out.graph.node}) == len(out.graph.node)  # still unique
    rows = {r["layer"]: r for r in result.report.to_dict()["layers"]}
    assert "/block1/conv1/Conv" in rows and rows["/block1/conv1/Conv"]["bytes_before"] == 9216
    assert rows["/block1/conv1/Conv"]["weight"] == "block1.conv1.weight"
    assert "node names" in result.report.passes[-1].summary
