"""Calibration data (``onnxcomp/calibration/data.py``): sources (npz, folder, iterable, reader), batching at the
model's fixed batch, checks against the model's inputs, split and folds, and activation capture."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.calibration.data import CalibrationData, capture, input_specs
from onnxcomp.calibration.stats import collect_stats
from onnxcomp.errors import CalibrationError


def _varied(*shape: int) -> np.ndarray:
    """Seeded normal data: constant data is refused (CalibrationData.check_informative)."""
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


def _model(batch="N") -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_npz_is_batched_and_cast(tmp_path) -> None:
    path = tmp_path / "c.npz"
    np.savez(path, x=_varied(50, 4).astype(np.float64), labels=np.arange(50))  # float64 on disk
    data = CalibrationData.from_source(path, _model(), batch_size=16)
    assert [len(f["x"]) for f in data] == [16, 16, 16, 2]
    assert data.feeds[0]["x"].dtype == np.float32
    assert data.num_samples == 50 and [len(lab) for lab in data.labels] == [16, 16, 16, 2]


def test_fixed_batch_of_the_model_wins(tmp_path) -> None:
    data = CalibrationData.from_source({"x": _varied(5, 4)}, _model(batch=1), batch_size=16)
    assert len(data) == 5 and all(len(f["x"]) == 1 for f in data)


def test_folder_iterable_and_reader(tmp_path) -> None:
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", x=np.full((2, 4), i, np.float32))
    folder = CalibrationData.from_source(tmp_path, _model())
    assert len(folder) == 3 and folder.feeds[2]["x"][0, 0] == 2
    feeds = [{"x": _varied(1, 4), "labels": np.array([1])} for _ in range(4)]
    it = CalibrationData.from_source(iter(feeds), _model())
    assert len(it) == 4 and it.labels is not None

    class Reader:
        def __init__(self):
            self.items = list(feeds)

        def get_next(self):
            return self.items.pop() if self.items else None

    assert len(CalibrationData.from_source(Reader(), _model())) == 4


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"input": np.ones((2, 4))}, ["unknown input(s) 'input'", "missing input(s) 'x'"]),
        ({"x": np.ones((2, 5))}, ["'x'", "axis 1 must be 4"]),
        ({"x": np.ones((2, 4, 1))}, ["rank 3", "rank 2"]),
        ({"x": np.ones((2, 4)), "labels": np.ones(3, np.int64)}, ["3 labels for 2 samples"]),
        ({"x": np.array([["a"] * 4])}, ["expects float32"]),
    ],
)
def test_mismatches_are_named(arrays, words) -> None:
    with pytest.raises(CalibrationError) as err:
        CalibrationData.from_source(arrays, _model())
    for word in words:
        assert word in str(err.value)


def test_unreadable_sources(tmp_path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        CalibrationData.from_source(tmp_path / "missing.npz", _model())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match="not an .npz archive"):
        CalibrationData.from_source(bad, _model())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no .npz"):
        CalibrationData.from_source(tmp_path / "empty", _model())


def test_split_keeps_back_the_tail() -> None:
    data = CalibrationData.from_source({"x": _varied(80, 4)}, _model(), batch_size=10)
    calib, held = data.split(0.25)
    assert len(calib) == 6 and len(held) == 2


def test_folds_check_every_feed_once() -> None:
    x = np.arange(70 * 4, dtype=np.float32).reshape(70, 4)
    data = CalibrationData.from_source({"x": x}, _model(), batch_size=10)
    folds = data.folds(3)
    assert [len(check) for _, check in folds] == [2, 3, 2]
    checked = np.concatenate([f["x"] for _, check in folds for f in check.feeds])
    np.testing.assert_array_equal(checked, x)
    for fit, check in folds:
        assert len(fit) + len(check) == 7
        assert not {id(f) for f in fit.feeds} & {id(f) for f in check.feeds}


def test_input_specs_skip_initializers() -> None:
    model = _model()
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]))
    assert [s.name for s in input_specs(model)] == ["x"]


def test_capture_streams_intermediate_tensors() -> None:
    x = np.random.default_rng(2).standard_normal((40, 4)).astype(np.float32)
    data = CalibrationData.from_source({"x": x}, _model(), batch_size=8)
    seen = []
    capture(_model(), ["h"], data, lambda values: seen.append(values["h"].shape))
    assert seen == [(8, 3)] * 5
    stats = collect_stats(_model(), ["h", "y"], data)
    w = numpy_helper.to_array(_model().graph.initializer[0])
    h = x @ w
    assert abs(stats["h"].max - h.max()) < 1e-5 and abs(stats["y"].min - max(h.min(), 0)) < 1e-6
    with pytest.raises(CalibrationError, match="not produced"):
        capture(_model(), ["nope"], data, lambda v: None)
