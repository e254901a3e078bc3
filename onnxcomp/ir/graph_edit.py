"""Small, checked edits of an onnx-graphsurgeon graph shared by the passes.

graphsurgeon keeps producer/consumer links in sync when a node's input list is edited; these helpers only
add the rules every pass would otherwise repeat (graph outputs keep their names; a removed node is detached
from its tensors).
"""

from __future__ import annotations

import itertools

import onnx_graphsurgeon as gs


def is_standard(node: gs.Node, *ops: str) -> bool:
    """True for an ai.onnx-domain node (of one of ``ops``, when given): only these have known semantics."""
    return node.domain in (None, "", "ai.onnx") and (not ops or node.op in ops)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> int:
    """Make every consumer of ``old`` (subgraph nodes included) read ``new``; return how many inputs changed."""
    count = 0
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
                count += 1
    return count


def detach(graph: gs.Graph, node: gs.Node) -> None:
    """Remove a node from its graph and from its tensors' producer/consumer lists."""
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)


def single_consumer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.outputs[0] if len(tensor.outputs) == 1 else None


def node_label(node: gs.Node) -> str:
    """A name for reports: the node's name, or its op and first output when the exporter left it unnamed."""
    if node.name:
        return node.name
    return f"{node.op}:{node.outputs[0].name}" if node.outputs else node.op


def tensor_names(graphs) -> set[str]:
    """Every tensor name used in these graphs (main graph and subgraphs share one name space)."""
    return {name for g in graphs for name in g.tensors()}


def unique_name(base: str, names: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... whichever is free in ``names``; the name is then taken."""
    name = base
    for i in itertools.count(1):
        if name not in names:
            break
        name = f"{base}_{i}"
    names.add(name)
    return name
