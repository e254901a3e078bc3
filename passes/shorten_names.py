"""Shorten internal tensor names: the same computation in a smaller file.

Exporters name every intermediate tensor after its producer's module path (``/block2/conv1/Conv_output_0``) and
every weight after its parameter path, and on a small compressed model those strings are a large share of the
file (the bundled ResCNN after ``deep-compression``: 2.6 KB of 18 KB). Runtimes do not care what a tensor inside
the graph is called, so this pass renames them to short base-36 ids.

Rules:
1. The main graph's inputs and outputs keep their names: they are the model's interface. So does any tensor
   whose name matches a ``keep`` glob (e.g. an intermediate output a user taps for debugging).
2. Every other tensor (activations, initializers, Constant outputs, subgraph inputs and outputs) gets the next
   unused id, in graph order (so the same model gives the same names). One old name always maps to one new
   name, in every graph, so subgraphs that read an outer-scope tensor still find it. An id that equals a kept
   name is skipped.
3. Node names stay unless ``node_names`` is ``short`` (base-36 ids in graph order, every graph) or ``drop``
   (empty). The compress report still names layers by their original names: the pass records what it renamed.
4. Doc strings and metadata (model, graph, nodes) are never touched.

The summary gives the count of renamed tensors and the bytes of names before and after.
"""

from __future__ import annotations

import fnmatch
import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.errors import RecipeError
from onnxcomp.ir.model import Model, iter_graphs
from onnxcomp.passes.base import Pass, PassContext, PassResult


@dataclass(frozen=True)
class ShortenNamesConfig:
    keep: tuple[str, ...] = ()  # globs of tensor names that keep their name
    node_names: Literal["keep", "short", "drop"] = "keep"

    def __post_init__(self) -> None:
        if self.node_names not in ("keep", "short", "drop"):
            raise RecipeError(f"node_names must be 'keep', 'short' or 'drop', got {self.node_names!r}")


class ShortenNames(Pass):
    name = "shorten_names"
    Config = ShortenNamesConfig
    description = "rename internal tensors to short ids (graph inputs and outputs keep their names)"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        cfg = self.config
        result = PassResult(modified=False)
        graph = model.graph
        kept = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
        tensors: dict[str, dict[int, gs.Tensor]] = {}  # old name -> every tensor object that carries it
        for g in iter_graphs(graph):
            for t in _ordered_tensors(g):
                if t.name:
                    tensors.setdefault(t.name, {})[id(t)] = t
        kept |= {n for n in tensors if any(fnmatch.fnmatchcase(n, p) for p in cfg.keep)}
        before = sum(len(n.encode()) for n in tensors)
        ids = (i for i in (np.base_repr(n, 36).lower() for n in itertools.count()) if i not in kept)
        renamed = 0
        for old, objs in tensors.items():
            if old not in kept:
                new = next(ids)
                for t in objs.values():
                    t.name = new
                result.renamed[old] = new
                renamed += 1
        after = sum(len(next(iter(objs.values())).name.encode()) for objs in tensors.values())
        result.summary = f"{renamed} tensors renamed; names {before:,} B -> {after:,} B"
        if cfg.node_names != "keep":
            node_ids = (np.base_repr(n, 36).lower() for n in itertools.count())
            nodes = [node for g in iter_graphs(graph) for node in g.nodes]
            node_bytes = sum(len(node.name.encode()) for node in nodes)
            for node in nodes:
                new = next(node_ids) if cfg.node_names == "short" else ""
                if node.name:
                    result.renamed_nodes[node.name] = new
                node.name = new
            result.summary += (f"; node names {node_bytes:,} B -> "
                               f"{sum(len(node.name.encode()) for node in nodes):,} B")
        result.modified = renamed > 0 or bool(result.renamed_nodes)
        return result


def _ordered_tensors(graph: gs.Graph) -> list[gs.Tensor]:
    """The graph's tensors in a stable order: inputs, then node inputs and outputs in node order, then outputs."""
    out = list(graph.inputs)
    for node in graph.nodes:
        out += node.inputs + node.outputs
    return out + list(graph.outputs)
