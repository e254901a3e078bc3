"""TensorRT's Q/DQ placement (``onnxcomp/emit/tensorrt.py``), through quantize_activations: int8 symmetric pairs on
the inputs of weighted ops and the residual Add input, one per consumer, never on weighted ops' outputs, float
biases."""

from __future__ import annotations

from collections import Counter

import numpy as np
from onnx import numpy_helper

from tests.conftest import run_ort
from tests.helpers import consumers, cosine, int8_weights, quantize_activations, random_calibration, resnetish


def test_tensorrt_placement() -> None:
    proto_in = int8_weights(resnetish())
    proto, result = quantize_activations(proto_in, random_calibration(proto_in, (2, 3, 8, 8)), target="tensorrt")
    quantized = Counter(n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear")
    # Inputs of the weighted ops, and the residual (MaxPool) input of the Add, with a pair per consumer.
    assert quantized == {"x": 1, "p1": 2, "f": 1}
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in ("w1_q", "w2_q", "wf_q"):
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any()
    for conv_out in ("c1", "c2", "logits"):  # never on the outputs of weighted ops
        assert "QuantizeLinear" not in consumers(proto, conv_out)
    assert not any(r["kind"] == "bias" for r in result.records)  # TensorRT quantizes biases itself
    assert {i.name for i in proto.graph.initializer} >= {"b1", "b2", "bf"}
    x = np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)
    assert cosine(run_ort(resnetish(), {"x": x})[0], run_ort(proto, {"x": x})[0]) > 0.99
