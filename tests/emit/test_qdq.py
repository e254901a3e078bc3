"""Q/DQ plans and their insertion (``onnxcomp/emit/qdq.py``): an int32 bias that would overflow at s_x * s_w
raises its weight scale, and the channel still outputs its bias."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from tests.conftest import run_ort
from tests.helpers import float_vi, int8_weights, quantize_activations, random_calibration, tiny_model


def test_bias_overflow_raises_the_weight_scale() -> None:
    """A dead channel (tiny weights, sizeable bias): its int32 bias would overflow at s_x * s_w."""
    w = (np.random.default_rng(0).standard_normal((4, 2, 1, 1)) * 0.5).astype(np.float32)
    w[2] = 1e-12
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0.1, -0.2, 3.0, 0.0], np.float32), "b")]
    float_model = tiny_model(nodes, inits, [float_vi("x", 1, 2, 4, 4)], [float_vi("y", 1, 4, 4, 4)])
    proto, result = quantize_activations(int8_weights(float_model), random_calibration(float_model, (1, 2, 4, 4)))
    assert next(r for r in result.records if r["kind"] == "bias")["weight_scales_raised"] == 1
    x = np.random.default_rng(4).standard_normal((1, 2, 4, 4)).astype(np.float32)
    y = run_ort(proto, {"x": x})[0]
    np.testing.assert_allclose(y[0, 2], 3.0, atol=0.05)  # the dead channel still outputs its bias
