"""``onnxcomp.api.compress`` on disk: the input (path, proto, external data) is never modified, the output is
refused onto the input, model and reports are written together or not at all, the same seed gives the same
bytes, and an external-data input gives a single-file output."""

from __future__ import annotations

import copy
import os
import pathlib

import numpy as np
import onnx
import pytest

from onnxcomp.api import compress
from onnxcomp.errors import OutputError
from onnxcomp.ir.model import Model
from tests.conftest import ROOT
from tests.helpers import assert_same_outputs, disk_full, gemm_model, if_model, metadata_model, rand, save

RESCNN = ROOT / "models" / "mnist_rescnn.onnx"
MNIST_CALIB = ROOT / "models" / "data" / "mnist_calib.npz"


def test_external_data_cleanup_recipe_writes_single_file(tmp_path):
    reference = gemm_model()
    ext = copy.deepcopy(reference)
    onnx.save_model(ext, str(tmp_path / "in.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    compress(tmp_path / "in.onnx", recipe="cleanup", output=out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.onnx", "o.onnx.report.json", "o.onnx.report.md"]
    assert_same_outputs(reference, str(out), {"x": rand(np.random.default_rng(12), 2, 64)})


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
    proto = metadata_model()
    before = proto.SerializeToString()
    compress(proto, recipe="cleanup")
    assert proto.SerializeToString() == before


def test_external_data_input_never_modified(tmp_path):
    ext = gemm_model()
    onnx.save_model(ext, str(tmp_path / "in.onnx"), save_as_external_data=True, location="in.onnx.data",
                    size_threshold=0)
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    compress(tmp_path / "in.onnx", recipe="cleanup", output=tmp_path / "out.onnx")
    Model.load(tmp_path / "in.onnx").save(tmp_path / "ext.onnx", external_data=True)
    for name, state in files.items():
        assert ((tmp_path / name).read_bytes(), (tmp_path / name).stat().st_mtime_ns) == state


def test_output_path_equal_to_input_is_refused(tmp_path):
    path = save(gemm_model(), tmp_path / "m.onnx")
    before = path.read_bytes()
    with pytest.raises(OutputError, match="input"):
        compress(path, output=tmp_path / "." / "m.onnx")
    with pytest.raises(OutputError):
        Model.load(path).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_compress_failing_on_report_leaves_nothing(tmp_path, monkeypatch):
    """A run that fails while writing its report (disk full) is a user-facing OutputError and leaves neither the
    model nor a half set of reports behind."""
    path = save(gemm_model(), tmp_path / "in.onnx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real = pathlib.Path.write_text

    def fail_on_md(self, text, *args, **kwargs):
        if ".report.md" in self.name:
            real(self, text[:5], *args, **kwargs)
            disk_full()
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", fail_on_md)
    with pytest.raises((OutputError, OSError)):
        compress(path, recipe="cleanup", output=out_dir / "out.onnx")
    assert sorted(p.name for p in out_dir.iterdir()) == []


def test_compress_report_write_error_is_output_error(tmp_path, monkeypatch):
    """A disk-full error while writing the report is a user-facing OutputError (CLI exit 2), not an internal one."""
    path = save(gemm_model(), tmp_path / "in.onnx")
    real = pathlib.Path.write_text

    def fail_on_report(self, text, *args, **kwargs):
        if ".report." in self.name:
            disk_full()
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", fail_on_report)
    with pytest.raises(OutputError, match="No space left"):
        compress(path, recipe="cleanup", output=tmp_path / "out.onnx")


def test_compress_is_deterministic(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}.onnx"
        compress(RESCNN, recipe="cleanup", calibration=MNIST_CALIB, output=out, seed=123)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    # and saving the same Model twice gives the same bytes
    model = Model.load(if_model())
    a, b = model.save(tmp_path / "a.onnx"), model.save(tmp_path / "b.onnx")
    assert a.read_bytes() == b.read_bytes()
