"""Hostile and careless input: no data loss, no memory bombs, no silent corruption, every user error one line.

Each case was found by trying onnxcomp as a careless or hostile user would, and failed before its fix: tiny
generated models and files, run through the CLI in process (exit code and stderr checked) or the Python API
(an :class:`OnnxcompError` subclass expected).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import onnxcomp
from onnxcomp import runtime
from onnxcomp.codecs.blob import EncodedWeight, to_blob
from onnxcomp.errors import CodecError, ModelLoadError, OnnxcompError, OutputError, RecipeError
from onnxcomp.kernels import schema
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DATA = MODELS / "data"


def refused(capsys, folder: Path, *args, words=()) -> str:
    """Exit 2, one line naming the problem, no traceback, nothing new in ``folder``."""
    before = sorted(p.name for p in folder.iterdir())
    code, out, err = run_cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error: "), err
    assert "internal error" not in err and "Traceback" not in err + out
    assert lines[0].isprintable()
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    assert sorted(p.name for p in folder.iterdir()) == before, "a refused run left files behind"
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny(opset: int = 17) -> onnx.ModelProto:
    w = nh.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    graph = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, [1, 3])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def varied(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3)).astype(np.float32)


# -- data loss -------------------------------------------------------------------------------------------------
def test_report_never_replaces_the_input_model(capsys, tmp_path):
    """`compress m.onnx.report.json -o m.onnx` wrote the JSON report over its own input (exit 0)."""
    model = tmp_path / "m.onnx.report.json"
    model.write_bytes(tiny().SerializeToString())  # onnx.save would pick JSON from the suffix
    before = digest(model)
    refused(capsys, tmp_path, "compress", model, "-o", tmp_path / "m.onnx", words=["would replace", "input model"])
    assert digest(model) == before


def test_output_never_replaces_the_calibration_data(capsys, tmp_path):
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "cal.npz", x=varied())
    before = digest(tmp_path / "cal.npz")
    refused(capsys, tmp_path, "compress", tmp_path / "m.onnx", "-o", tmp_path / "cal.npz", "--calib",
            tmp_path / "cal.npz", "--recipe", "int8-weights", words=["calibration data"])
    assert digest(tmp_path / "cal.npz") == before


def test_report_never_replaces_the_recipe(capsys, tmp_path):
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    recipe = tmp_path / "out.onnx.report.md"
    recipe.write_text("passes:\n  - fold_constants\n")
    refused(capsys, tmp_path, "compress", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", "--recipe", recipe,
            words=["recipe"])
    assert recipe.read_text() == "passes:\n  - fold_constants\n"


def test_output_hard_linked_to_the_input_is_refused(capsys, tmp_path):
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    os.link(tmp_path / "m.onnx", tmp_path / "link.onnx")
    refused(capsys, tmp_path, "compress", tmp_path / "m.onnx", "-o", tmp_path / "link.onnx", words=["input"])


def test_a_killed_run_leaves_no_staging_folder_behind(capsys, tmp_path):
    """A SIGKILL during the write left `.OUT.<...>.tmp/` forever; the next run to the same output removes it."""
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.onnx.{dead.pid}.abc123.tmp"
    stale.mkdir()
    (stale / "out.onnx").write_bytes(b"partial")
    alive = tmp_path / f".out.onnx.{os.getpid()}.def456.tmp"  # a live run's folder: must not be touched
    alive.mkdir()
    code, _, err = run_cli(capsys, "compress", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx", "--quiet")
    assert code == 0, err
    assert not stale.exists() and alive.exists()


# -- sparse tensors are read exactly ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("coordinates", [False, True])
def test_sparse_initializer_is_read_exactly(tmp_path, dtype, coordinates):
    """A sparse_initializer came out as an all-zero float64 tensor (exit 0), which onnxruntime refused."""
    model = tiny()
    model.graph.node[0].op_type = "MatMul"
    del model.graph.initializer[:]
    if dtype == np.float16:
        model.graph.input[0].type.tensor_type.elem_type = T.FLOAT16
        model.graph.output[0].type.tensor_type.elem_type = T.FLOAT16
    dense = np.zeros((3, 4), dtype)
    dense.flat[[0, 5, 11]] = [1.5, -2.0, 3.25]
    values = nh.from_array(dense.flat[[0, 5, 11]].copy(), "w")
    index = np.array([[0, 0], [1, 1], [2, 3]]) if coordinates else np.array([0, 5, 11])
    model.graph.sparse_initializer.append(h.make_sparse_tensor(values, nh.from_array(index.astype(np.int64)),
                                                               [3, 4]))
    onnx.save(model, str(tmp_path / "m.onnx"))
    out = onnxcomp.compress(str(tmp_path / "m.onnx"), recipe="cleanup", output=str(tmp_path / "o.onnx"))
    (w,) = [t for t in out.model.to_proto().graph.initializer if t.name == "w"]
    np.testing.assert_array_equal(nh.to_array(w), dense)
    assert nh.to_array(w).dtype == dtype
    x = np.eye(3, dtype=dtype)
    got = ort.InferenceSession(str(tmp_path / "o.onnx")).run(None, {"x": x[:1]})[0]
    np.testing.assert_array_equal(got, dense[:1])


def test_constant_sparse_value_is_read_exactly(tmp_path):
    model = tiny()
    del model.graph.initializer[:]
    values = nh.from_array(np.array([1.5, -2.0], np.float32), "v")
    sparse = h.make_sparse_tensor(values, nh.from_array(np.array([1, 10], np.int64)), [3, 4])
    model.graph.node.insert(0, h.make_node("Constant", [], ["w"], sparse_value=sparse))
    onnx.save(model, str(tmp_path / "m.onnx"))
    onnxcomp.compress(str(tmp_path / "m.onnx"), recipe="cleanup", output=str(tmp_path / "o.onnx"))
    got = ort.InferenceSession(str(tmp_path / "o.onnx")).run(None, {"x": np.array([[1, 0, 1]], np.float32)})[0]
    np.testing.assert_array_equal(got, [[0, 1.5, -2, 0]])


@pytest.mark.parametrize("index, words", [([0, 5, 12], "outside"), ([0, 5, 5], "repeats"), ([0, 5], "indices for")])
def test_bad_sparse_indices_are_refused(capsys, tmp_path, index, words):
    model = tiny()
    del model.graph.initializer[:]
    values = nh.from_array(np.array([1.5, -2.0, 3.25], np.float32), "w")
    model.graph.sparse_initializer.append(h.make_sparse_tensor(values, nh.from_array(np.array(index, np.int64)),
                                                               [3, 4]))
    onnx.save(model, str(tmp_path / "m.onnx"))
    refused(capsys, tmp_path, "inspect", tmp_path / "m.onnx", words=[words])


# -- corrupt models --------------------------------------------------------------------------------------------
def _bad_utf8(model):
    data = model.SerializeToString().replace(b"mm", b"\xff\xfe")
    return data


def _dims(model):
    model.graph.initializer[0].dims[:] = [5, 4]


def _dtype(model):
    model.graph.initializer[0].data_type = 77


def _undefined(model):
    model.graph.initializer[0].data_type = 0


def _huge(model):
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    del t.float_data[:]
    t.dims[:] = [1 << 20, 1 << 20]


def _attribute(model):
    node = model.graph.node[0]
    node.op_type = "Gemm"
    node.attribute.append(h.make_attribute("transB", 1.5))  # FLOAT where the schema wants INT


def _twice(model):
    model.graph.node.append(h.make_node("Identity", ["x"], ["w"]))  # w is an initializer already


CORRUPT = {
    "invalid UTF-8 in a name": (_bad_utf8, ["invalid UTF-8"]),
    "dims that do not match the data": (_dims, ["'w'", "bytes of data for 20 elements"]),
    "an unknown data type": (_dtype, ["unknown element type 77"]),
    "an undefined data type": (_undefined, ["no element type"]),
    "huge dims without data": (_huge, ["exceeds the limit", "ONNXCOMP_MAX_TENSOR_BYTES"]),
    "an attribute of the wrong type": (_attribute, ["transB", "FLOAT", "wants INT"]),
    "a tensor defined twice": (_twice, ["defined twice"]),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
@pytest.mark.parametrize("command", ["inspect", "cleanup"])
def test_corrupt_models_are_one_line(capsys, tmp_path, case, command):
    """Protobuf-parsable but corrupt models were 'internal error', exit 1."""
    edit, words = CORRUPT[case]
    model = tiny()
    data = edit(model)
    (tmp_path / "m.onnx").write_bytes(data if isinstance(data, bytes) else model.SerializeToString())
    args = ["inspect", tmp_path / "m.onnx"] if command == "inspect" else [
        "compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--recipe", "cleanup"]
    refused(capsys, tmp_path, *args, words=words)


def test_decode_weight_without_input_is_one_line(capsys, tmp_path):
    model = tiny()
    del model.graph.initializer[:]
    model.graph.node.insert(0, h.make_node(schema.DECODE_OP, [], ["w"], domain=schema.DOMAIN, shape=[3, 4], dtype=1))
    model.opset_import.append(h.make_opsetid(schema.DOMAIN, 1))
    onnx.save(model, str(tmp_path / "m.onnx"))
    refused(capsys, tmp_path, "inspect", tmp_path / "m.onnx", words=["DecodeWeight", "one constant uint8 blob"])


# -- packed-weight bombs ---------------------------------------------------------------------------------------
def _bomb(shape=(65536, 65536)) -> np.ndarray:
    """A 30-byte blob: a one-entry codebook and no indices, claiming 16 GiB of float32."""
    enc = EncodedWeight(tuple(shape), "float32", {"scheme": "codebook", "k": 1, "index_coding": "none",
                                                  "index_bits": 0},
                        {"codebook": np.float32(0.5).tobytes()})
    return to_blob(enc)


def _bomb_model(tmp_path: Path) -> Path:
    blob = _bomb()
    node = h.make_node(schema.DECODE_OP, ["blob"], ["w"], domain=schema.DOMAIN, shape=[65536, 65536], dtype=1)
    graph = h.make_graph([node, h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, [1, 65536])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 65536])], [nh.from_array(blob, "blob")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(schema.DOMAIN, 1)])
    model.ir_version = 8
    path = tmp_path / "bomb.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("command", ["inspect", "unpack"])
def test_blob_claiming_a_huge_shape_is_refused_before_allocating(capsys, tmp_path, command):
    """`unpack` wrote a 1 GiB model from a 13 KB file; `inspect` used 9.5 GB."""
    path = _bomb_model(tmp_path)
    args = ["inspect", path] if command == "inspect" else ["unpack", path, "-o", tmp_path / "plain.onnx"]
    refused(capsys, tmp_path, *args, words=["claims 16.0 GiB", "ONNXCOMP_MAX_EXPANSION"])


def test_blob_bomb_through_the_api_and_the_session(tmp_path):
    path = _bomb_model(tmp_path)
    with pytest.raises(CodecError, match="claims"):
        runtime.InferenceSession(str(path))
    from onnxcomp.kernels.reference import decode_weight

    with pytest.raises(CodecError, match="claims"):
        decode_weight(_bomb())


def test_a_bound_can_be_raised_for_one_run(monkeypatch):
    """Must not fire when the user allows it: the same blob at a small shape decodes, and a larger one decodes
    once ONNXCOMP_MAX_EXPANSION allows it."""
    from onnxcomp.kernels.reference import decode_weight

    assert decode_weight(_bomb((16, 16))).shape == (16, 16)
    with pytest.raises(CodecError):
        decode_weight(_bomb((1024, 1024)))  # 4 MiB from 30 bytes
    monkeypatch.setenv("ONNXCOMP_MAX_EXPANSION", str(1 << 20))
    assert float(decode_weight(_bomb((1024, 1024))).max()) == 0.5


# -- calibration data --------------------------------------------------------------------------------------------
def _calib_case(tmp_path: Path, **arrays) -> list:
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "c.npz", **arrays)
    return ["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--recipe", "int8", "--calib",
            tmp_path / "c.npz"]


@pytest.mark.parametrize("fill, words", [(np.nan, ["3 NaN", "finite"]), (np.inf, ["infinite", "finite"])])
def test_non_finite_calibration_is_refused(capsys, tmp_path, fill, words):
    """All-NaN feeds gave cosine 0.0 and top-1 agreement 1.0 (exit 0)."""
    x = varied()
    x[0] = fill
    refused(capsys, tmp_path, *_calib_case(tmp_path, x=x), words=words)


def test_constant_calibration_is_refused_unless_allowed(capsys, tmp_path):
    """All-zero feeds under int8 reported cosine 0.99998 while test accuracy fell from 98.2% to 73.3%."""
    args = _calib_case(tmp_path, x=np.zeros((8, 3), np.float32))
    refused(capsys, tmp_path, *args, words=["constant", "--allow-constant-calib"])
    code, _, err = run_cli(capsys, *args, "--allow-constant-calib", "--quiet")
    assert code == 0, err
    assert "constant" in (tmp_path / "o.onnx.report.md").read_text()


def test_feeds_the_model_overflows_on_are_refused(capsys, tmp_path):
    """Feeds of 3e38 gave 9% accuracy with exit 0: the original's outputs are infinite on them."""
    x = np.random.default_rng(0).uniform(1e38, 3e38, (8, 3)).astype(np.float32)
    refused(capsys, tmp_path, *_calib_case(tmp_path, x=x), words=["infinite", "outside the range"])


