"""Channel-group analysis: index bookkeeping proved against zeroed channels on every architecture builder, locks
with their reasons, and the cases where a group must not be prunable."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from models import builders, paths, ppocr
from onnxcomp.analysis.channel_groups import analyze
from onnxcomp.analysis.cost import tensor_shapes, total_macs
from onnxcomp.calibration.data import CalibrationData
from onnxcomp.cli import cli
from onnxcomp.ir.model import Model
from onnxcomp.passes.base import PassContext
from onnxcomp.passes.fold_constants import FoldConstants
from onnxcomp.passes.prune_filters import FilterPruneConfig, PruneFilters, apply_removal, zero_removal
from tests.conftest import rel_err, run_ort


def _half_of_every_group(cg, seed: int = 0) -> set[int]:
    rng = np.random.default_rng(seed)
    removed: set[int] = set()
    for g in cg.groups:
        free = [a for a in g.atoms if a not in cg.locked]
        if g.locked is None and len(free) > 1:
            removed.update(rng.choice(free, size=min(len(free) - 1, g.size // 2), replace=False).tolist())
    return removed


def _zeroed(model: Model, cg, removed: set[int]) -> None:
    zero_removal(model, cg, removed)


@pytest.mark.parametrize("name", sorted(builders.BUILDERS))
def test_pruned_builder_equals_the_zeroed_original(name: str) -> None:
    proto = builders.build(name, **builders.small_kwargs(name))
    feed = builders.default_feed(proto, batch=2)
    reference, pruned = Model.load(proto), Model.load(proto)
    cg_ref = analyze(reference, "strict", tensor_shapes(reference))
    cg = analyze(pruned, "strict", tensor_shapes(pruned))
    removed = _half_of_every_group(cg)
    assert removed and len(cg.groups) == len(cg_ref.groups)
    _zeroed(reference, cg_ref, removed)
    apply_removal(pruned, cg, removed)
    out = pruned.to_proto()
    onnx.checker.check_model(out, full_check=True)
    before, after = builders.count_parameters(proto), builders.count_parameters(out)
    assert after < (0.7 if name != "transformer_block" else 0.8) * before  # physically smaller
    for a, b in zip(run_ort(reference.to_proto(), feed), run_ort(out, feed)):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-5


def test_residual_stream_is_one_group_with_its_members() -> None:
    model = Model.load(paths.model_path("mnist_rescnn"))
    cg = analyze(model, "strict", tensor_shapes(model))
    stream = cg.group_of_layer("/block1/conv2/Conv")
    assert stream is not None and stream.locked is None and stream.size == 16
    assert {"/stem/stem.0/Conv", "/block1/conv2/Conv"} <= set(stream.sources)  # stem and branch tied by the Add
    assert "/block2/shortcut/shortcut.0/Conv (in)" in stream.members
    head = cg.group_of_layer("/fc/Gemm")
    assert head.locked == "graph output 'logits'"


def test_independent_alignment_unties_identity_shortcuts() -> None:
    model = Model.load(paths.model_path("mnist_rescnn"))
    shapes = tensor_shapes(model)
    strict, independent = analyze(model, "strict", shapes), analyze(model, "independent", shapes)
    assert not strict.alignments
    assert len(independent.alignments) == 2  # block1 and block3 have identity shortcuts
    assert len(independent.groups) > len(strict.groups)


def _groups(middle: list[onnx.NodeProto], out_channels: int = 8, **weights: np.ndarray) -> list:
    """x -> Conv(8) -> h -> middle -> r -> Conv(out_channels) -> y, with random weights."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((8, 4, 1, 1)), "w2": rng.standard_normal((out_channels, 8, 1, 1)),
             **weights}
    nodes = [onnx.helper.make_node("Conv", ["x", "w1"], ["h"], kernel_shape=[1, 1]), *middle,
             onnx.helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[1, 1])]
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, out_channels, 8, 8])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid("custom", 1)])
    proto.ir_version = 8
    model = Model.load(proto)
    custom = {n.output[0] for n in middle if n.domain == "custom"}  # what a custom op returns is not inferred
    shapes = {name: (1, 8, 8, 8) for name in custom}
    return analyze(model, "strict", tensor_shapes(model, shapes=shapes)).groups


_node = onnx.helper.make_node


