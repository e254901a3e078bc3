"""What every ONNX lowering of a weight shares: where the new producer goes and which weights may be lowered.

A lowering replaces a weight (an initializer or a Constant node's value) by a node that computes it (a
``DequantizeLinear``, a codebook ``Gather``, a ``Cast`` from float16, an ``ai.onnxcomp.DecodeWeight``). The weight's
tensor name survives as that node's output, so its consumers are untouched (:func:`take_weight_name`), and the node
goes where the Constant node was, or first in the innermost graph that encloses every use.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxcomp.ir.graph_edit import detach, is_graph_output, is_standard, replace_uses
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Weight


def graph_tree(model: Model) -> tuple[dict[int, gs.Graph], dict[int, gs.Graph | None]]:
    """The graph owning each node, and each graph's enclosing graph (None for the main graph)."""
    owner: dict[int, gs.Graph] = {}
    parent: dict[int, gs.Graph | None] = {id(model.graph): None}
    for graph in model.graphs():
        for node in graph.nodes:
            owner[id(node)] = graph
            for attr in node.attrs.values():
                for sub in attr if isinstance(attr, list) else [attr]:
                    if isinstance(sub, gs.Graph):
                        parent[id(sub)] = graph
    return owner, parent


def take_weight_name(w: Weight, owner: dict[int, gs.Graph], parent: dict[int, gs.Graph | None],
                     dtype=None) -> tuple[gs.Graph, int, gs.Variable]:
    """The graph and position where the weight's new producer goes, and the variable under the weight's name that
    it will produce (its consumers already read it). ``dtype`` sets the variable's element type (integer codes)."""
    if w.producer is not None:  # a Constant node: its output variable (name, consumers) is kept
        graph = owner[id(w.producer)]
        out = w.producer.outputs[0]
        if dtype is not None:
            out.dtype = dtype
        at = next(i for i, n in enumerate(graph.nodes) if n is w.producer)
        detach(graph, w.producer)
        return graph, at, out
    chains = []
    for use in w.uses:
        chain, g = [], owner[id(use.node)]
        while g is not None:
            chain.append(g)
            g = parent[id(g)]
        chains.append(chain)
    common = next(g for g in chains[0] if all(any(g is c for c in chain) for chain in chains[1:]))
    out = gs.Variable(w.tensor.name, dtype=dtype or w.array.dtype, shape=list(w.shape))
    replace_uses(w.tensor, out)
    return common, 0, out


def lowering_refusal(model: Model, w: Weight) -> str | None:
    """Why a weight cannot be replaced by a node that computes it, whatever the target, or None."""
    tensor = w.producer.outputs[0] if w.producer is not None else w.tensor
    if any(is_graph_output(g, tensor) for g in model.graphs()):
        return "the weight is a graph output"
    foreign = next((u.node for u in w.uses if not is_standard(u.node)), None)
    if foreign is not None:
        return f"read by a {foreign.domain}.{foreign.op} node, which may need a constant"
    return None
