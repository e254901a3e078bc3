"""Least-squares repair after filter pruning: real pruned variants of the MNIST models and tiny layout graphs.

The pruned models are built here by slicing initializers (a conv's output rows and its bias, the consumer's input
columns); tensor and node names stay those of the reference, as the filter-pruning pass leaves them.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import paths
from onnxcomp.calibration.data import CalibrationData
from onnxcomp.errors import PassError
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_of
from onnxcomp.numerics.repair import fit_channel_map, refit_layer, solve_ridge
from onnxcomp.runtime import session
from tests.conftest import run_ort

RNG = np.random.default_rng(0)
CONV5 = "/features/features.5/Conv"


# -- helpers --------------------------------------------------------------------------------------------------
def _initializer(proto: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == name))


def _sliced(proto: onnx.ModelProto, edits: list[tuple[str, int, np.ndarray]]) -> onnx.ModelProto:
    """A copy of ``proto`` with initializer ``name`` reduced to ``idx`` along ``axis``, for each edit."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {t.name: t for t in out.graph.initializer}
    for name, axis, idx in edits:
        inits[name].CopyFrom(numpy_helper.from_array(np.take(numpy_helper.to_array(inits[name]), idx, axis=axis), name))
    return out


def _strongest(w: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` output channels of largest L1 norm, ascending (the usual filter-pruning criterion)."""
    return np.sort(np.argsort(-np.abs(w.reshape(len(w), -1)).sum(1))[:k])


def _calib(model: Model, n: int = 256) -> CalibrationData:
    with np.load(paths.data_path("mnist_calib")) as z:
        return CalibrationData.from_source({"input": z["input"][:n]}, model, batch_size=64)


@pytest.fixture(scope="module")
def vgg() -> tuple[onnx.ModelProto, Model, CalibrationData]:
    proto = onnx.load(paths.model_path("mnist_vgg"))
    ref = Model.load(proto)
    return proto, ref, _calib(ref)


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    with np.load(paths.data_path("mnist_test")) as z:
        return z["input"][:300], z["labels"][:300]


def _accuracy(model: Model, test_set) -> float:
    x, labels = test_set
    return float((session(model.to_proto()).run(None, {"input": x})[0].argmax(1) == labels).mean())


def _outputs(model: Model, tensor: str, x: np.ndarray) -> np.ndarray:
    proto = model.to_proto()
    del proto.graph.output[:]
    proto.graph.output.append(onnx.ValueInfoProto(name=tensor))
    return session(proto).run(None, {"input": x})[0]


# -- real models --------------------------------------------------------------------------------------------------
def test_conv_repair_after_filter_pruning_vgg(vgg, test_set) -> None:
    """A quarter of conv 2's filters kept; conv 5 (its consumer) re-fitted to the original conv 5 outputs."""
    proto, ref, data = vgg
    keep = _strongest(_initializer(proto, "features.2.weight"), 8)
    pruned = _sliced(proto, [("features.2.weight", 0, keep), ("features.2.bias", 0, keep),
                             ("features.5.weight", 1, keep)])
    plain, model = Model.load(pruned), Model.load(pruned)
    before, after = refit_layer(model, ref, CONV5, None, keep, data)
    assert after < 0.1 * before  # measured: 0.52 -> 0.019
    acc = {name: _accuracy(m, test_set) for name, m in (("ref", ref), ("plain", plain), ("repaired", model))}
    assert acc["repaired"] >= acc["plain"]  # measured: 0.98 reference, 0.717 sliced, 0.983 repaired
    assert acc["repaired"] >= acc["ref"] - 0.02
    # the layer's output on held-out digits moved towards the reference
    x = test_set[0][:100]
    target = _outputs(ref, "/features/features.5/Conv_output_0", x)
    errs = [np.sum((_outputs(m, "/features/features.5/Conv_output_0", x) - target) ** 2) for m in (plain, model)]
    assert errs[1] < 0.2 * errs[0]


def test_gemm_repair_after_dropping_hidden_features(vgg, test_set) -> None:
    """classifier.1 keeps 32 of 128 units; classifier.4 (Gemm, transB=1) is re-fitted on its remaining inputs."""
    proto, ref, data = vgg
    keep = _strongest(_initializer(proto, "classifier.1.weight"), 32)
    pruned = _sliced(proto, [("classifier.1.weight", 0, keep), ("classifier.1.bias", 0, keep),
                             ("classifier.4.weight", 1, keep)])
    plain, model = Model.load(pruned), Model.load(pruned)
    before, after = refit_layer(model, ref, "/classifier/classifier.4/Gemm", None, keep, data)
    assert after < 0.2 * before  # measured: 0.46 -> 0.040
    assert _accuracy(model, test_set) >= _accuracy(plain, test_set)  # measured: 0.923 -> 0.98


def test_unpruned_layer_is_left_alone(vgg) -> None:
    """Must not fire: with nothing pruned the fit cannot beat the original weights, which stay as they are."""
    _, ref, data = vgg
    model = ref.copy()
    before, after = refit_layer(model, ref, CONV5, None, None, data)
    assert before < 1e-6 and after < 1e-6
    x = _calib(ref, 32).feeds[0]["input"]
    y_ref, y = (_outputs(m, "/features/features.5/Conv_output_0", x) for m in (ref, model))
    assert np.abs(y - y_ref).max() <= 1e-3 * np.abs(y_ref).max()


def test_conv_without_bias_gets_one_and_runs(test_set) -> None:
    """rescnn's convs have no bias (BN follows): the repaired block1.conv2 gets a new bias initializer."""
    proto = onnx.load(paths.model_path("mnist_rescnn"))
    ref = Model.load(proto)
    keep = _strongest(_initializer(proto, "block1.conv1.weight"), 6)
    bn = [(f"block1.bn1.{p}", 0, keep) for p in ("weight", "bias", "running_mean", "running_var")]
    pruned = _sliced(proto, [("block1.conv1.weight", 0, keep), *bn, ("block1.conv2.weight", 1, keep)])
    plain, model = Model.load(pruned), Model.load(pruned)
    data = _calib(ref, 128)
    before, after = refit_layer(model, ref, "/block1/conv2/Conv", None, keep, data)
    assert after < 0.5 * before  # measured: 0.43 -> 0.10
    node = next(n for n in model.graph.nodes if n.name == "/block1/conv2/Conv")
    assert len(node.inputs) == 3 and weight_of(node.inputs[2]).shape == (16,)
    out = model.to_proto()
    onnx.checker.check_model(out)
    x = _calib(ref, 64).feeds[0]["input"]
    (y_ref,), (y_plain,), (y,) = (session(m.to_proto()).run(None, {"input": x}) for m in (ref, plain, model))
    assert np.sum((y - y_ref) ** 2) < np.sum((y_plain - y_ref) ** 2)
    assert _accuracy(model, test_set) >= _accuracy(plain, test_set)  # measured: 0.983 reference, 0.25 -> 0.95


def _gathered(proto: onnx.ModelProto, tensor: str, src: np.ndarray) -> Model:
    """The reference up to ``tensor``, with ``tensor`` holding only channels ``src`` (same name)."""
    graph = gs.import_onnx(proto)
    t = graph.tensors()[tensor]
    full = gs.Variable(tensor + "_full", dtype=np.float32)
    t.inputs[0].outputs[0] = full
    idx = gs.Constant(tensor + "_src", np.asarray(src, dtype=np.int64))
    graph.nodes.append(gs.Node("Gather", inputs=[full, idx], outputs=[t], attrs={"axis": 1}))
    t.dtype = np.float32
    graph.outputs = [t]
    graph.cleanup().toposort()
    return Model.load(gs.export_onnx(graph))


def test_channel_map_on_rescnn_activations() -> None:
    proto = onnx.load(paths.model_path("mnist_rescnn"))
    ref = Model.load(proto)
    tensor = "/block1/Relu_1_output_0"  # [N, 16, 14, 14]
    src = np.arange(0, 16, 2)
    model = _gathered(proto, tensor, src)
    data = _calib(ref, 128)

    P, b = fit_channel_map(model, ref, tensor, src, src, data)  # the kept channels map onto themselves
    np.testing.assert_allclose(P, np.eye(len(src)), atol=1e-4)
    np.testing.assert_allclose(b, 0.0, atol=1e-4)

    dst = np.arange(16)
    P, b = fit_channel_map(model, ref, tensor, src, dst, data)
    assert P.shape == (16, 8) and b.shape == (16,)
    with np.load(paths.data_path("mnist_test")) as z:  # judged on digits the fit did not see
        x = z["input"][:64]
    full = np.moveaxis(_outputs(ref, tensor, x), 1, -1).reshape(-1, 16).astype(np.float64)
    kept = full[:, src]
    zero_fill = np.zeros_like(full)
    zero_fill[:, src] = kept
    err_fit = np.sum((kept @ P.T + b - full) ** 2)
    err_zero = np.sum((zero_fill - full) ** 2)
    assert err_fit < 0.8 * err_zero  # measured: 0.38 of the zero-fill error
    np.testing.assert_allclose(P[src], np.eye(8), atol=1e-3)  # kept channels stay a selection


# -- tiny graphs: every layout, measured in onnxruntime ---------------------------------------------------------
def _graph(nodes, inits, x_shape, outputs=("y",)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _layer_case(kind: str):
    """(reference, pruned, feeds, rows, cols, output axis): pre-layer -> Relu -> layer, the pre-layer's rows cut
    to ``cols`` (and perturbed, like an earlier compressed layer), the layer's rows cut to ``rows``."""
    c0, c1, m = 3, 7, 5
    rows, cols = np.array([0, 2, 3]), np.array([1, 2, 4, 6])
    if kind.startswith("conv"):
        conv1d = kind == "conv1d"
        x_shape, k = ((2, c0, 13), (3,)) if conv1d else ((2, c0, 9, 8), (3, 2))
        attrs = {"strides": [2], "pads": [1, 1]} if conv1d else \
            {"strides": [2, 1], "pads": [1, 0, 1, 2], "dilations": [1, 2]}
        wp, bp = RNG.standard_normal((c1, c0) + (1,) * len(k)), RNG.standard_normal(c1) * 0.1
        w, b = RNG.standard_normal((m, c1) + k), RNG.standard_normal(m)
        pre = [helper.make_node("Conv", ["x", "wp", "bp"], ["h0"])]
        layer = helper.make_node("Conv", ["h", "w", "b"], ["y"], name="layer", **attrs)
        out_axis, w_cols, w_rows = 1, (1, cols), (0, rows)
    elif kind.startswith("gemm"):
        trans = kind == "gemm-transB"
        x_shape = (4, c0)
        wp, bp = RNG.standard_normal((c0, c1)), RNG.standard_normal(c1) * 0.1
        w = RNG.standard_normal((m, c1) if trans else (c1, m))
        b = RNG.standard_normal(m)
        pre = [helper.make_node("Gemm", ["x", "wp", "bp"], ["h0"])]
        layer = helper.make_node("Gemm", ["h", "w", "b"] if trans else ["h", "w"], ["y"], name="layer",
                                 transB=int(trans), alpha=0.5, beta=2.0)
        out_axis, w_cols, w_rows = -1, (1, cols) if trans else (0, cols), (0, rows) if trans else (1, rows)
    else:  # matmul: 3-D activations, bias in a following Add (or none: fitted without bias)
        x_shape = (2, 3, c0)
        wp, bp = RNG.standard_normal((c0, c1)), RNG.standard_normal(c1) * 0.1
        w, b = RNG.standard_normal((c1, m)), RNG.standard_normal((1, m))
        pre = [helper.make_node("MatMul", ["x", "wp"], ["h00"]), helper.make_node("Add", ["h00", "bp"], ["h0"])]
        layer = [helper.make_node("MatMul", ["h", "w"], ["y0"], name="layer"),
                 helper.make_node("Add", ["b", "y0"], ["y"])]
        if kind == "matmul":
            layer = [helper.make_node("MatMul", ["h", "w"], ["y"], name="layer")]
        out_axis, w_cols, w_rows = -1, (0, cols), (1, rows)
    nodes = pre + [helper.make_node("Relu", ["h0"], ["h"])] + (layer if isinstance(layer, list) else [layer])
    inits = {"wp": wp, "bp": bp, "w": w}
    if kind not in ("gemm-transA0", "matmul"):
        inits["b"] = b
    reference = _graph(nodes, inits, list(x_shape))
    p_axis = 0 if kind.startswith("conv") else 1
    cut = dict(inits)
    cut["wp"] = np.take(wp, cols, axis=p_axis) + 0.1 * RNG.standard_normal(np.take(wp, cols, axis=p_axis).shape)
    cut["bp"] = bp[cols]
    cut["w"] = np.take(np.take(w, cols, axis=w_cols[0]), rows, axis=w_rows[0])
    if "b" in cut:
        cut["b"] = b[..., rows]
    pruned = _graph(nodes, cut, list(x_shape))
    feeds = [{"x": RNG.standard_normal(x_shape).astype(np.float32)} for _ in range(6)]
    return reference, pruned, feeds, rows, cols, out_axis


def _measured(reference, pruned, feeds, rows, axis) -> float:
    num = den = 0.0
    for feed in feeds:
        t = np.take(run_ort(reference, feed)[0], rows, axis=axis).astype(np.float64)
        num += float(np.sum((run_ort(pruned, feed)[0] - t) ** 2))
        den += float(np.sum(t**2))
    return num / den


@pytest.mark.parametrize("kind", ["conv2d", "conv1d", "gemm-transB", "gemm-transA0", "matmul-add", "matmul"])
def test_predicted_errors_match_onnxruntime(kind: str) -> None:
    """The moment-based before/after errors equal the errors measured on the written model, for every layout."""
    reference, pruned, feeds, rows, cols, axis = _layer_case(kind)
    data = CalibrationData(feeds)
    model = Model.load(pruned)
    before, after = refit_layer(model, Model.load(reference), "layer", rows, cols, data, damp=1e-4)
    assert after < 0.7 * before
    np.testing.assert_allclose(before, _measured(reference, pruned, feeds, rows, axis), rtol=1e-4)
    repaired = model.to_proto()
    np.testing.assert_allclose(after, _measured(reference, repaired, feeds, rows, axis), rtol=1e-3, atol=1e-6)
    node = next(n for n in model.graph.nodes if n.name == "layer")
    if kind == "gemm-transA0":  # had no bias: one was added
        assert len(node.inputs) == 3 and weight_of(node.inputs[2]).shape == (3,)
    if kind == "matmul-add":  # the bias lives in the Add, which was updated in place
        add = node.outputs[0].outputs[0]
        assert weight_of(add.inputs[0]).shape == (1, 3)
        assert not np.allclose(weight_of(add.inputs[0]).array, _initializer(pruned, "b"))
    if kind == "matmul":  # nowhere to put a bias: none was invented
        assert len(node.inputs) == 2 and len(node.outputs[0].outputs) == 0


def test_shared_weight_is_copied_before_the_refit() -> None:
    reference, pruned, feeds, rows, cols, _ = _layer_case("gemm-transB")
    pruned.graph.node.append(helper.make_node("Gemm", ["h", "w"], ["z"], name="other", transB=1))
    pruned.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    model = Model.load(pruned)
    z_before = run_ort(model.to_proto(), feeds[0])[1]
    assert refit_layer(model, Model.load(reference), "layer", rows, cols, CalibrationData(feeds)) is not None
    layer = next(n for n in model.graph.nodes if n.name == "layer")
    assert layer.inputs[1].name != "w"
    np.testing.assert_array_equal(run_ort(model.to_proto(), feeds[0])[1], z_before)


def test_solve_ridge_recovers_an_exact_linear_map() -> None:
    x = RNG.standard_normal((500, 6))
    A = RNG.standard_normal((4, 6))
    t = x @ A.T
    H, G = x.T @ x / len(x), x.T @ t / len(x)
    np.testing.assert_allclose(solve_ridge(H, G, np.zeros_like(A), damp=0.0), A, atol=1e-10)
    np.testing.assert_allclose(solve_ridge(H, G, A, damp=0.1), A, atol=1e-10)  # prior = truth: the ridge is free
    dead = H.copy()
    dead[0, :] = dead[:, 0] = 0.0  # an input that is always zero keeps its prior weight
    G0 = G.copy()
    G0[0] = 0.0
    np.testing.assert_allclose(solve_ridge(dead, G0, A, damp=0.01)[:, 0], A[:, 0])


# -- refusals -----------------------------------------------------------------------------------------------------
def test_unsupported_and_unknown_nodes() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="grouped", group=2)
    proto = _graph([node], {"w": RNG.standard_normal((4, 2, 3, 3))}, [1, 4, 6, 6])
    model = Model.load(proto)
    data = CalibrationData([{"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)}])
    assert refit_layer(model, Model.load(proto), "grouped", None, None, data) is None
    with pytest.raises(PassError, match="no node named 'missing'"):
        refit_layer(model, Model.load(proto), "missing", None, None, data)


def test_shape_mismatch_names_the_node(vgg) -> None:
    proto, ref, data = vgg
    with pytest.raises(PassError, match=CONV5):
        refit_layer(Model.load(proto), ref, CONV5, None, np.arange(16), data)  # weight still has 32 columns