@pytest.mark.parametrize("middle, weights, reason", [
    ([_node("Mystery", ["h"], ["r"], domain="custom")], {}, "custom op custom.Mystery"),
    ([_node("Conv", ["h", "w3"], ["r"], kernel_shape=[1, 1], group=2)],
     {"w3": np.ones((8, 4, 1, 1))}, "grouped convolution (group=2)"),
    ([_node("Softmax", ["h"], ["r"], axis=1)], {}, "normalizes over the channel axis"),
    ([_node("LRN", ["h"], ["r"], size=3)], {}, "unsupported op LRN"),
    ([_node("Sigmoid", ["h"], ["s"]), _node("Mystery", ["x"], ["h2"], domain="custom"),
      _node("Mul", ["s", "h2"], ["r"])], {}, "input 'h2' has channels that are not tracked"),
])
def test_unknown_or_coupling_ops_lock_the_group(middle, weights, reason) -> None:
    groups = _groups(middle, **weights)
    hidden = next(g for g in groups if "h" in g.tensors)
    assert hidden.locked is not None and reason in hidden.locked


def test_a_plain_chain_is_prunable_and_the_output_is_not() -> None:
    groups = _groups([_node("Relu", ["h"], ["r"])])
    assert next(g for g in groups if "h" in g.tensors).locked is None
    assert next(g for g in groups if "y" in g.tensors).locked == "graph output 'y'"
    assert next(g for g in groups if "x" in g.tensors).locked == "graph input 'x'"


def test_flatten_maps_a_channel_to_its_feature_block() -> None:
    model = Model.load(paths.model_path("mnist_vgg"))
    cg = analyze(model, "strict", tensor_shapes(model))
    gemm_in = next(s for s in cg.slots if s.node.op == "Gemm" and s.kind == "in")
    atoms = cg.atoms(gemm_in.ids)
    assert atoms.size == 3136 and len(set(atoms.tolist())) == 64  # 64 channels x 7 x 7 features
    assert len(set(atoms[:49].tolist())) == 1


def test_inspect_groups_cli() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["inspect", "--groups", str(paths.model_path("mnist_rescnn"))])
    assert out.exit_code == 0, out.output
    assert "5 prunable" in out.output and "locked: graph output 'logits'" in out.output
    as_json = runner.invoke(cli, ["inspect", "--groups", "--json", str(paths.model_path("digits_concat"))])
    rows = json.loads(as_json.output)
    assert any(r["locked"] is None and r["channels"] > 1 for r in rows)


