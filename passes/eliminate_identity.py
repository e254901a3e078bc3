"""Remove Identity nodes and inference-time Dropout.

Rules:
1. ``y = Identity(x)`` where ``y`` is not an output of its graph: every use of ``y`` reads ``x``; the node goes.
2. ``y = Identity(x)`` where ``y`` is a graph output and ``x`` is produced by a node of the same graph and is
   neither a graph output nor used elsewhere: that node writes ``y`` directly; the Identity goes. (Otherwise the
   Identity stays: graph outputs keep their names, and an If/Loop body that returns an outer value needs it.)
3. ``y[, mask] = Dropout(x)`` is Identity at inference when ``mask`` is unused and training_mode is not a
   constant true (a non-constant training_mode is left alone).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.ir.graph_edit import detach, is_graph_output, is_standard, node_label, replace_uses
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import constant_value
from onnxcomp.passes.base import Pass, PassContext, PassResult


class EliminateIdentity(Pass):
    name = "eliminate_identity"
    description = "remove Identity and inference-time Dropout nodes"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        result = PassResult(modified=False)
        for graph in list(model.graphs()):
            for node in list(graph.nodes):
                reason = _refusal(node)
                if reason is None:
                    reason = _bypass(graph, node)
                if reason is None:
                    result.modified = True
                    result.records.append({"layer": node_label(node), "op": node.op, "action": "removed"})
                elif reason != "not identity":
                    result.skipped.append((node_label(node), reason))
        return result


def _refusal(node: gs.Node) -> str | None:
    if not is_standard(node, "Identity", "Dropout"):
        return "not identity"
    if node.op == "Dropout":
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            return "Dropout mask is used"
        if len(node.inputs) > 2 and node.inputs[2].name:
            mode = constant_value(node.inputs[2])
            if mode is None or bool(np.asarray(mode).item()):
                return "Dropout training_mode is not constant false"
    return None


def _bypass(graph: gs.Graph, node: gs.Node) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    if not is_graph_output(graph, y):
        replace_uses(y, x)
        detach(graph, node)
        return None
    producer = x.inputs[0] if len(x.inputs) == 1 else None
    if producer is None or producer not in graph.nodes:
        return "graph output copies a graph input, constant or outer value"
    if is_graph_output(graph, x) or len(x.outputs) > 1:
        return "input is also a graph output or used elsewhere"
    detach(graph, node)
    idx = next(i for i, t in enumerate(producer.outputs) if t is x)
    producer.outputs[idx] = y
    return None
