"""Latency (``onnxcomp/measure/latency.py``): runs are interleaved model by model after each model's warm-up, the
figures are medians and percentiles of the measured times, the first model is the baseline; and the bench feed.
Timing is checked for its structure only (a deterministic clock stands in for the machine's), never for speed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import CalibrationError
from onnxcomp.measure import latency
from onnxcomp.measure.latency import bench_feed, benchmark


def _model(path, x_shape=("N", 3), extra_int: bool = False) -> str:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    if extra_int:
        inputs.append(helper.make_tensor_value_info("k", TensorProto.INT64, [2]))
        nodes.append(helper.make_node("Identity", ["k"], ["k_out"]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
                              + ([helper.make_tensor_value_info("k_out", TensorProto.INT64, [2])] if extra_int else []),
                              [numpy_helper.from_array(np.ones((3, 2), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_runs_are_interleaved_and_summarised_by_median(monkeypatch) -> None:
    """Each session warms up alone, then every round runs A, B, A, B, ...; a fake clock makes every run of A take
    1, 2, 3, ... ms (its k-th run) and every run of B half of it, so the figures are known exactly."""
    log, clock = [], [0.0]
    durations = {"a.onnx": iter(np.arange(1.0, 100.0)), "b.onnx": iter(np.arange(1.0, 100.0) / 2)}

    class FakeSession:
        def __init__(self, name: str):
            self.name = name

        def run(self, outputs, feed):
            assert outputs is None and feed == {"x": 1}
            log.append(self.name)
            clock[0] += next(durations[self.name]) / 1e3

    monkeypatch.setattr(latency, "session", lambda m, threads=0: FakeSession(m))
    monkeypatch.setattr(latency, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    rounds = []
    rows = benchmark(["a.onnx", "b.onnx"], {"x": 1}, rounds=5, warmup=2, progress=rounds.append)
    assert log == ["a.onnx"] * 2 + ["b.onnx"] * 2 + ["a.onnx", "b.onnx"] * 5
    assert rounds == [0, 1, 2, 3, 4]
    a, b = rows
    assert (a.model, b.model) == ("a.onnx", "b.onnx")
    # A's timed runs are its 3rd..7th: 3..7 ms (the two warm-up runs are not timed); B's half of those
    assert a.median_ms == pytest.approx(5.0) and b.median_ms == pytest.approx(2.5)
    assert a.p10_ms == pytest.approx(np.percentile([3, 4, 5, 6, 7], 10))
    assert a.p90_ms == pytest.approx(np.percentile([3, 4, 5, 6, 7], 90))
    assert a.speedup == 1.0 and b.speedup == pytest.approx(2.0)


def test_real_sessions_give_positive_medians(tmp_path) -> None:
    """Two models side by side in onnxruntime: one row each, in order, positive times ordered p10 <= median <= p90,
    the baseline's ratio 1 and the other's its median ratio (no speed is asserted)."""
    paths = [_model(tmp_path / "a.onnx"), _model(tmp_path / "b.onnx")]
    rows = benchmark(paths, {"x": np.ones((1, 3), np.float32)}, rounds=5, warmup=1, threads=1)
    assert [r.model for r in rows] == paths
    for r in rows:
        assert 0 < r.p10_ms <= r.median_ms <= r.p90_ms
    assert rows[0].speedup == 1.0 and rows[1].speedup == pytest.approx(rows[0].median_ms / rows[1].median_ms)


def test_bench_feed_from_shapes_and_seed(tmp_path) -> None:
    """Seeded random floats, the batch dim set to 1, integer inputs zeros; ``shapes`` fixes free dims."""
    path = _model(tmp_path / "m.onnx", extra_int=True)
    feed = bench_feed(path, seed=3)
    assert feed["x"].shape == (1, 3) and feed["x"].dtype == np.float32 and feed["x"].std() > 0
    assert feed["k"].dtype == np.int64 and not feed["k"].any()
    np.testing.assert_array_equal(bench_feed(path, seed=3)["x"], feed["x"])
    assert not np.array_equal(bench_feed(path, seed=4)["x"], feed["x"])
    assert bench_feed(path, shapes={"x": [5, 3]})["x"].shape == (5, 3)


def test_bench_feed_from_data(tmp_path) -> None:
    path = _model(tmp_path / "m.onnx")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(tmp_path / "d.npz", x=x)
    np.testing.assert_array_equal(bench_feed(path, data=str(tmp_path / "d.npz"))["x"], x[:1])


def test_bench_feed_refusals_name_the_input(tmp_path) -> None:
    with pytest.raises(CalibrationError, match="unknown input 'image'.*'x'"):
        bench_feed(_model(tmp_path / "m.onnx"), shapes={"image": [1, 3]})
    with pytest.raises(CalibrationError, match="input 'x' has free dimensions.*--shape x="):
        bench_feed(_model(tmp_path / "free.onnx", x_shape=("N", "F")))
