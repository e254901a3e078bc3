"""The TensorRT target's rules (the emitter of TensorRT-ready ONNX builds on them).

Activations, :func:`place_qdq` (TensorRT's Q/DQ placement recommendations; TensorRT fuses BN/activations and
propagates Q/DQ itself): int8 symmetric activations (zero point 0) on the activation inputs of ``Conv``,
``ConvTranspose``, ``Gemm`` and ``MatMul`` (weights must be int8 with zero point 0), never on their outputs; and
on the residual input of an ``Add`` whose other input comes from a weighted op (of two such inputs, the one on the
shorter path from the graph inputs), so TensorRT fuses the addition into the convolution. Each consumer gets its
own Q/DQ pair; biases stay float (TensorRT quantizes them itself).
"""

from __future__ import annotations

from onnxcomp.emit.qdq import WEIGHTED, Planner, QdqPlan, depths
from onnxcomp.ir.graph_edit import is_standard


def place_qdq(planner: Planner) -> QdqPlan:
    """TensorRT's placement (the module docstring) over the planner's graph."""
    plan = QdqPlan()
    depth = depths(planner.graph)
    weighted_out: set[str] = set()
    for node in planner.graph.nodes:
        if id(node) in planner.kept or not is_standard(node, *WEIGHTED):
            continue
        sides = planner.weighted(node)
        if sides is None:
            continue
        for t, side in zip(node.inputs, sides):
            if side is True:
                plan.add(t, consumer=node)
        weighted_out.update(t.name for t in node.outputs)
    for node in planner.graph.nodes:
        if id(node) in planner.kept or not is_standard(node, "Add") or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if not (planner.activation(a) and planner.activation(b)):
            continue
        from_weighted = [t.name in weighted_out for t in (a, b)]
        if all(from_weighted):  # the shorter path is the residual branch
            residual = a if depth.get(a.name, 0) <= depth.get(b.name, 0) else b
        elif any(from_weighted):
            residual = b if from_weighted[0] else a
        else:
            continue
        plan.add(residual, consumer=node)
    return plan