@pytest.mark.parametrize("labels", [np.zeros((8, 2), np.int64), np.int64(3), np.zeros(8, np.float32) + 0.5])
def test_labels_must_be_one_class_per_sample(capsys, tmp_path, labels):
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "c.npz", x=varied(), labels=labels)
    refused(capsys, tmp_path, "eval", tmp_path / "m.onnx", tmp_path / "m.onnx", "--data", tmp_path / "c.npz",
            words=["labels", "1-D integer"])


def _npz_member(path: Path, name: str, header_shape: tuple, payload: bytes) -> None:
    head = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {header_shape!r}, }}"
    head += " " * (118 - len(head)) + "\n"
    buf = io.BytesIO()
    buf.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head.encode() + payload)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}.npy", buf.getvalue())


def test_npz_header_claiming_more_than_it_stores_is_refused(capsys, tmp_path):
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    _npz_member(tmp_path / "c.npz", "x", (10**12, 3), b"\x00" * 64)
    refused(capsys, tmp_path, "compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--recipe", "int8",
            "--calib", tmp_path / "c.npz", words=["claims shape [1000000000000, 3]", "stores"])


def test_npz_expanding_past_the_calibration_limit_is_refused(capsys, tmp_path, monkeypatch):
    """A 1 MB .npz expanded to 1.2 GB (MemoryError); the limit is checked from the headers, before reading."""
    monkeypatch.setenv("ONNXCOMP_MAX_CALIBRATION_BYTES", "1MiB")
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    np.savez_compressed(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((200_000, 3), np.float32))
    assert (tmp_path / "c.npz").stat().st_size < 3 << 20
    refused(capsys, tmp_path, "compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--recipe", "int8",
            "--calib", tmp_path / "c.npz", words=["exceeds the limit", "ONNXCOMP_MAX_CALIBRATION_BYTES"])


