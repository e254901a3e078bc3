"""The built-in quantization recipes (int8, int8-avx2, int8-weights, int4-weights, mixed) on a bundled trained model.

Each one loads, runs on ResCNN (MNIST) with its bundled calibration data, writes a model that stock onnxruntime
runs (``mixed`` packs its codes: ``onnxcomp.runtime``), stays within its accuracy bound of the float model on the
TEST set, and reports bytes, fidelity and the widths it chose. ``benchmarks/quantization.py`` has the full
comparison with onnxruntime's quantizer.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxcomp.api import compress
from onnxcomp.cli import main
from onnxcomp.errors import PassError
from onnxcomp.recipe import builtin_recipes, load_recipe
from onnxcomp.runtime import InferenceSession, int8_pairs_saturate, session_options

ROOT = Path(__file__).resolve().parents[1]
RESCNN = ROOT / "models" / "mnist_rescnn.onnx"
DATA = ROOT / "models" / "data"
CALIB_SAMPLES = 160  # 10 feeds: 8 for the passes, 2 held back (recipes keep 25%)
# recipe -> largest test-accuracy drop allowed, in points (issue 4)
BOUNDS = {"int8": 0.5, "int8-avx2": 0.5, "int8-weights": 0.5, "int4-weights": 1.0, "mixed": 1.5}


@pytest.fixture(scope="module")
def calib() -> dict[str, np.ndarray]:
    return {"input": np.load(DATA / "mnist_calib.npz")["input"][:CALIB_SAMPLES]}


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(DATA / "mnist_test.npz")
    return data["input"], data["labels"]


def accuracy(sess, test_set) -> float:
    x, labels = test_set
    logits = np.concatenate([sess.run(None, {"input": x[i:i + 250]})[0] for i in range(0, len(x), 250)])
    return float((logits.argmax(-1) == labels).mean())


def optimized_ops(path: Path, tmp: Path) -> Counter:
    """Op types of onnxruntime's optimized graph (what it actually runs)."""
    so = session_options()
    so.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def quantize_records(result) -> list[dict]:
    return next(p.records for p in result.report.passes if p.name == "quantize_weights")


@pytest.fixture(scope="module")
def float_accuracy(test_set) -> float:
    return accuracy(ort.InferenceSession(str(RESCNN), providers=["CPUExecutionProvider"]), test_set)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, calib) -> dict[str, tuple[Path, object]]:
    """Every recipe run once on ResCNN: name -> (written model, CompressResult)."""
    tmp = tmp_path_factory.mktemp("recipes")
    runs = {}
    for name in BOUNDS:
        out = tmp / f"{name}.onnx"
        runs[name] = (out, compress(str(RESCNN), recipe=name, calibration=calib, output=out, seed=0))
    return runs


@pytest.mark.parametrize("name", list(BOUNDS))
def test_recipe_keeps_test_accuracy(name, outputs, test_set, float_accuracy) -> None:
    path, result = outputs[name]
    # Stock onnxruntime for the standard-ONNX recipes; the packed one through onnxcomp's loader.
    sess = InferenceSession(str(path)) if name == "mixed" else ort.InferenceSession(
        str(path), providers=["CPUExecutionProvider"])
    drop = (float_accuracy - accuracy(sess, test_set)) * 100
    assert drop <= BOUNDS[name], f"{name}: test accuracy drop {drop:.2f} points > {BOUNDS[name]}"
    report = result.report
    assert report.fidelity is not None and report.fidelity.outputs[0].cosine > 0.99  # fidelity in the report
    assert report.size_after["total"] < report.size_before["total"]  # bytes in the report
    assert all("bits" in r for r in quantize_records(result))  # the widths chosen


