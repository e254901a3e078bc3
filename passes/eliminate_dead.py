"""Remove nodes and weights that no graph output depends on.

Rule: a node none of whose outputs reaches a graph output (directly, or through a subgraph that reads it from
the outer scope) is removed, with the initializers only it used. Graph inputs are kept even when unused: they
are the model's interface.
"""

from __future__ import annotations

from onnxcomp.ir.model import Model
from onnxcomp.passes.base import Pass, PassContext, PassResult


class EliminateDead(Pass):
    name = "eliminate_dead"
    description = "remove nodes and weights that no output depends on"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        before = {id(n): n for g in model.graphs() for n in g.nodes}
        model.graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True)
        after = {id(n) for g in model.graphs() for n in g.nodes}
        removed = [n for key, n in before.items() if key not in after]
        records = [{"layer": n.name or n.op, "op": n.op, "action": "removed"} for n in removed]
        return PassResult(modified=bool(removed), records=records)
