"""Static activation quantization, the pass: keep-float cases, must-not-fire, option errors, per-tensor range
methods, ``method: auto``, and W8A8 accuracy of the trained models. Where the Q/DQ pairs go for each target is
``tests/emit/``'s (the emitters hold those rules)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from models import builders, paths
from onnxcomp.api import compress, evaluate
from onnxcomp.calibration.data import CalibrationData
from onnxcomp.errors import PassError, RecipeError
from onnxcomp.ir.model import Model
from onnxcomp.passes.base import PassContext
from onnxcomp.passes.quantize_activations import QuantizeActivations, QuantizeActivationsConfig
from onnxcomp.pipeline import Pipeline
from onnxcomp.recipe import parse_recipe
from onnxcomp.runtime import int8_pairs_saturate
from tests.conftest import run_ort, run_ort_unfused
from tests.helpers import (
    consumers,
    cosine,
    int8_weights,
    optimized_ops,
    quantize_activations,
    random_calibration,
    resnetish,
)

CLEANUP = ["fold_constants", "eliminate_identity", "fold_batchnorm", "eliminate_dead"]


# -- kept float and must-not-fire ----------------------------------------------------------------------------------
def test_keep_float_by_name_op_and_auto(tmp_path) -> None:
    proto_in = int8_weights(resnetish())
    data = random_calibration(proto_in, (2, 3, 8, 8))
    proto, result = quantize_activations(proto_in, data, keep_first_last=True)
    assert "QuantizeLinear" not in consumers(proto, "x")  # the first layer reads the float input
    assert {n for n, why in result.skipped if "first layer" in why} == {"conv1"}
    assert {n for n, why in result.skipped if "classifier head" in why} == {"fc"}
    assert not any(r["kind"] == "bias" and r["layer"] in ("conv1", "fc") for r in result.records)
    ops = optimized_ops(proto, tmp_path)
    assert ops["QLinearConv"] == 1 and ops["Gemm"] + ops["FusedGemm"] == 1

    proto, result = quantize_activations(proto_in, data, keep_float=["conv2", "a*"], keep_float_ops=["Gemm"])
    assert ("conv2", "kept float: name matches 'conv2'") in result.skipped
    assert ("add", "kept float: name matches 'a*'") in result.skipped  # the Add's output tensor is 'a'
    assert ("fc", "kept float: op Gemm in keep_float_ops") in result.skipped
    assert not any(r["kind"] == "bias" and r["layer"] in ("conv2", "fc") for r in result.records)
    assert "QuantizeLinear" not in consumers(proto, "c2")  # nothing quantizes conv2's output for it
    assert "QuantizeLinear" in consumers(proto, "r1")  # conv1 -> relu1 is still quantized


def test_must_not_fire() -> None:
    """Everything kept float; a model without quantized weights; a model already quantized (second run)."""
    proto_in = int8_weights(resnetish())
    data = random_calibration(proto_in, (2, 3, 8, 8))
    for options in ({"keep_float_ops": ["Conv", "Gemm", "Add", "GlobalAveragePool"]}, {"keep_float": ["*"]}):
        proto, result = quantize_activations(proto_in, data, **options)
        assert not result.modified and result.summary == "no activation quantized"
        assert len(proto.graph.node) == len(proto_in.graph.node)
    proto, result = quantize_activations(resnetish(), data)  # float weights: no layer can run in integers
    assert any("run quantize_weights first" in why for _, why in result.skipped)
    assert not any(r["tensor"] == "x" for r in result.records)
    once, _ = quantize_activations(proto_in, data)
    twice, result = quantize_activations(once, data)
    assert not result.modified and len(twice.graph.node) == len(once.graph.node)


# -- options and requirements --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, option",
    [
        ({"method": "kl"}, "method"),
        ({"percentile": 100.0}, "percentile"),
        ({"activation_dtype": "uint4"}, "activation_dtype"),
        ({"target": "tensorrt", "activation_dtype": "uint8"}, "activation_dtype"),
        ({"target": "openvino"}, "target"),
        ({"rules": {"Conv": "fast"}}, "rules"),
        ({"bins": 100}, "bins"),
    ],
)
def test_bad_options_name_the_option(options, option) -> None:
    with pytest.raises(RecipeError, match=option):
        QuantizeActivationsConfig(**options)
    with pytest.raises(RecipeError, match=option):
        parse_recipe({"passes": [{"quantize_activations": options}]})


def test_needs_calibration_data() -> None:
    with pytest.raises(PassError, match="quantize_activations' needs calibration data") as err:
        Pipeline([QuantizeActivations()]).run(Model.load(resnetish()), PassContext())
    assert "\n" not in str(err.value)


def test_rules_pick_methods_per_tensor() -> None:
    proto_in = int8_weights(resnetish())
    _, result = quantize_activations(
        proto_in,
        random_calibration(proto_in, (2, 3, 8, 8)),
        method="minmax",
        rules={"GlobalAveragePool": "percentile", "r1": "mse"},
    )
    methods = {r["tensor"]: r["method"] for r in result.records if "method" in r}
    assert methods == {"x": "minmax", "r1": "mse", "c2": "minmax", "r2": "minmax", "g": "percentile"}


# -- real models ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(paths.TRAINED))
def test_w8a8_accuracy_of_the_trained_models(name, tmp_path) -> None:
    calib, test = paths.TRAINED[name]
    recipe = {"passes": CLEANUP + [{"quantize_weights": {"min_elements": 0}}, "quantize_activations"]}
    result = compress(paths.model_path(name), recipe=recipe, calibration=paths.data_path(calib))
    quantized = result.model.to_proto()
    fidelity = evaluate(paths.model_path(name), quantized, paths.data_path(test))
    assert fidelity.accuracy_drop <= 0.005, fidelity.lines()
    ops = optimized_ops(quantized, tmp_path)
    assert not {"Conv", "Gemm", "FusedConv", "FusedGemm"} & set(ops), ops  # every layer runs in integers
    assert ops["QLinearConv"] + ops["QGemm"] >= 3


def test_depthwise_mobilenetv2_does_not_collapse(tmp_path) -> None:
    """MobileNetV2 (depthwise convs, BN statistics from a real forward pass) stays as close to float as onnxruntime's
    own quantizer gets (QDQ, per channel, MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    float_model = builders.build("mobilenetv2", **builders.small_kwargs("mobilenetv2"), batch=None)
    rng = np.random.default_rng(7)
    calib = rng.standard_normal((32, 3, 64, 64)).astype(np.float32)
    x = rng.standard_normal((64, 3, 64, 64)).astype(np.float32)
    model = Model.load(float_model)
    data = CalibrationData.from_source({"input": calib}, model, batch_size=8)
    recipe = parse_recipe({"passes": CLEANUP + [{"quantize_weights": {"min_elements": 0}}, "quantize_activations"]})
    recipe.pipeline().run(model, PassContext(calibration=data))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input": calib[i : i + 8]} for i in range(0, 32, 8)])

        def get_next(self):
            return next(self.feeds, None)

    cleaned = Model.load(float_model)
    parse_recipe({"passes": CLEANUP}).pipeline().run(cleaned, PassContext())
    onnx.save(cleaned.to_proto(), str(tmp_path / "clean.onnx"))
    quantize_static(
        str(tmp_path / "clean.onnx"),
        str(tmp_path / "ort.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
    )
    ref = run_ort(float_model, {"input": x})[0]
    # The models' meaning (fusions off): measured 0.948 vs 0.938 (random weights).
    ours = cosine(ref, run_ort_unfused(model.to_proto(), {"input": x})[0])
    theirs = cosine(ref, run_ort_unfused(onnx.load(str(tmp_path / "ort.onnx")), {"input": x})[0])
    assert ours > 0.9 and ours >= theirs - 0.01, (ours, theirs)
    fused = cosine(ref, run_ort(model.to_proto(), {"input": x})[0])
    if not int8_pairs_saturate():
        assert fused > ours - 0.01, (fused, ours)
    else:  # 8-bit weights saturate the int16 pair sums (0.855 fused); 7-bit weights must not (0.9245 vs 0.9257)
        narrow = Model.load(float_model)
        passes = CLEANUP + [{"quantize_weights": {"min_elements": 0, "bits": 7}}, "quantize_activations"]
        parse_recipe({"passes": passes}).pipeline().run(narrow, PassContext(calibration=data))
        unfused = cosine(ref, run_ort_unfused(narrow.to_proto(), {"input": x})[0])
        assert unfused > 0.9 and cosine(ref, run_ort(narrow.to_proto(), {"input": x})[0]) > unfused - 0.01
    assert "Conv" not in optimized_ops(model.to_proto(), tmp_path)  # depthwise convs run in integers too


def test_auto_method_keeps_the_best_measured() -> None:
    """``method: auto`` builds the Q/DQ model with every range method and keeps the best output SQNR on the
    calibration data: the result equals running that method directly, and no method scored higher."""
    import re

    proto_in = int8_weights(resnetish())
    data = random_calibration(proto_in, (2, 3, 8, 8), n=6)
    auto, result = quantize_activations(proto_in, data, method="auto")
    scores = dict(re.findall(r"(\w+) (-?[\d.]+) dB", result.summary))
    assert set(scores) == {"minmax", "percentile", "entropy", "mse"}
    chosen = result.summary.split("(")[1].split(" chosen")[0]
    assert float(scores[chosen]) == max(float(v) for v in scores.values())
    direct, _ = quantize_activations(proto_in, data, method=chosen)
    feed = {"x": np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(auto, feed)[0], run_ort(direct, feed)[0])