def test_nan_outputs_never_read_as_perfect(tmp_path):
    from onnxcomp.calibration.data import CalibrationData
    from onnxcomp.measure.evaluator import FidelityBound, WeightEvaluator
    from onnxcomp.measure.fidelity import compare

    good = tiny()
    bad = tiny()
    w = nh.to_array(bad.graph.initializer[0]).copy()
    w[0, 0] = np.nan
    bad.graph.initializer[0].CopyFrom(nh.from_array(w, "w"))
    data = CalibrationData([{"x": varied(1)} for _ in range(4)])
    report = compare(good, bad, data)
    out = report.outputs[0]
    assert out.nonfinite > 0 and np.isnan(out.cosine) and out.top1_agreement == 0.0
    assert "NaN/infinite values" in report.lines()[0]
    from onnxcomp.ir.model import Model

    evaluator = WeightEvaluator(Model.load(good), ["w"], data, FidelityBound("cosine", 0.01))
    assert evaluator.drop({"w": w}) == np.inf and not evaluator.feasible({"w": w})
    assert evaluator.drop({"w": nh.to_array(good.graph.initializer[0])}) == 0.0  # must not fire


# -- models from the field ---------------------------------------------------------------------------------------
def test_attention_mask_ranges_stay_float_under_int8(tmp_path):
    """W8A8 on a BERT-style encoder (its mask path carries -inf / float-min) stopped with "cannot convert float
    NaN to integer"; tensors whose range is not finite now stay float and the rest is quantized."""
    result = onnxcomp.compress(str(MODELS / "bert_mask.onnx"), recipe="int8", calibration=str(DATA /
                               "bert_mask_calib.npz"), output=str(tmp_path / "o.onnx"))
    skipped = [why for p in result.report.passes if p.name == "quantize_activations" for _, why in p.skipped]
    assert sum("not finite" in why for why in skipped) >= 3  # the float-min Mul and Add, the -inf Where
    quantized = [n for n in result.model.graph.nodes if n.op == "QuantizeLinear"]
    assert len(quantized) >= 10
    assert result.report.fidelity.outputs[0].cosine >= 0.99
    ort.InferenceSession(str(tmp_path / "o.onnx"))


