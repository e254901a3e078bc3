"""Streaming statistics (``onnxcomp/calibration/stats.py``): per-channel moments merged batch by batch match numpy,
the |x| histogram keeps every count through range doubling, its signed halves and exact zeros, and capture in
groups under a memory budget gives the same statistics."""

from __future__ import annotations

import numpy as np

from onnxcomp.calibration.stats import RunningStats
from tests.helpers import streamed_stats


def test_running_stats_match_numpy() -> None:
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal((70, 3, 50)) * (i + 1) + i for i in range(4)]
    stats = RunningStats(bins=256)
    for c in chunks:
        stats.update(c)
    full = np.concatenate(chunks)
    per_channel = np.moveaxis(full, 1, -1).reshape(-1, 3)
    np.testing.assert_allclose(stats.channel_mean, per_channel.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.channel_std, per_channel.std(0), rtol=1e-10)
    assert stats.min == full.min() and stats.max == full.max() and stats.count == full.size
    assert stats.hist.sum() == full.size  # range doubling keeps every count
    width = stats.hist_range / stats.bins
    low, high = np.percentile(np.abs(full), [98.5, 99.5])
    assert low - width <= stats.abs_percentile(99) <= high + width


def test_signed_histogram_halves_and_zeros() -> None:
    x = np.concatenate([np.zeros(50), np.random.default_rng(1).standard_normal(1000) * 3])
    stats = streamed_stats(x)
    assert stats.hist_pos.sum() == np.count_nonzero(x >= 0) and stats.hist_neg.sum() == np.count_nonzero(x < 0)
    np.testing.assert_array_equal(stats.hist, stats.hist_pos + stats.hist_neg)
    assert stats.zeros == 50
    assert stats.hist_range >= np.abs(x).max()


def test_grouped_capture_gives_the_same_statistics(monkeypatch) -> None:
    """collect_stats with a memory budget captures in several passes; the statistics do not change."""
    from onnx import TensorProto, helper

    from onnxcomp.calibration import stats as stats_module
    from onnxcomp.calibration.data import CalibrationData
    from onnxcomp.calibration.stats import collect_stats

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Sigmoid", ["b"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rng = np.random.default_rng(4)
    data = CalibrationData.from_source(
        [{"x": rng.standard_normal((8, 64)).astype(np.float32)} for _ in range(3)], model
    )
    whole = collect_stats(model, ["a", "b", "y"], data, channels=False)
    passes = []
    real_capture = stats_module.capture
    monkeypatch.setattr(
        stats_module, "capture", lambda m, names, *a: passes.append(names) or real_capture(m, names, *a)
    )
    grouped = collect_stats(model, ["a", "b", "y"], data, channels=False, max_batch_bytes=8 * 64 * 4)
    assert passes == [["a"], ["b"], ["y"]]  # one tensor of one batch fits the budget
    for name in whole:
        assert (whole[name].min, whole[name].max, whole[name].zeros) == (grouped[name].min, grouped[name].max,
                                                                          grouped[name].zeros)  # fmt: skip
        np.testing.assert_array_equal(whole[name].hist_pos, grouped[name].hist_pos)
