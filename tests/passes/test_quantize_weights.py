"""quantize_weights: the pass on tiny graphs (every lowering checked against onnxruntime bit for bit), GPTQ on real
layers, mixed precision, and accuracy on the trained sample models. The grids themselves are
``tests/numerics/test_qscheme.py``'s; how a report counts quantized weights ``tests/measure/test_summary.py``'s."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.paths import data_path, model_path
from onnxcomp.api import compress, evaluate
from onnxcomp.calibration.data import CalibrationData
from onnxcomp.calibration.hessian import collect_hessians
from onnxcomp.errors import RecipeError
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table
from onnxcomp.numerics import qscheme
from onnxcomp.numerics.retarget import layer_output_error
from onnxcomp.passes.base import PassContext
from onnxcomp.passes.quantize_weights import QuantizeWeights
from onnxcomp.recipe import load_recipe

RNG = np.random.default_rng(0)
CLEANUP = ["fold_constants", "eliminate_identity", "fold_batchnorm", "eliminate_dead"]
TRAINED = {"mnist_rescnn": "mnist", "mnist_vgg": "mnist", "mnist_lenet300": "mnist", "digits_concat": "digits"}


# -- the pass on tiny graphs ----------------------------------------------------------------------------------
def _layers_model(opset: int = 17, dtype=np.float32) -> onnx.ModelProto:
    """x[2,4,6,6] -> Conv(W1, b1) -> Relu -> Flatten -> MatMul(W2 [144, 16]) -> Gemm(W3 [10, 16], transB=1)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = {
        "W1": RNG.standard_normal((4, 4, 3, 3)) * RNG.uniform(0.05, 2.0, (4, 1, 1, 1)),
        "b1": RNG.standard_normal(4),
        "W2": RNG.standard_normal((144, 16)) * 0.1,
        "W3": RNG.standard_normal((10, 16)) * 0.3,
    }
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "W2"], ["m"], name="matmul"),
        helper.make_node("Gemm", ["m", "W3"], ["y"], transB=1, name="gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem, [2, 4, 6, 6])],
        [helper.make_tensor_value_info("y", elem, [2, 10])],
        [numpy_helper.from_array(v.astype(dtype), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _quantize(proto: onnx.ModelProto, calibration=None, **options):
    model = Model.load(proto)
    result = QuantizeWeights(QuantizeWeights.Config(**options)).run(model, PassContext(calibration=calibration))
    return model.to_proto(), result


def _run(proto: onnx.ModelProto, feed: dict, exact: bool = True) -> np.ndarray:
    """onnxruntime's output. ``exact``: without its extended optimizations, which replace DequantizeLinear ->
    MatMul by com.microsoft.MatMulNBits, whose default accuracy level quantizes the activations to int8 on the
    fly (about 0.5% error; ``session.qdq_matmulnbits_accuracy_level`` 1 avoids it)."""
    options = ort.SessionOptions()
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def _dequantized_float_model(original: onnx.ModelProto, lowered: onnx.ModelProto) -> onnx.ModelProto:
    """The original model with every quantized weight replaced by numpy's dequantization of the stored codes."""
    inits = {t.name: numpy_helper.to_array(t) for t in lowered.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(original)
    for node in lowered.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        zp = inits[node.input[2]] if len(node.input) > 2 else np.zeros((), np.int32)
        values = qscheme.dequantize(inits[node.input[0]], inits[node.input[1]], zp, axis)
        for t in out.graph.initializer:
            if t.name == node.output[0]:
                t.CopyFrom(numpy_helper.from_array(values, t.name))
    return out


@pytest.mark.parametrize(
    ("bits", "scheme", "granularity"),
    [
        (8, "symmetric", "per_channel"),
        (4, "asymmetric", "per_channel"),
        (3, "symmetric", "per_tensor"),
        (2, "asymmetric", "per_tensor"),
        (1, "symmetric", "per_channel"),
    ],
)
def test_lowering_runs_in_stock_onnxruntime_exactly(bits: int, scheme: str, granularity: str) -> None:
    proto = _layers_model()
    lowered, result = _quantize(proto, bits=bits, scheme=scheme, granularity=granularity, min_elements=100)
    onnx.checker.check_model(lowered, full_check=True)
    assert [r["weight"] for r in result.records] == ["W1", "W2", "W3"]
    assert ("b1", "bias tensor: only layer kernels are quantized") in result.skipped
    nodes = {n.output[0]: n for n in lowered.graph.node if n.op_type == "DequantizeLinear"}
    assert set(nodes) == {"W1", "W2", "W3"}
    axes = {name: next((a.i for a in n.attribute if a.name == "axis"), None) for name, n in nodes.items()}
    per_channel = granularity == "per_channel"
    assert axes == ({"W1": 0, "W2": 1, "W3": 0} if per_channel else dict.fromkeys(nodes))
    inits = {t.name: t for t in lowered.graph.initializer}
    symmetric = scheme == "symmetric"
    qmin, qmax = qscheme.grid(bits, symmetric)
    for node in nodes.values():
        codes = inits[node.input[0]]
        assert codes.data_type == (TensorProto.INT8 if symmetric else TensorProto.UINT8)
        assert len(node.input) == (2 if symmetric else 3)
        q = numpy_helper.to_array(codes).astype(np.int32)
        assert qmin <= q.min() and q.max() <= qmax
    record = result.records[0]
    assert record["bytes_after"] == 144 + 4 * (4 if per_channel else 1) + (0 if symmetric else 4 if per_channel else 1)
    assert record["output_err"] is None and 0 < record["weight_err"] < 1
    x = {"x": RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)}
    want = _run(_dequantized_float_model(proto, lowered), x)
    assert np.abs(_run(lowered, x) - want).max() == 0
    # Fully optimized, the MatMul runs as MatMulNBits with int8 activations: close, not exact.
    assert np.abs(_run(lowered, x, exact=False) - want).max() < 0.02 * np.abs(want).max()


def test_int4_storage_from_opset_21() -> None:
    proto = _layers_model()
    lowered, result = _quantize(proto, bits=4, scheme="auto", min_elements=100, opset=21)
    assert {o.domain: o.version for o in lowered.opset_import}[""] == 21 and lowered.ir_version == 10
    inits = {t.name: t for t in lowered.graph.initializer}
    for record in result.records:
        codes = inits[record["weight"] + "_quantized"]
        assert codes.data_type in (TensorProto.INT4, TensorProto.UINT4) and record["storage"] in ("int4", "uint4")
        assert len(codes.raw_data) == (numpy_helper.to_array(codes).size + 1) // 2
    x = {"x": RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)}
    assert np.abs(_run(lowered, x) - _run(_dequantized_float_model(proto, lowered), x)).max() == 0


def test_float16_weights_raise_the_opset_to_19() -> None:
    proto = _layers_model(dtype=np.float16)
    lowered, result = _quantize(proto, bits=8, min_elements=100)
    assert {o.domain: o.version for o in lowered.opset_import}[""] == 19 and len(result.records) == 3
    scales = [t for t in lowered.graph.initializer if t.name.endswith("_scale")]
    assert {t.data_type for t in scales} == {TensorProto.FLOAT16}
    x = {"x": RNG.standard_normal((2, 4, 6, 6)).astype(np.float16)}
    assert np.abs(_run(lowered, x) - _run(_dequantized_float_model(proto, lowered), x)).max() == 0


def test_opset_is_raised_only_when_safe(monkeypatch) -> None:
    """Per-axis DequantizeLinear needs opset 13: raised from 11 for Conv/Gemm; with Softmax (whose meaning changed
    at 13) the model is converted by onnx's version converter instead, and when that fails the weights stay float;
    per-tensor scales work at 11 as they are."""
    proto = _layers_model(opset=11)
    lowered, result = _quantize(proto, min_elements=100)
    assert {o.domain: o.version for o in lowered.opset_import}[""] == 13 and len(result.records) == 3

    with_softmax = onnx.ModelProto()
    with_softmax.CopyFrom(proto)
    with_softmax.graph.node.append(helper.make_node("Softmax", ["y"], ["p"]))
    with_softmax.graph.output[0].name = "p"
    x = {"x": RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)}
    lowered, result = _quantize(with_softmax, min_elements=100)
    assert {o.domain: o.version for o in lowered.opset_import}[""] == 13 and len(result.records) == 3
    assert "opset 11 -> 13 by onnx.version_converter" in result.summary
    assert np.abs(_run(lowered, x) - _run(with_softmax, x)).max() < 0.02

    monkeypatch.setattr(Model, "convert_opset", lambda self, version: "no adapter")
    lowered, result = _quantize(with_softmax, min_elements=100)
    assert {o.domain: o.version for o in lowered.opset_import}[""] == 11 and not result.records
    reasons = dict(result.skipped)
    assert "Softmax" in reasons["opset"] and "no adapter" in reasons["opset"]
    assert "per-axis scales need ai.onnx opset 13" in reasons["W2"]
    lowered, result = _quantize(with_softmax, min_elements=100, granularity="per_tensor")
    assert {o.domain: o.version for o in lowered.opset_import}[""] == 11 and len(result.records) == 3
    assert np.abs(_run(lowered, x) - _run(_dequantized_float_model(with_softmax, lowered), x)).max() == 0


def test_constant_nodes_subgraphs_and_shared_weights() -> None:
    """A Constant-node weight inside an If branch, an initializer read by the main graph and by the branch, and one
    read by two MatMuls: each is quantized once, and the model runs in onnxruntime."""
    w_outer, w_shared, w_inner = (RNG.standard_normal((16, 16)).astype(np.float32) for _ in range(3))
    out = helper.make_tensor_value_info("t", TensorProto.FLOAT, None)
    then = helper.make_graph(
        [
            helper.make_node("Constant", [], ["Wc"], value=numpy_helper.from_array(w_inner, "Wc")),
            helper.make_node("MatMul", ["h", "Wc"], ["h2"], name="inner"),
            helper.make_node("MatMul", ["h2", "Wo"], ["t"], name="branch"),
        ],
        "then",
        [],
        [out],
    )
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["t"])], "else", [], [out])
    nodes = [
        helper.make_node("MatMul", ["x", "Wo"], ["a"], name="outer"),
        helper.make_node("MatMul", ["a", "Ws"], ["b"], name="shared1"),
        helper.make_node("MatMul", ["b", "Ws"], ["h"], name="shared2"),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 16]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w_outer, "Wo"), numpy_helper.from_array(w_shared, "Ws")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    feeds = [{"x": RNG.standard_normal((3, 16)).astype(np.float32), "c": np.array(True)} for _ in range(3)]
    lowered, result = _quantize(proto, CalibrationData(feeds), bits=4, rounding="gptq", min_elements=100)
    assert sorted(r["weight"] for r in result.records) == ["Wc", "Wo", "Ws"]
    rounding = {r["weight"]: r["rounding"] for r in result.records}
    assert rounding == {"Wo": "nearest", "Ws": "nearest", "Wc": "nearest"}
    reasons = dict(result.skipped)
    assert "shared by 2 nodes" in reasons["Ws"] and "inside a subgraph" in reasons["Wc"]
    main = [n.op_type for n in lowered.graph.node]
    assert main.count("DequantizeLinear") == 2 and "Constant" not in main
    branch = next(a.g for n in lowered.graph.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["DequantizeLinear", "MatMul", "MatMul"]
    values = {w.name: w for w in weight_table(Model.load(lowered))}
    assert "Wo" not in values and "Ws" not in values and "Wc" not in values  # no float copy left behind
    assert all(r["weight_err"] < 0.15 for r in result.records)
    # numpy's dequantization of the stored codes, wherever they are, reproduces onnxruntime's result
    inits = {t.name: numpy_helper.to_array(t) for g in (lowered.graph, branch) for t in g.initializer}
    dq = [n for g in (lowered.graph, branch) for n in g.node if n.op_type == "DequantizeLinear"]
    w = {n.output[0]: qscheme.dequantize(inits[n.input[0]], inits[n.input[1]], 0, n.attribute[0].i) for n in dq}
    x = feeds[0]
    expected = x["x"] @ w["Wo"] @ w["Ws"] @ w["Ws"] @ w["Wc"] @ w["Wo"]
    np.testing.assert_allclose(_run(lowered, x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_must_not_fire() -> None:
    """Biases, tiny, excluded, float64, graph-output and already (fake-)quantized weights are left as they are."""
    kernel = RNG.standard_normal((32, 32)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "K", "bias"], ["a"], transB=1, name="kept"),
        helper.make_node("MatMul", ["a", "small"], ["b"], name="tiny"),
        helper.make_node("MatMul", ["b", "head"], ["c"], name="head"),
        helper.make_node("QuantizeLinear", ["fq", "fq_scale"], ["fq_q"]),
        helper.make_node("DequantizeLinear", ["fq_q", "fq_scale"], ["fq_w"]),
        helper.make_node("MatMul", ["c", "fq_w"], ["d"], name="fake_quant"),
        helper.make_node("MatMul", ["d", "out"], ["y"], name="exported"),
    ]
    inits = {
        "K": kernel,
        "bias": RNG.standard_normal(32),
        "small": RNG.standard_normal((32, 4)),
        "head": RNG.standard_normal((4, 32)),
        "fq": RNG.standard_normal((32, 32)),
        "fq_scale": np.array(0.1),
        "out": RNG.standard_normal((32, 32)),
    }
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    lowered, result = _quantize(proto, bits=4, exclude=("head",))
    assert [r["weight"] for r in result.records] == ["K"]
    reasons = dict(result.skipped)
    assert reasons == {
        "bias": "bias tensor: only layer kernels are quantized",
        "small": "128 elements < min_elements 256",
        "head": "excluded by name (pattern 'head')",
        "fq": "already feeds a QuantizeLinear",
        "fq_scale": "already feeds a QuantizeLinear",
        "out": "the weight is a graph output",
    }
    kept = {t.name: t for t in lowered.graph.initializer}
    for name in reasons:
        assert numpy_helper.to_array(kept[name]).tobytes() == inits[name].astype(np.float32).tobytes()

    again, second = _quantize(lowered, bits=4, exclude=("head",))  # the codes' scale feeds a DequantizeLinear now
    assert not second.modified and dict(second.skipped)["K_scale"] == "already feeds a DequantizeLinear"
    assert again.SerializeToString() == Model.load(lowered).to_proto().SerializeToString()

    doubles = _layers_model()
    for t in doubles.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    doubles.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    doubles.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    _, result = _quantize(doubles, min_elements=100)
    assert not result.records and "float64" in dict(result.skipped)["W2"]


@pytest.mark.parametrize(
    ("options", "word"),
    [
        ({"bits": 0}, "bits must be an integer from 1 to 8"),
        ({"bits": 9}, "bits must be an integer from 1 to 8"),
        ({"bits_per_layer": {"fc*": 12}}, "bits_per_layer['fc*'] must be an integer from 1 to 8"),
        ({"scheme": "minmax"}, "scheme"),
        ({"granularity": "per_group"}, "granularity"),
        ({"rounding": "stochastic"}, "rounding"),
        ({"clip": "percentile"}, "clip"),
        ({"min_elements": -1}, "min_elements"),
        ({"damp": 0}, "damp"),
        ({"opset": 9}, "opset"),
        ({"sequential": "yes"}, "sequential"),
    ],
)
def test_recipe_rejects_bad_options(options: dict, word: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe({"passes": [{"quantize_weights": options}]})
    assert "quantize_weights" in str(err.value) and word in str(err.value)


def test_auto_scheme_keeps_the_better_grid() -> None:
    """Without calibration ``auto`` compares weight MSE: a skewed kernel goes asymmetric, and every layer's choice
    is the better of the two fixed schemes."""
    proto = _layers_model()
    for t in proto.graph.initializer:
        if t.name == "W2":  # all positive, like many kernels after folding a ReLU-fed BN
            t.CopyFrom(numpy_helper.from_array(np.abs(numpy_helper.to_array(t)) + 0.05, "W2"))
    runs = {s: _quantize(proto, bits=3, scheme=s, min_elements=100)[1] for s in ("symmetric", "asymmetric", "auto")}
    errors = {s: {r["weight"]: r["weight_err"] for r in res.records} for s, res in runs.items()}
    chosen = {r["weight"]: r["scheme"] for r in runs["auto"].records}
    assert chosen["W2"] == "asymmetric"
    for name, scheme in chosen.items():
        assert (
            errors["auto"][name] == errors[scheme][name] == min(errors["symmetric"][name], errors["asymmetric"][name])
        )


def test_depthwise_layers_keep_their_small_channels() -> None:
    """Depthwise kernels after BN folding: per-channel ranges spanning 4 decades, with outliers. Per-tensor 4-bit
    rounds most channels to zero; per-channel MSE-clipped scales keep the output."""
    channels = 32
    w = RNG.standard_normal((channels, 1, 3, 3)) * np.logspace(-3, 1, channels)[:, None, None, None]
    w[::5, 0, 1, 1] *= 6.0  # one outlier in some channels
    node = helper.make_node("Conv", ["x", "W"], ["y"], group=channels, pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.astype(np.float32), "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    x = {"x": RNG.standard_normal((1, channels, 8, 8)).astype(np.float32)}
    ref = _run(proto, x)

    def channel_sqnr(**options) -> np.ndarray:
        out = _run(_quantize(proto, bits=4, **options)[0], x)
        noise = ((out - ref) ** 2).sum(axis=(0, 2, 3))
        return 10 * np.log10((ref**2).sum(axis=(0, 2, 3)) / np.maximum(noise, 1e-30))

    per_tensor, per_channel, clipped = (
        channel_sqnr(granularity="per_tensor", clip="none"),
        channel_sqnr(clip="none"),
        channel_sqnr(),
    )
    assert per_tensor.min() < 0.5 and per_tensor.mean() < 3.0  # collapsed
    assert per_channel.min() > 15.0 and clipped.min() > 15.0
    assert clipped.mean() > per_channel.mean()  # the outliers' channels gain most


# -- GPTQ on real layers and the trained models ----------------------------------------------------------------
def test_gptq_lowers_the_output_error_of_real_layers() -> None:
    """LeNet-300-100 at 3 bits with real calibration Hessians: GPTQ's output error is below round-to-nearest's on
    the same grid for every layer, and the recorded error is what the Hessian of the unmodified model gives."""
    lenet = model_path("mnist_lenet300")
    model = Model.load(lenet)
    data = CalibrationData.from_source(data_path("mnist_calib"), model.to_proto()).take(4)
    kernels = [w for w in weight_table(model) if w.role == "weight"]
    hessians = collect_hessians(model, kernels, data)
    original = {w.name: w.array.astype(np.float64) for w in kernels}
    result = QuantizeWeights(QuantizeWeights.Config(bits=3, rounding="gptq")).run(model, PassContext(calibration=data))
    assert [r["rounding"] for r in result.records] == ["gptq"] * 3
    for record in result.records:
        assert record["output_err"] < 0.5 * record["output_err_nearest"], record
    values = {n.output[0]: n for n in model.to_proto().graph.node if n.op_type == "DequantizeLinear"}
    inits = {t.name: numpy_helper.to_array(t) for t in model.to_proto().graph.initializer}
    fc2 = values["fc2.weight"]
    w2 = qscheme.dequantize(inits[fc2.input[0]], inits[fc2.input[1]], 0, axis=0)
    record = next(r for r in result.records if r["weight"] == "fc2.weight")
    assert layer_output_error(hessians["fc2.weight"], original["fc2.weight"], w2) == pytest.approx(record["output_err"])


def _quantized(name: str, options: dict, calibration=None):
    result = compress(
        model_path(name), recipe={"passes": [*CLEANUP, {"quantize_weights": options}]}, calibration=calibration
    )
    return result, evaluate(model_path(name), result.model.to_proto(), data_path(f"{TRAINED[name]}_test"))


@pytest.mark.parametrize("name", list(TRAINED))
def test_w8_per_channel_keeps_accuracy(name: str) -> None:
    result, fidelity = _quantized(name, {"bits": 8})
    records = result.report.passes[-1].records
    assert records and all(r["granularity"] == "per_channel" and r["storage"] == "int8" for r in records)
    assert fidelity.accuracy_drop <= 0.003 and fidelity.outputs[0].cosine > 0.9999


@pytest.mark.parametrize("name", ["mnist_rescnn", "mnist_vgg"])
def test_w4_gptq_within_one_point_and_better_than_nearest(name: str) -> None:
    calib = {"input": np.load(data_path("mnist_calib"))["input"][:64]}  # 48 for the Hessians: a quick test
    gptq, gptq_fid = _quantized(name, {"bits": 4, "rounding": "gptq"}, calib)
    _, nearest_fid = _quantized(name, {"bits": 4})
    records = gptq.report.passes[-1].records
    assert all(r["rounding"] == "gptq" and r["output_err"] < r["output_err_nearest"] for r in records)
    assert gptq_fid.accuracy_drop <= 0.01
    assert gptq_fid.outputs[0].sqnr_db > nearest_fid.outputs[0].sqnr_db + 3.0


def test_sequential_corrects_upstream_error() -> None:
    """ResNet-style CNN at 2 bits: quantizing layer by layer on quantized inputs, re-targeted to the original
    outputs, keeps far more accuracy than GPTQ against the unmodified model's Hessians."""
    calib = {"input": np.load(data_path("mnist_calib"))["input"][:64]}
    _, plain = _quantized("mnist_rescnn", {"bits": 2, "rounding": "gptq"}, calib)
    _, sequential = _quantized("mnist_rescnn", {"bits": 2, "rounding": "gptq", "sequential": True}, calib)
    assert sequential.accuracy_drop <= 0.03 and sequential.accuracy_drop + 0.1 < plain.accuracy_drop


# -- mixed precision (bits: auto) ----------------------------------------------------------------------------
def test_mixed_precision_at_a_4_bit_budget_beats_uniform_4_bits() -> None:
    """At the same mean width, the allocation spends bits where the model is sensitive: the output is closer to
    the float model's than with 4 bits everywhere, for no more code bytes."""
    calib = {"input": np.load(data_path("mnist_calib"))["input"][:128]}
    uniform, uniform_fid = _quantized("mnist_rescnn", {"bits": 4, "rounding": "gptq"}, calib)
    mixed, mixed_fid = _quantized("mnist_rescnn", {"bits": "auto", "budget": 4.0, "rounding": "gptq"}, calib)
    records = mixed.report.passes[-1].records
    widths = [r["bits"] for r in records]
    sizes = [r["bytes_before"] / 4 for r in records]
    assert len(set(widths)) > 1 and np.average(widths, weights=sizes) <= 4.0
    assert "bits: auto (budget: the bytes of 4 bits)" in mixed.report.passes[-1].summary
    assert mixed_fid.outputs[0].sqnr_db > uniform_fid.outputs[0].sqnr_db
    assert mixed_fid.accuracy_drop <= 0.01


def test_mixed_precision_under_a_fidelity_bound() -> None:
    calib = {"input": np.load(data_path("mnist_calib"))["input"][:128]}
    options = {"bits": "auto", "choices": [2, 4, 8], "metric": "cosine", "max_drop": 0.001}
    result, fidelity = _quantized("mnist_lenet300", options, calib)
    assert {r["bits"] for r in result.report.passes[-1].records} <= {2, 4, 8}
    assert fidelity.outputs[0].cosine >= 0.998


def test_mixed_precision_needs_calibration() -> None:
    from onnxcomp.errors import PassError

    with pytest.raises(PassError, match="bits: auto"):
        compress(model_path("mnist_lenet300"), recipe={"passes": [{"quantize_weights": {"bits": "auto"}}]})


def test_paddle_export_at_opset_11_is_converted_for_per_channel_scales() -> None:
    """PP-OCR cls (Paddle export, opset 11, Softmax whose semantics changed at 13): the model is converted by
    onnx's version converter so per-channel DequantizeLinear (opset 13) can be used; outputs stay close."""
    from models import ppocr

    source = ppocr.model_paths()["cls"]
    x = ppocr.calibration("cls", 16, seed=3)
    result = compress(source, recipe={"passes": [*CLEANUP, {"quantize_weights": {"bits": 8}}]})
    step = result.report.passes[-1]
    assert result.model.opset == 13 and "by onnx.version_converter" in step.summary
    assert step.records and all(r["granularity"] == "per_channel" for r in step.records)
    fidelity = evaluate(source, result.model.to_proto(), x)
    assert fidelity.outputs[0].cosine > 0.999 and fidelity.outputs[0].top1_agreement == 1.0