VAD_RECIPES = ["cleanup", "deep-compression", "int8", "int8-weights", "mixed", "slim"]


@pytest.mark.parametrize("recipe", VAD_RECIPES)
def test_recurrent_branching_model_stays_valid(tmp_path, recipe):
    """deep-compression on a Silero-style VAD (If on the sample rate, LSTM state in and out) wrote a model
    onnxruntime refused: "Model input (state) does not have type information" (strip_defaults cleared it from
    inside the If); slim stopped on its scalar sample-rate input."""
    out = tmp_path / "o.onnx"
    onnxcomp.compress(str(MODELS / "vad_state.onnx"), recipe=recipe, calibration=str(DATA / "vad_state_calib"),
                      output=str(out))
    state = next(i for i in onnx.load(str(out)).graph.input if i.name == "state")
    assert state.type.tensor_type.elem_type == T.FLOAT
    feed = dict(np.load(sorted((DATA / "vad_state_calib").glob("*.npz"))[0]))
    ref = runtime.InferenceSession(str(MODELS / "vad_state.onnx")).run(None, feed)
    got = runtime.InferenceSession(str(out)).run(None, feed)
    assert [a.shape for a in got] == [a.shape for a in ref]
    if recipe == "cleanup":
        for a, b in zip(ref, got):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_lossless_chain_never_grows_a_branching_model(tmp_path):
    """The lossless chain made the VAD 1.37x larger: a weight read in both branches of an If was folded into each
    branch (fold_constants), and graphsurgeon wrote outer-scope value_info into every branch."""
    recipe = {"name": "lossless", "passes": ["fold_constants", "eliminate_identity", "fold_batchnorm",
                                             "eliminate_dead", "dedupe_constants", "strip_defaults",
                                             "shorten_names"]}
    for source in (MODELS / "vad_state.onnx", _shared_if(tmp_path)):
        out = tmp_path / "lossless.onnx"
        onnxcomp.compress(str(source), recipe=recipe, output=str(out))
        assert out.stat().st_size <= source.stat().st_size, source.name


