"""Atomic writes (``onnxcomp/ir/fileio.py``, used by ``Model.save``): a write that fails midway leaves neither a
partial file nor a temporary behind and keeps the previous file; saved files get the user's file mode."""

from __future__ import annotations

import os
import pathlib
from pathlib import Path

import onnx
import pytest

import onnxcomp.ir.fileio
from onnxcomp.errors import OutputError
from onnxcomp.ir.model import Model
from tests.helpers import disk_full, gemm_model


def test_save_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    model = Model.load(gemm_model())
    real = pathlib.Path.write_bytes

    def half_then_fail(self, data):
        real(self, data[: len(data) // 2])
        disk_full()

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_fail)
    with pytest.raises(OutputError, match="No space left"):
        model.save(tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_save_failing_midway_keeps_previous_file(tmp_path, monkeypatch):
    """Overwriting an existing output: a failed write leaves the old file as it was, and no temporary."""
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")
    model = Model.load(gemm_model())
    real = pathlib.Path.write_bytes

    def half_then_fail(self, data):
        real(self, data[:10])
        disk_full()

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_fail)
    with pytest.raises(OutputError):
        model.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"] and target.read_bytes() == b"previous"


def test_external_data_save_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    model = Model.load(gemm_model())
    real = onnx.save_model

    def write_data_then_fail(proto, path, *args, **kwargs):
        Path(str(path) + ".data").write_bytes(b"\0" * 100)
        Path(path).write_bytes(b"partial")
        disk_full()

    monkeypatch.setattr(onnx, "save_model", write_data_then_fail)
    with pytest.raises(OutputError):
        model.save(tmp_path / "out.onnx", external_data=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(onnx, "save_model", real)


def test_staged_dir_removes_everything_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with onnxcomp.ir.fileio.staged_dir(tmp_path / "x.onnx") as stage:
            (stage / "x.onnx").write_bytes(b"abc")
            (stage / "x.onnx.data").write_bytes(b"abc")
            assert stage.name.startswith(".x.onnx.") and stage.parent == tmp_path
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_save_uses_user_file_mode(tmp_path):
    out = Model.load(gemm_model()).save(tmp_path / "m.onnx")
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
