"""Merge initializers that hold the same tensor: one copy, read by all their consumers.

Exporters write a constant once per use: PP-OCRv4 rec (a Paddle export) reads the scalars 3.0, 6.0 and 0.0 of
its 28 hard-swish activations from 28 initializers each, 298 small constants of which 130 differ (~2.4 KB of a
1.36 MB file after ``deep-compression``). onnxoptimizer's ``eliminate_duplicate_initializer`` does the same job.

Rules:
1. Candidates are the initializers that only main-graph nodes read: not graph inputs (an overridable
   initializer is part of the interface), not graph outputs, and not read inside a subgraph (a subgraph's
   reference to an outer name is left as it is).
2. Two candidates are the same when their stored dtype, shape and values are equal (so 1.0 as a scalar and as a
   1-element vector stay apart, and so do float32 and int32 with the same bits, and int4 and int8 codes).
3. Every group keeps its first member in graph order, under its name; the consumers of the others read it, and
   the others leave the file.
4. Nothing else changes; outputs are bit-identical.
"""

from __future__ import annotations

import hashlib

import onnx_graphsurgeon as gs

from onnxcomp.ir.graph_edit import replace_uses
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import stored_nbytes, values_of
from onnxcomp.passes.base import Pass, PassContext, PassResult


class DedupeConstants(Pass):
    name = "dedupe_constants"
    description = "merge initializers holding the same tensor into one"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        main = {id(n) for n in graph.nodes}
        interface = {id(t) for t in [*graph.inputs, *graph.outputs]}
        overridable = model.initializer_inputs
        kept: dict[tuple, gs.Constant] = {}
        merged: list[tuple[gs.Constant, gs.Constant, int]] = []  # (duplicate, kept, its bytes)
        seen: set[int] = set()
        for node in graph.nodes:
            for t in node.inputs:
                if not isinstance(t, gs.Constant) or id(t) in seen:
                    continue
                seen.add(id(t))
                if id(t) in interface or t.name in overridable or any(id(c) not in main for c in t.outputs):
                    continue
                values = values_of(t)  # INT4/INT2 widened, and not cached in the constant (it would not export)
                key = (str(t.dtype), values.shape, hashlib.sha256(values.tobytes()).digest())  # storage dtype
                first = kept.setdefault(key, t)
                if first is not t:
                    merged.append((t, first, stored_nbytes(t.dtype, values.size)))
        records = []
        for dup, first, nbytes in merged:
            replace_uses(dup, first)
            records.append({"weight": dup.name, "into": first.name, "bytes": int(nbytes)})
        saved = sum(r["bytes"] for r in records)
        summary = (f"{len(records)} duplicate initializers merged into {len({r['into'] for r in records})} "
                   f"({saved:,} B of data)" if records else "no duplicate initializer")
        return PassResult(modified=bool(records), records=records, summary=summary)