def test_int8_avx2_has_7_bit_weights_and_fused_kernels_match_its_meaning(outputs, tmp_path, calib) -> None:
    """int8-avx2: 7-bit weights (int8 codes in [-63, 63]), fused like int8, and its fused run equals the QDQ model's
    meaning on any x86 CPU (no int16 saturation), while the logits stay within the int8 recipe's fidelity."""
    path, result = outputs["int8-avx2"]
    records = quantize_records(result)
    assert {(r["bits"], r["storage"]) for r in records} == {(7, "int8")}
    codes = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
             if t.data_type == onnx.TensorProto.INT8]
    assert codes and max(int(np.abs(c).max()) for c in codes) <= 63
    ops = optimized_ops(path, tmp_path)
    assert ops["QLinearConv"] == 8 and ops["QGemm"] == 1, ops
    x = calib["input"][:64]
    fused = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    meaning = ort.InferenceSession(str(path), session_options(optimize=False),
                                   providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(fused - meaning).max() <= 0.01 * np.abs(meaning).max()  # 0.002 (8-bit weights: 0.21 on AVX2)


def test_report_notes_saturating_cpus(outputs) -> None:
    """On a CPU whose fused kernels saturate with 8-bit weights, int8's report says so and names int8-avx2; the
    7-bit recipe's report never does, and no report does on other CPUs."""
    def noted(name: str) -> bool:
        return any("int8-avx2" in n for n in outputs[name][1].report.notes)

    assert noted("int8") == int8_pairs_saturate()
    assert not noted("int8-avx2")


def test_int8_runs_as_integer_kernels(outputs, tmp_path) -> None:
    """W8A8: every Conv/Gemm weight is int8 per channel, and onnxruntime fuses every Conv and the Gemm."""
    path, result = outputs["int8"]
    records = quantize_records(result)
    assert {(r["bits"], r["scheme"], r["granularity"], r["storage"]) for r in records} == {
        (8, "symmetric", "per_channel", "int8")}
    ops = optimized_ops(path, tmp_path)
    assert ops["QLinearConv"] == 8 and ops["QGemm"] == 1, ops
    assert not {"Conv", "FusedConv", "Gemm", "FusedGemm"} & set(ops), ops


def test_weight_only_recipes_keep_float_activations(outputs, tmp_path) -> None:
    for name, bits, storage in (("int8-weights", 8, "int8"), ("int4-weights", 4, "int4")):
        path, result = outputs[name]
        assert {(r["bits"], r["storage"]) for r in quantize_records(result)} == {(bits, storage)}
        assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    (p8, _), (p4, r4) = outputs["int8-weights"], outputs["int4-weights"]
    assert p4.stat().st_size < 0.7 * p8.stat().st_size  # int4 storage is real bytes, not int8 holding 4-bit codes
    assert {r["rounding"] for r in quantize_records(r4)} == {"gptq"}
    assert all(r["output_err"] <= r["output_err_nearest"] for r in quantize_records(r4))


def test_mixed_spends_the_budget_on_several_widths(outputs) -> None:
    path, result = outputs["mixed"]
    records = quantize_records(result)
    n = np.array([r["bytes_before"] // 4 for r in records])
    bits = np.array([r["bits"] for r in records])
    assert len(set(bits)) > 1 and set(bits) <= {2, 3, 4, 5, 6, 8}
    assert float((n * bits).sum() / n.sum()) <= 4.0
    assert "ai.onnxcomp" in {o.domain for o in onnx.load(str(path)).opset_import}  # codes packed at their width


def test_int8_needs_calibration_data(tmp_path) -> None:
    """Must not run without data: activation ranges cannot be measured (the error names --calib)."""
    with pytest.raises(PassError, match="--calib"):
        compress(str(RESCNN), recipe="int8", output=tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_recipes_load_and_are_listed(capsys) -> None:
    for name in BOUNDS:
        recipe = load_recipe(name)
        assert [s.name for s in recipe.steps[:4]] == ["fold_constants", "eliminate_identity", "fold_batchnorm",
                                                       "eliminate_dead"]
        assert name in builtin_recipes()
    with pytest.raises(SystemExit) as exc:
        main(["recipes"])
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert exc.value.code in (0, None) and set(BOUNDS) <= listed
    steps = {s.name: s.config for s in load_recipe("mixed").steps}
    assert steps["quantize_weights"].bits == "auto" and steps["quantize_weights"].budget == 4.0