def _shared_if(tmp_path: Path) -> Path:
    """One weight, transposed in both branches of an If."""
    w = nh.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "W")

    def branch(name):
        nodes = [h.make_node("Transpose", ["W"], [f"{name}_wt"], perm=[1, 0]),
                 h.make_node("MatMul", ["x", f"{name}_wt"], [f"{name}_y"])]
        return h.make_graph(nodes, name, [], [h.make_tensor_value_info(f"{name}_y", T.FLOAT, [1, 64])])

    graph = h.make_graph([h.make_node("If", ["c"], ["y"], then_branch=branch("t"), else_branch=branch("e"))], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, [1, 64]), h.make_tensor_value_info("c", T.BOOL, [])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 64])], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 15)])
    model.ir_version = 8
    path = tmp_path / "shared_if.onnx"
    onnx.save(model, str(path))
    return path


def test_yolo_detector_is_pruned_with_its_head_locked(tmp_path):
    """slim on a YOLOv8-style export (C2f Split/Concat, SPPF, DFL head) stopped with IndexError; it prunes the
    backbone and neck and locks what it cannot follow, with the reason."""
    result = onnxcomp.compress(str(MODELS / "yolo_dfl.onnx"), recipe="slim", calibration=str(DATA /
                               "yolo_dfl_calib.npz"), output=str(tmp_path / "o.onnx"))
    step = next(p for p in result.report.passes if p.name == "prune_filters")
    assert "50.0% fewer" in step.summary
    reasons = " ".join(why for _, why in step.skipped)
    assert "Softmax" in reasons and "graph output" in reasons
    assert result.report.fidelity.outputs[0].cosine > 0.95


