"""eliminate_dead: dead nodes and initializers go, graph inputs stay; a second run changes nothing."""

from __future__ import annotations

from onnx import helper

from onnxcomp.passes import EliminateDead
from tests.helpers import float_vi, tiny_model
from tests.passes.helpers import apply_pass, op_types, random_init


def test_eliminate_dead() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("MatMul", ["x", "w"], ["unused"]),
        helper.make_node("Sigmoid", ["unused"], ["unused2"]),
    ]
    proto = tiny_model(nodes, [random_init("w", 3, 3)], [float_vi("x", 2, 3), float_vi("spare", 1)],
                       [float_vi("y", 2, 3)])
    model, result = apply_pass(proto, EliminateDead())
    assert result.modified and op_types(model) == ["Relu"]
    out = model.to_proto()
    assert len(out.graph.initializer) == 0
    assert [i.name for i in out.graph.input] == ["x", "spare"]  # inputs are the interface: kept

    model2, result2 = apply_pass(out, EliminateDead())
    assert not result2.modified
