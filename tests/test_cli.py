"""The command line, run in-process through ``onnxcomp.cli.main`` (and twice through ``python -m onnxcomp``).

Every user error: exit code 2, exactly one stderr line ``onnxcomp: error: ...`` naming the problem, no traceback,
and nothing written (no OUT, no OUT.report.json/.md, no temporaries).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxcomp.cli import main
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DATA = MODELS / "data"
RESCNN = MODELS / "mnist_rescnn.onnx"
MNIST_CALIB = DATA / "mnist_calib.npz"
MNIST_TEST = DATA / "mnist_test.npz"
DIGITS_CALIB = DATA / "digits_calib.npz"


def _strict_json(text: str):
    """json.loads that refuses NaN/Infinity, which are not JSON (jq, JavaScript and most parsers reject them)."""
    def bad_constant(name):
        raise ValueError(f"not valid JSON: {name}")
    return json.loads(text, parse_constant=bad_constant)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_user_error(capsys, args, keywords, folder: Path, out: Path | None = None) -> str:
    """Exit 2, one line on stderr naming the problem, no traceback, nothing written into ``folder``."""
    before = _listing(folder)
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 2, (code, stdout, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("onnxcomp: error: "), line
    assert "Traceback" not in stderr + stdout and "internal error" not in line
    for word in [keywords] if isinstance(keywords, str) else keywords:
        assert word.lower() in line.lower(), (word, line)
    assert _listing(folder) == before, "a failed run left files behind"
    if out is not None:
        for p in (out, Path(f"{out}.report.json"), Path(f"{out}.report.md"), Path(f"{out}.data")):
            assert not p.exists(), p
    return line


@pytest.fixture
def work(tmp_path) -> Path:
    """A folder with a copy of the ResCNN model."""
    (tmp_path / "model.onnx").write_bytes(RESCNN.read_bytes())
    return tmp_path


# -- bad model files ----------------------------------------------------------------------------------------
def test_missing_model(capsys, work):
    out = work / "out.onnx"
    assert_user_error(capsys, ["compress", work / "nope.onnx", "-o", out], ["nope.onnx", "does not exist"], work, out)
    assert_user_error(capsys, ["inspect", work / "nope.onnx"], "does not exist", work)


def test_truncated_model(capsys, work):
    data = RESCNN.read_bytes()
    (work / "half.onnx").write_bytes(data[: len(data) // 2])
    out = work / "out.onnx"
    assert_user_error(capsys, ["compress", work / "half.onnx", "-o", out], ["half.onnx", "truncated"], work, out)
    assert_user_error(capsys, ["inspect", work / "half.onnx"], "truncated", work)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.999])
def test_truncated_model_at_several_points(capsys, work, cut):
    data = RESCNN.read_bytes()
    (work / "cut.onnx").write_bytes(data[: int(len(data) * cut)])
    assert_user_error(capsys, ["compress", work / "cut.onnx", "-o", work / "out.onnx"], ["cut.onnx", "onnx"], work,
                      work / "out.onnx")


def test_corrupt_model(capsys, work):
    (work / "random.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out = work / "out.onnx"
    assert_user_error(capsys, ["compress", work / "random.onnx", "-o", out], ["random.onnx", "onnx model"], work, out)


@pytest.mark.parametrize("kind", ["text", "png", "npz", "empty", "folder"])
def test_non_onnx_file(capsys, work, kind):
    path = work / f"{kind}.onnx"
    if kind == "text":
        path.write_text("this is not a model\nat all\n")
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00"
                         + bytes(64))
    elif kind == "npz":
        path.write_bytes(MNIST_CALIB.read_bytes())
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()
    out = work / "out.onnx"
    keywords = [path.name, "folder" if kind == "folder" else "onnx model"]
    assert_user_error(capsys, ["compress", path, "-o", out], keywords, work, out)
    assert_user_error(capsys, ["inspect", path], path.name, work)


# -- bad recipes --------------------------------------------------------------------------------------------
def test_unknown_recipe_name(capsys, work):
    out = work / "out.onnx"
    assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out, "--recipe", "no_such_recipe"],
                      ["unknown recipe", "no_such_recipe", "cleanup"], work, out)


@pytest.mark.parametrize("text,keywords", [
    ("passes:\n  - fold_constants\n  - no_such_pass\n", ["unknown pass", "no_such_pass"]),
    ("passes:\n  - fold_constants: {bogus_option: 1}\n", ["bogus_option", "fold_constants"]),
    ("passes:\n  - fold_constants: {max_growth: big}\n", ["max_growth", "number"]),
    ("passes:\n  - fold_constants: {small_bytes: 1.5}\n", ["small_bytes", "integer"]),
    ("passes: [fold_constants\n  - : :\n", ["not valid yaml"]),
    ("just a string\n", ["mapping"]),
    ("passes: []\n", ["passes"]),
    ("passes: [fold_constants]\nholdout: 2\n", ["holdout"]),
    ("passes: [fold_constants]\nbogus_key: 1\n", ["bogus_key"]),
], ids=["unknown-pass", "unknown-option", "wrong-type-float", "wrong-type-int", "invalid-yaml", "not-mapping",
        "empty-passes", "bad-holdout", "unknown-key"])
def test_bad_recipe_yaml(capsys, work, text, keywords):
    recipe = work / "recipe.yaml"
    recipe.write_text(text)
    out = work / "out.onnx"
    assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out, "--recipe", recipe], keywords, work, out)


# -- bad calibration data ------------------------------------------------------------------------------------
def test_calibration_input_name_mismatch(capsys, work):
    np.savez(work / "calib.npz", images=np.zeros((8, 1, 28, 28), np.float32))
    out = work / "out.onnx"
    assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out, "--calib", work / "calib.npz"],
                      ["'images'", "'input'"], work, out)


def test_calibration_wrong_shape(capsys, work):
    out = work / "out.onnx"
    line = assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out, "--calib", DIGITS_CALIB],
                             ["input", "shape", "28"], work, out)
    assert "8" in line


def test_calibration_wrong_rank(capsys, work):
    np.savez(work / "calib.npz", input=np.zeros((8, 28, 28), np.float32))
    out = work / "out.onnx"
    assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out, "--calib", work / "calib.npz"],
                      ["input", "rank"], work, out)


@pytest.mark.parametrize("content", [b"input,labels\n1,2\n", b"", RESCNN.read_bytes()[:1000]],
                         ids=["csv", "empty", "onnx-bytes"])
def test_calibration_not_npz(capsys, work, content):
    (work / "calib.npz").write_bytes(content)
    out = work / "out.onnx"
    assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out, "--calib", work / "calib.npz"],
                      ["calib", "npz"], work, out)


def test_calibration_missing(capsys, work):
    out = work / "out.onnx"
    assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out, "--calib", work / "nope.npz"],
                      ["nope.npz", "does not exist"], work, out)


def test_eval_models_with_different_outputs(capsys, work):
    """ResCNN and torch_patterns have different inputs and outputs: one line naming the outputs, exit 2."""
    other = work / "other.onnx"
    other.write_bytes((MODELS / "mnist_lenet300.onnx").read_bytes())
    renamed = work / "renamed.onnx"
    import onnx

    proto = onnx.load(str(other))
    old = proto.graph.output[0].name
    proto.graph.output[0].name = "scores"
    for node in proto.graph.node:
        node.output[:] = ["scores" if o == old else o for o in node.output]
    onnx.save(proto, str(renamed))
    assert_user_error(capsys, ["eval", other, renamed, "--data", MNIST_CALIB], ["outputs differ", "scores"], work)


def test_eval_data_mismatch(capsys, work):
    assert_user_error(capsys, ["eval", work / "model.onnx", work / "model.onnx", "--data", DIGITS_CALIB],
                      ["shape", "28"], work)


# -- bad output paths ----------------------------------------------------------------------------------------
def test_output_equal_to_input(capsys, work):
    before = (work / "model.onnx").read_bytes()
    for out in (work / "model.onnx", work / "." / "model.onnx"):
        assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out], ["input"], work)
    os.symlink(work / "model.onnx", work / "link.onnx")
    assert_user_error(capsys, ["compress", work / "model.onnx", "-o", work / "link.onnx"], ["input"], work)
    assert (work / "model.onnx").read_bytes() == before


def test_output_folder_missing(capsys, work):
    out = work / "no_such_dir" / "out.onnx"
    assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out], ["no_such_dir", "does not exist"], work,
                      out)


def test_output_is_a_folder(capsys, work):
    (work / "out.onnx").mkdir()
    assert_user_error(capsys, ["compress", work / "model.onnx", "-o", work / "out.onnx"], ["folder"], work)


def test_output_folder_not_writable(capsys, work):
    if os.geteuid() == 0:  # root ignores permission bits: use a place nobody can create files in
        out = Path("/proc/onnxcomp_test.onnx")
        assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out], ["/proc"], work, out)
        return
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = locked / "out.onnx"
        assert_user_error(capsys, ["compress", work / "model.onnx", "-o", out], ["not writable"], work, out)
        assert _listing(locked) == []
    finally:
        locked.chmod(0o700)


# -- bench arguments -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["input=1x1xax28", "input", "input=", "input=1x1x28x28x", "=1x1x28x28",
                                   "input=1x1x-28x28"])
def test_bench_malformed_shape(capsys, work, shape):
    assert_user_error(capsys, ["bench", work / "model.onnx", "--shape", shape, "--rounds", 1], ["shape"], work)


def test_bench_shape_names_unknown_input(capsys, work):
    assert_user_error(capsys, ["bench", work / "model.onnx", "--shape", "image=1x1x28x28", "--rounds", 1],
                      ["image", "input"], work)


@pytest.mark.parametrize("shape", ["input=1x1x28", "input=1x1x8x8"], ids=["rank", "fixed-dims"])
def test_bench_shape_not_matching_model(capsys, work, shape):
    assert_user_error(capsys, ["bench", work / "model.onnx", "--shape", shape, "--rounds", 1], ["input"], work)


def test_bench_missing_second_model(capsys, work):
    assert_user_error(capsys, ["bench", work / "model.onnx", work / "nope.onnx", "--rounds", 1],
                      ["nope.onnx", "does not exist"], work)


def test_bench_zero_rounds(capsys, work):
    assert_user_error(capsys, ["bench", work / "model.onnx", "--rounds", 0], ["rounds"], work)


def test_eval_missing_candidate(capsys, work):
    assert_user_error(capsys, ["eval", work / "model.onnx", work / "nope.onnx", "--data", MNIST_TEST],
                      ["nope.onnx", "does not exist"], work)


def test_external_data_file_missing(capsys, work):
    import onnx

    proto = onnx.load(str(RESCNN))
    onnx.save_model(proto, str(work / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)
    (work / "ext.onnx.data").unlink()
    out = work / "out.onnx"
    assert_user_error(capsys, ["compress", work / "ext.onnx", "-o", out], ["ext.onnx", "external data"], work, out)


def test_unknown_command_and_option(capsys, work):
    assert_user_error(capsys, ["squash", work / "model.onnx"], ["squash"], work)
    assert_user_error(capsys, ["compress", work / "model.onnx", "-o", work / "o.onnx", "--bogus"], ["--bogus"], work)
    assert_user_error(capsys, ["compress", work / "model.onnx"], ["output"], work)


# -- happy paths ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> Path:
    """mnist_rescnn compressed with the cleanup recipe and calibration data, through the CLI."""
    out = tmp_path_factory.mktemp("compressed") / "rescnn_clean.onnx"
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(RESCNN), "-o", str(out), "--calib", str(MNIST_CALIB)])
    assert exc.value.code in (0, None)
    return out


def test_compress_writes_model_and_reports(compressed):
    folder = compressed.parent
    assert _listing(folder) == [compressed.name, compressed.name + ".report.json", compressed.name + ".report.md"]
    report = json.loads(Path(f"{compressed}.report.json").read_text())
    for key in ("size_before", "size_after", "fidelity", "layers", "skipped"):
        assert key in report
    assert report["size_after"]["total"] <= report["size_before"]["total"]
    assert report["size_after"]["total"] == pytest.approx(compressed.stat().st_size, abs=16)
    fid = report["fidelity"]
    assert fid["accuracy_reference"] is not None and fid["accuracy_reference"] > 0.9
    assert fid["accuracy_drop"] == 0.0
    assert report["skipped"] == []
    assert len(report["layers"]) == 9 and all(r["op"] in ("Conv", "Gemm") for r in report["layers"])
    md = Path(f"{compressed}.report.md").read_text()
    assert md.startswith("# onnxcomp report") and "Fidelity" in md and "accuracy" in md


def test_report_json_is_strict_json(compressed):
    """A lossless run has SQNR = inf; the report must still be JSON that any parser reads (null or a string, not
    the bare token Infinity)."""
    _strict_json(Path(f"{compressed}.report.json").read_text())


def test_compress_stdout(capsys, tmp_path):
    out = tmp_path / "o.onnx"
    code, stdout, stderr = run_cli(capsys, "compress", RESCNN, "-o", out, "--calib", MNIST_CALIB)
    assert code == 0 and stderr == ""
    assert "compression ratio" in stdout and "drop +0.00 points" in stdout
    assert stdout.strip().splitlines()[-1].startswith(f"wrote {out}")
    code, stdout, _ = run_cli(capsys, "compress", RESCNN, "-o", tmp_path / "q.onnx", "--quiet")
    assert code == 0 and len(stdout.strip().splitlines()) == 1 and stdout.startswith("wrote ")


def test_inspect_text(capsys):
    code, out, err = run_cli(capsys, "inspect", RESCNN)
    assert code == 0 and err == ""
    lines = out.splitlines()
    ops = next(line for line in lines if line.startswith("ops: "))
    assert "Conv 8" in ops and "BatchNormalization 8" in ops and "Gemm 1" in ops
    size = next(line for line in lines if line.startswith("size: "))
    for section in ("float weights", "other tensors", "metadata", "graph", "total"):
        assert section in size
    assert any(line.startswith("parameters: ") for line in lines)


def test_inspect_json(capsys):
    code, out, err = run_cli(capsys, "inspect", "--json", RESCNN)
    assert code == 0 and err == ""
    info = _strict_json(out)
    assert {"ops", "size", "layers"} <= set(info)
    assert info["ops"]["Conv"] == 8
    assert info["size"]["total"] > info["size"]["float weights"] > 0
    assert all({"layer", "op", "shape", "params", "bytes"} <= set(r) for r in info["layers"])


def test_eval_prints_accuracy(capsys, compressed):
    code, out, err = run_cli(capsys, "eval", RESCNN, compressed, "--data", MNIST_TEST)
    assert code == 0 and err == ""
    assert out.splitlines()[0] == "1000 samples"
    acc = next(line for line in out.splitlines() if line.startswith("accuracy:"))
    assert "reference" in acc and "candidate" in acc and "drop +0.00 points" in acc
    code, out, _ = run_cli(capsys, "eval", RESCNN, compressed, "--data", MNIST_TEST, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["samples"] == 1000 and report["accuracy_drop"] == 0.0


def test_eval_json_is_strict_json(capsys, compressed):
    code, out, _ = run_cli(capsys, "eval", RESCNN, compressed, "--data", MNIST_TEST, "--json")
    assert code == 0
    _strict_json(out)


def test_bench_two_models(capsys, compressed):
    code, out, err = run_cli(capsys, "bench", RESCNN, compressed, "--rounds", 3, "--warmup", 1)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "median ms" in lines[0]
    assert lines[1].split()[0].endswith("mnist_rescnn.onnx") and lines[1].rstrip().endswith("1.00x")
    assert lines[2].split()[0].endswith(compressed.name) and lines[2].rstrip().endswith("x")


def test_bench_with_shape_and_data(capsys):
    code, out, _ = run_cli(capsys, "bench", RESCNN, "--shape", "input=2x1x28x28", "--rounds", 2, "--warmup", 0)
    assert code == 0 and len(out.strip().splitlines()) == 2
    code, out, _ = run_cli(capsys, "bench", RESCNN, "--data", MNIST_TEST, "--rounds", 2, "--warmup", 0)
    assert code == 0 and len(out.strip().splitlines()) == 2


def test_recipes_lists_cleanup(capsys):
    code, out, err = run_cli(capsys, "recipes")
    assert code == 0 and err == ""
    assert any(line.split()[0] == "cleanup" for line in out.splitlines())


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and "0.1.0" in out


def test_no_arguments_prints_help(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 0 and "compress" in out and "inspect" in out


# -- the module entry point ------------------------------------------------------------------------------------
def _module(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ONNXCOMP_DEBUG"}
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_module_entry_point_version(tmp_path):
    proc = _module("--version", cwd=tmp_path)
    assert proc.returncode == 0 and "0.1.0" in proc.stdout


def test_module_inspect_json_stdout_is_only_json(tmp_path):
    """Library warnings (onnx-graphsurgeon logs to stdout, e.g. for a bfloat16 tensor) must not corrupt the JSON
    that ``inspect --json`` prints: stdout is the JSON document and nothing else."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    graph = h.make_graph(
        [h.make_node("Cast", ["Wb"], ["wf"], to=T.FLOAT), h.make_node("MatMul", ["x", "wf"], ["y"])], "bf16",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 2])], [h.make_tensor_value_info("y", T.FLOAT, [2, 2])],
        [h.make_tensor("Wb", T.BFLOAT16, [2, 2], [1.0, 2.0, 3.0, 4.0])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "bf16.onnx"))
    proto = _module("inspect", "--json", "bf16.onnx", cwd=tmp_path)
    assert proto.returncode == 0, proto.stderr
    info = json.loads(proto.stdout)
    assert info["ops"] == {"Cast": 1, "MatMul": 1}
    proc = _module("compress", "bf16.onnx", "-o", "out.onnx", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [proc.stdout.splitlines()[-1]] and proc.stdout.startswith("wrote out.onnx")


def test_module_entry_point_error(tmp_path):
    proc = _module("compress", "missing.onnx", "-o", "out.onnx", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["onnxcomp: error: model file missing.onnx does not exist"]
    assert proc.stdout == "" and _listing(tmp_path) == []
