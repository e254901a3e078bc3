"""eliminate_identity: Identity and inference Dropout bypassed (graph outputs keep their names, outputs exact), and
where it must not fire."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnxcomp.passes import EliminateIdentity
from tests.helpers import float_vi, tiny_model
from tests.passes.helpers import RNG, apply_pass, check_equal, op_types


def test_eliminate_identity_and_dropout() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Dropout", ["b"], ["c"]),
        helper.make_node("Sigmoid", ["c"], ["d"]),
        helper.make_node("Identity", ["d"], ["y"]),  # graph output: Sigmoid writes y directly
    ]
    proto = tiny_model(nodes, [], [float_vi("x", 2, 3)], [float_vi("y", 2, 3)])
    model, result = apply_pass(proto, EliminateIdentity())
    assert result.modified and op_types(model) == ["Relu", "Sigmoid"]
    assert [o.name for o in model.to_proto().graph.output] == ["y"]
    check_equal(proto, model, {"x": RNG.standard_normal((2, 3)).astype(np.float32)}, tol=0)


def test_eliminate_identity_must_not_fire() -> None:
    """Identity copying a graph input to an output; Dropout whose mask is used; Identity from an output."""
    nodes = [
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node("Dropout", ["x"], ["d", "mask"]),
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["r2"]),
    ]
    outputs = [float_vi("y", 2, 3), float_vi("m", 2, 3), float_vi("d", 2, 3), float_vi("r", 2, 3), float_vi("r2", 2, 3)]
    proto = tiny_model(nodes, [], [float_vi("x", 2, 3)], outputs, opset=13)
    model, result = apply_pass(proto, EliminateIdentity())
    assert not result.modified
    assert op_types(model).count("Identity") == 2 and "Dropout" in op_types(model)