# -- user errors that were "internal error", exit 1 ------------------------------------------------------------
def test_unknown_rank_and_integer_inputs_without_calibration(capsys, tmp_path):
    model = tiny()
    model.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(model, str(tmp_path / "m.onnx"))
    code, _, err = run_cli(capsys, "compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--quiet")
    assert code == 0, err
    emb = nh.from_array(np.ones((10, 4), np.float32), "emb")
    graph = h.make_graph([h.make_node("Gather", ["emb", "ids"], ["y"])], "g",
                         [h.make_tensor_value_info("ids", T.INT64, [1, 3])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 3, 4])], [emb])
    ids = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    ids.ir_version = 8
    onnx.save(ids, str(tmp_path / "ids.onnx"))
    for args in (["compress", tmp_path / "ids.onnx", "-o", tmp_path / "o2.onnx", "--quiet"],
                 ["bench", tmp_path / "ids.onnx", "--rounds", "2"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 0, err


def test_eval_on_different_models(capsys, tmp_path):
    onnx.save(tiny(), str(tmp_path / "a.onnx"))
    other = tiny()
    other.graph.output[0].name = other.graph.node[0].output[0] = "q"
    onnx.save(other, str(tmp_path / "b.onnx"))
    np.savez(tmp_path / "c.npz", x=varied())
    refused(capsys, tmp_path, "eval", tmp_path / "a.onnx", tmp_path / "b.onnx", "--data", tmp_path / "c.npz",
            words=["outputs differ"])


def test_negative_seed(capsys, tmp_path):
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    refused(capsys, tmp_path, "compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--seed", "-1",
            words=["--seed"])
    with pytest.raises(RecipeError, match="seed"):
        onnxcomp.compress(str(tmp_path / "m.onnx"), seed=-1)


def test_a_long_chain_of_recipes_is_a_recipe_not_a_file_name(capsys, tmp_path):
    """`cleanup+` 200 times died on "File name too long"."""
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    code, _, err = run_cli(capsys, "compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--quiet",
                       "--recipe", "cleanup+" * 200)
    assert code == 0, err
    refused(capsys, tmp_path, "compress", tmp_path / "m.onnx", "-o", tmp_path / "p.onnx",
            "--recipe", "nope+" * 200, words=["unknown recipe 'nope'"])


@pytest.mark.parametrize("body, words", [
    ("passes:\n  - fold_constants: {max_growth: .nan}\n", ["max_growth", "finite"]),
    ("passes:\n  - fold_constants: {max_growth: .inf}\n", ["max_growth", "finite"]),
    ("passes:\n  - fold_constants: {max_growth: -1}\n", ["max_growth", ">= 0"]),
    ("passes:\n  - fold_constants: {small_bytes: -5}\n", ["small_bytes", ">= 0"]),
    ("passes:\n  - prune_magnitude: {max_drop: .nan}\n", ["max_drop", "finite"]),
    ("holdout: 0.1\nholdout: 0.2\npasses:\n  - fold_constants\n", ["duplicate key 'holdout'"]),
])
def test_recipe_values(capsys, tmp_path, body, words):
    onnx.save(tiny(), str(tmp_path / "m.onnx"))
    (tmp_path / "r.yaml").write_text(body)
    refused(capsys, tmp_path, "compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--recipe",
            tmp_path / "r.yaml", words=words)


def test_unknown_domain_ops_pass_through_cleanup(tmp_path):
    """A model with an op of an unknown domain could not be cleaned at all."""
    model = tiny()
    model.graph.node.append(h.make_node("Foo", ["y"], ["z"], domain="com.example"))
    model.graph.output[0].name = "z"
    model.opset_import.append(h.make_opsetid("com.example", 1))
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = onnxcomp.compress(str(tmp_path / "m.onnx"), recipe="cleanup", output=str(tmp_path / "o.onnx"))
    assert [n.op for n in result.model.graph.nodes] == ["MatMul", "Foo"]
    assert any("fidelity not measured" in n and "com.example" in n for n in result.report.notes)


def test_messages_never_print_raw_bytes(capsys, tmp_path):
    data = bytearray(tiny().SerializeToString())
    data[-6:] = b"\x00\x1b[31m"  # a truncated tail with control characters in it
    (tmp_path / "m.onnx").write_bytes(bytes(data))
    refused(capsys, tmp_path, "inspect", tmp_path / "m.onnx")  # refused() checks the line is printable


@pytest.mark.parametrize("call", [
    lambda: onnxcomp.compress(str(MODELS / "mnist_lenet300.onnx"), recipe=123),
    lambda: onnxcomp.load(123),
    lambda: onnxcomp.compress(str(MODELS / "mnist_lenet300.onnx"), output=123),
    lambda: runtime.unpack(123),
    lambda: runtime.InferenceSession(b"not a model"),
    lambda: onnxcomp.evaluate(str(MODELS / "mnist_lenet300.onnx"), str(MODELS / "torch_patterns.onnx"),
                              str(DATA / "mnist_calib.npz")),
], ids=["recipe type", "load type", "output type", "unpack type", "session bytes", "evaluate mismatch"])
def test_api_raises_onnxcomp_errors(call):
    """TypeError, ValueError, AttributeError and onnxruntime exceptions leaked from the API for these."""
    with pytest.raises(OnnxcompError):
        call()


def test_api_takes_serialized_models():
    """Must not fire: bytes are a model source like a path."""
    data = (MODELS / "mnist_lenet300.onnx").read_bytes()
    assert len(runtime.unpack(data).graph.initializer) == 6
    assert runtime.InferenceSession(data).get_inputs()[0].name == "input"


def test_errors_are_the_documented_classes():
    with pytest.raises(ModelLoadError):
        onnxcomp.load(b"\x08\x07")
    with pytest.raises(OutputError):
        onnxcomp.compress(str(MODELS / "mnist_lenet300.onnx"), output=str(MODELS / "mnist_lenet300.onnx"))