@pytest.mark.parametrize("kind, shape", [("cls", (2, 3, 48, 192)), ("det", (1, 3, 96, 96))])
def test_paddle_exports_prune_equal_to_zeroed(kind: str, shape: tuple[int, ...]) -> None:
    """Real models nobody here wrote: PP-OCRv4 (Paddle export, weights in Constant nodes, free H/W, SE blocks,
    HardSwish, upsampling FPN in det)."""


    reference, pruned = (Model.load(ppocr.model_paths()[kind]) for _ in range(2))
    name = reference.graph.inputs[0].name
    given = {name: (1, *shape[1:])}
    graphs = []
    for model in (reference, pruned):
        FoldConstants().run(model, PassContext())
        graphs.append(analyze(model, "strict", tensor_shapes(model, shapes=given)))
    removed = _half_of_every_group(graphs[1])
    assert len(removed) > 300
    _zeroed(reference, graphs[0], removed)
    apply_removal(pruned, graphs[1], removed)
    feed = {name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    assert rel_err(run_ort(reference.to_proto(), feed)[0], run_ort(pruned.to_proto(), feed)[0]) < 1e-3


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], shape=(2, 4, 8, 8),
           out_shape=None, opset: int = 17) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(shape))],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
        [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return proto


def _w(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


_i64 = np.int64
_CASES = {
    # conv -> Slice of the first 6 channels (step 1) -> conv
    "slice_channels": ([_node("Conv", ["x", "w1"], ["h"], kernel_shape=[1, 1]),
                        _node("Slice", ["h", "s0", "s1", "s2"], ["r"]),
                        _node("Conv", ["r", "w2"], ["y"], kernel_shape=[1, 1])],
                       {"w1": _w(8, 4, 1, 1), "s0": np.array([0], _i64), "s1": np.array([6], _i64),
                        "s2": np.array([1], _i64), "w2": _w(3, 6, 1, 1)}),
    # PRelu with a per-channel slope, Pad on space, Resize by sizes, ConvTranspose
    "prelu_pad_resize_deconv": ([_node("Conv", ["x", "w1"], ["h"], kernel_shape=[1, 1]),
                                 _node("PRelu", ["h", "slope"], ["p"]),
                                 _node("Pad", ["p", "pads"], ["q"]),
                                 _node("Resize", ["q", "", "", "sizes"], ["r"], mode="nearest"),
                                 _node("ConvTranspose", ["r", "wt"], ["t"], kernel_shape=[2, 2], strides=[2, 2]),
                                 _node("Conv", ["t", "w2"], ["y"], kernel_shape=[1, 1])],
                                {"w1": _w(8, 4, 1, 1), "slope": _w(8, 1, 1),
                                 "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], _i64),
                                 "sizes": np.array([2, 8, 20, 20], _i64), "wt": _w(8, 6, 2, 2), "w2": _w(3, 6, 1, 1)}),
    # depthwise conv with a channel multiplier of 2, then channels-last: Transpose -> MatMul + bias -> Gemm
    "multiplier_and_channels_last": ([_node("Conv", ["x", "w1"], ["h"], kernel_shape=[1, 1]),
                                      _node("Conv", ["h", "dw"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                            group=8),
                                      _node("Transpose", ["d"], ["t"], perm=[0, 2, 3, 1]),
                                      _node("MatMul", ["t", "m"], ["mm"]),
                                      _node("Add", ["mm", "b"], ["a"]),
                                      _node("ReduceMean", ["a"], ["g"], axes=[1, 2], keepdims=0),
                                      _node("Gemm", ["g", "fc"], ["y"], transB=0)],
                                     {"w1": _w(8, 4, 1, 1), "dw": _w(16, 1, 3, 3), "m": _w(16, 12),
                                      "b": _w(12), "fc": _w(12, 5)}),
    # Keras/tf2onnx style: NHWC around an NCHW conv, flattened channels-last into a MatMul + bias
    "nhwc_flatten": ([_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
                      _node("Conv", ["xt", "w1"], ["h"], kernel_shape=[1, 1]),
                      _node("Relu", ["h"], ["r"]),
                      _node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
                      _node("Reshape", ["t", "shape"], ["f"]),
                      _node("MatMul", ["f", "m"], ["mm"]),
                      _node("Add", ["mm", "b"], ["y"])],
                     {"w1": _w(8, 8, 1, 1), "shape": np.array([-1, 4 * 8 * 8], _i64), "m": _w(4 * 8 * 8, 5),
                      "b": _w(5)}),
    # opset-11 Split with the sizes as an attribute, a Concat of the halves in swapped order
    "split_attribute": ([_node("Conv", ["x", "w1"], ["h"], kernel_shape=[1, 1]),
                         _node("Split", ["h"], ["s1", "s2"], axis=1, split=[3, 5]),
                         _node("Relu", ["s2"], ["r2"]),
                         _node("Concat", ["r2", "s1"], ["c"], axis=1),
                         _node("Conv", ["c", "w2"], ["y"], kernel_shape=[1, 1])],
                        {"w1": _w(8, 4, 1, 1), "w2": _w(3, 8, 1, 1)}),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_less_common_ops_prune_equal_to_zeroed(case: str) -> None:
    nodes, inits = _CASES[case]
    proto = _model(nodes, inits, opset=11 if case == "split_attribute" else 17)
    feed = {"x": np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)}
    reference, pruned = Model.load(proto), Model.load(proto)
    graphs = [analyze(m, "strict", tensor_shapes(m)) for m in (reference, pruned)]
    removed = _half_of_every_group(graphs[1])
    assert removed, [g.locked for g in graphs[1].groups]
    _zeroed(reference, graphs[0], removed)
    apply_removal(pruned, graphs[1], removed)
    assert rel_err(run_ort(reference.to_proto(), feed)[0], run_ort(pruned.to_proto(), feed)[0]) < 1e-5


def test_pass_on_a_fixed_batch_model_with_calibration() -> None:
    """A model that fixes its batch (2) takes calibration feeds of that batch; the pass's shape resolution must
    follow the model, not assume batch 1."""


    nodes, inits = _CASES["multiplier_and_channels_last"]
    model = Model.load(_model(nodes, inits))
    x = np.random.default_rng(1).standard_normal((8, 4, 8, 8)).astype(np.float32)
    calib = CalibrationData.from_source({"x": x}, model)
    result = PruneFilters(FilterPruneConfig(ratio=0.5)).run(model, PassContext(calibration=calib))
    assert result.modified and any(r.get("repaired") for r in result.records)
    assert run_ort(model.to_proto(), {"x": x[:2]})[0].shape == (2, 5)
    # its nodes are unnamed until repair names them: the reported MACs must still be the model's
    reported = int(re.search(r"-> ([\d,]+)", result.summary).group(1).replace(",", ""))
    assert reported == total_macs(model)


@pytest.mark.parametrize("name", sorted(builders.BUILDERS))
def test_independent_alignment_runs_on_every_builder(name: str) -> None:
    """Identity shortcuts left with their own channels get 1x1 maps (Conv, or MatMul + Add channels-last); the
    result must run and keep the output's shape."""

    proto = builders.build(name, **builders.small_kwargs(name))
    feed = builders.default_feed(proto, batch=2)
    model = Model.load(proto)
    result = PruneFilters(FilterPruneConfig(align="independent", ratio=0.3, repair=False)).run(model, PassContext())
    assert result.modified
    maps = sum(1 for n in model.graph.nodes if "_align" in n.name)
    assert (maps > 0) == ("shortcut maps" in result.summary)
    assert run_ort(model.to_proto(), feed)[0].shape == run_ort(proto, feed)[0].shape


def test_computed_reshape_shapes_follow_the_removal() -> None:
    """``x.view(x.size(0), -1)`` exports a Reshape whose shape is a Concat computed from Shape(x): -1 adapts to
    fewer channels by itself, a constant count there (Paddle writes ``[N, 288]``) is rewritten."""
    def head(count: int) -> onnx.ModelProto:
        nodes = [_node("Conv", ["x", "w1"], ["h"], kernel_shape=[3, 3]),
                 _node("Shape", ["h"], ["s"]), _node("Gather", ["s", "zero"], ["n"], axis=0),
                 _node("Unsqueeze", ["n", "axes"], ["n1"]), _node("Concat", ["n1", "rest"], ["shape"], axis=0),
                 _node("Reshape", ["h", "shape"], ["f"]), _node("Gemm", ["f", "fc"], ["y"], transB=1)]
        inits = {"w1": _w(8, 4, 3, 3), "zero": np.array(0, _i64), "axes": np.array([0], _i64),
                 "rest": np.array([count], _i64), "fc": _w(5, 288)}
        return _model(nodes, inits)

    feed = {"x": np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)}
    for count in (-1, 288):
        reference, pruned = Model.load(head(count)), Model.load(head(count))
        graphs = [analyze(m, "strict", tensor_shapes(m)) for m in (reference, pruned)]
        removed = _half_of_every_group(graphs[1])
        assert removed, count
        _zeroed(reference, graphs[0], removed)
        apply_removal(pruned, graphs[1], removed)
        assert rel_err(run_ort(reference.to_proto(), feed)[0], run_ort(pruned.to_proto(), feed)[0]) < 1e-5


def test_pytorch_export_patterns() -> None:
    """PyTorch's own export (models/torch_patterns.py): SE gating, hardswish, BatchNorm, residual Adds, a channel
    shuffle with shapes computed at run time, ``torch.chunk`` as Slices with computed bounds, ``view(n, -1)`` and a
    second output reading the residual stream. All of it prunes equal to zeroed, except the stream the second
    output reads."""
    path = paths.model_path("torch_patterns")
    reference, pruned = Model.load(path), Model.load(path)
    given = {"x": (1, 3, 32, 32)}
    graphs = []
    for model in (reference, pruned):
        FoldConstants().run(model, PassContext())
        graphs.append(analyze(model, "strict", tensor_shapes(model, shapes=given)))
    by_source = {s: g for g in graphs[1].groups for s in g.sources}
    assert by_source["/b1/se/fc2/Conv"].locked is None  # SE gate tied to the block's expansion channels
    assert by_source["/left/Conv"] is by_source["/right/Conv"] and by_source["/left/Conv"].locked is None  # shuffle
    chunked = by_source["/down/Conv"]  # torch.chunk(2): Slice bounds computed from the run-time channel count
    assert chunked.locked is None and chunked.size == 16  # the halves lose the same positions: 32 channels, 16 atoms
    assert by_source["/stem/Conv"].locked == "graph output 'feat'"
    removed = _half_of_every_group(graphs[1])
    _zeroed(reference, graphs[0], removed)
    apply_removal(pruned, graphs[1], removed)
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    for a, b in zip(run_ort(reference.to_proto(), feed), run_ort(pruned.to_proto(), feed)):
        assert rel_err(a, b) < 1e-5


def test_packed_qkv_attention_of_ppocr_rec() -> None:
    """PP-OCRv4 rec's SVTR neck packs q, k, v in one Linear ([.., 3, heads, head_dim]), slices the 3 axis and
    contracts q with k: the head_dim positions prune (tied across q, k, v and heads) and the result equals the
    zeroed original up to float rounding."""
    reference, pruned = (Model.load(ppocr.model_paths()["rec"]) for _ in range(2))
    given = {"x": (1, 3, 48, 160)}
    graphs = []
    for model in (reference, pruned):
        FoldConstants().run(model, PassContext())
        graphs.append(analyze(model, "strict", tensor_shapes(model, shapes=given)))
    assert not any(g.locked and "Slice" in g.locked for g in graphs[1].groups)
    removed = _half_of_every_group(graphs[1])
    _zeroed(reference, graphs[0], removed)
    apply_removal(pruned, graphs[1], removed)
    feed = {"x": np.random.default_rng(0).standard_normal((1, 3, 48, 160)).astype(np.float32)}
    assert rel_err(run_ort(reference.to_proto(), feed)[0], run_ort(pruned.to_proto(), feed)[0]) < 1e-3
