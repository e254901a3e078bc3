"""Helpers of the graph-pass tests in this folder: seeded random initializers, one pass applied to a proto, and the
onnxruntime check that the rewrite kept the outputs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.ir.model import Model
from onnxcomp.passes.base import PassContext
from tests.conftest import rel_err, run_ort

RNG = np.random.default_rng(0)


def random_init(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
    """A float32 initializer of standard-normal values (``positive``: their magnitudes plus 0.5)."""
    value = RNG.standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.abs(value) + 0.5 if positive else value, name)


def apply_pass(proto: onnx.ModelProto, pass_):
    """``pass_`` run on a loaded copy of ``proto``: (the model, the pass's result)."""
    model = Model.load(proto)
    result = pass_.run(model, PassContext())
    return model, result


def check_equal(before: onnx.ModelProto, after: Model, feed: dict, tol: float = 1e-5) -> None:
    """onnxruntime's outputs of ``after`` are within ``tol`` (relative) of ``before``'s on ``feed``."""
    for a, b in zip(run_ort(before, feed), run_ort(after.to_proto(), feed)):
        assert rel_err(a, b) <= tol


def op_types(model: Model) -> list[str]:
    """Op types of every node, subgraphs included."""
    return [n.op for g in model.graphs() for n in g.nodes]
