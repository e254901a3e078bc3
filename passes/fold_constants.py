"""Fold weight-producing chains into plain initializers.

Exporters often build weights with ops: Paddle writes ``Constant -> Reshape -> Conv``, Keras converters write
``Constant -> Transpose``, quantization-aware exports write ``Constant -> Cast``. Compression passes need these
weights as weight-table entries, so this pass evaluates every node whose inputs are all known constants and
replaces its outputs with initializers.

Rules:
1. A node is foldable when it is a deterministic standard-domain op without subgraphs, all its (non-empty)
   inputs are initializers, Constant-node outputs or foldable outputs, and none of its outputs is a graph output.
2. Foldable chains are evaluated together in one onnxruntime session (graph optimisations off), so the values
   are exactly what onnxruntime would compute at run time.
3. A folded output replaces the original only if it is not much larger than the constants it was computed from
   and that folding frees (at most ``max_growth`` times, or at most ``small_bytes``): folding ``ConstantOfShape``
   into a large zero tensor would make the file bigger, not smaller, and so would folding ``Transpose(W)`` where W
   is also read elsewhere (the other branch of an If keeps W: a second copy would be added).
4. A Constant node whose value is a tensor becomes an initializer of the same name.
Folded nodes whose outputs are no longer used are removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from onnxcomp.ir.graph_edit import detach, is_graph_output, is_standard, node_label, replace_uses
from onnxcomp.ir.model import Model, lowest_ir_version
from onnxcomp.ir.weights import constant_value
from onnxcomp.passes.base import Pass, PassContext, PassResult, check_number
from onnxcomp.runtime import session

_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}


@dataclass(frozen=True)
class FoldConstantsConfig:
    max_growth: float = 1.0  # a folded tensor may be at most this many times the bytes of its constant inputs
    small_bytes: int = 256  # ... or at most this many bytes (shape vectors, scalars: what analyses need constant)

    def __post_init__(self) -> None:
        check_number("max_growth", self.max_growth, minimum=0)
        check_number("small_bytes", self.small_bytes, minimum=0, integer=True)


class FoldConstants(Pass):
    name = "fold_constants"
    Config = FoldConstantsConfig
    description = "evaluate constant chains (Constant -> Reshape/Cast/Transpose ...) into initializers"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        result = PassResult(modified=False)
        for graph in list(model.graphs()):
            self._fold_graph(model, graph, result)
        return result

    def _fold_graph(self, model: Model, graph: gs.Graph, result: PassResult) -> None:
        foldable: list[gs.Node] = []
        known: set[int] = set()  # ids of tensors whose value is known
        for node in graph.nodes:
            if _foldable(graph, node, known):
                foldable.append(node)
                known.update(id(t) for t in node.outputs)
        if not foldable:
            return
        # Values consumed outside the foldable set are the ones to materialise.
        inside = {id(n) for n in foldable}
        wanted = [t for n in foldable for t in n.outputs if t.name and any(id(c) not in inside for c in t.outputs)]
        if not wanted:
            return
        values = self._evaluate(model, foldable, wanted)
        leaf_bytes = _leaf_bytes(foldable)
        for tensor in wanted:
            value = values[tensor.name]
            limit = max(self.config.small_bytes, self.config.max_growth * leaf_bytes(tensor))
            producer = tensor.inputs[0]
            if value.nbytes > limit:
                result.skipped.append((tensor.name, f"folded value ({value.nbytes} B) larger than its inputs"))
                continue
            const = gs.Constant(tensor.name, np.asarray(value, order="C"))
            tensor.name = tensor.name + "__unfolded"  # the producer may stay if another output is kept
            replace_uses(tensor, const)
            result.modified = True
            result.records.append({"layer": node_label(producer), "op": producer.op, "action": "folded",
                                   "tensor": const.name, "shape": list(value.shape)})
        for node in reversed(foldable):  # downstream first, so upstream nodes become unused in turn
            if node in graph.nodes and all(not t.outputs for t in node.outputs):
                detach(graph, node)

    def _evaluate(self, model: Model, nodes: list[gs.Node], wanted: list[gs.Tensor]) -> dict[str, np.ndarray]:
        """Run the foldable nodes in one onnxruntime session; Constant nodes need no run."""
        values: dict[str, np.ndarray] = {}
        to_run = []
        for node in nodes:
            value = constant_value(node.outputs[0]) if node.op == "Constant" else None
            if value is not None:
                values[node.outputs[0].name] = value
            else:
                to_run.append(node)
        pending = [t.name for t in wanted if t.name not in values]
        if not pending:
            return values
        produced = {t.name for n in to_run for t in n.outputs}
        inits = {}
        for node in to_run:
            for t in node.inputs:
                if t.name and t.name not in produced and t.name not in inits:
                    inits[t.name] = onnx.numpy_helper.from_array(_value_of(t, values), t.name)
        graph = onnx.helper.make_graph(
            [OnnxExporter.export_node(n) for n in to_run],
            "fold",
            [],
            [onnx.ValueInfoProto(name=name) for name in pending],
            list(inits.values()),
        )
        proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v)
                                                             for d, v in model.opsets.items()])
        proto.ir_version = lowest_ir_version(proto)
        outs = session(proto, threads=1, optimize=False).run(pending, {})
        values.update(zip(pending, outs))
        return values


def _value_of(tensor: gs.Tensor, values: dict[str, np.ndarray]) -> np.ndarray:
    if tensor.name in values:
        return values[tensor.name]
    value = constant_value(tensor)
    assert value is not None, tensor.name  # guaranteed by _foldable
    return value


def _foldable(graph: gs.Graph, node: gs.Node, known: set[int]) -> bool:
    if not is_standard(node) or node.op in _NONDETERMINISTIC:
        return False
    if node.op.startswith(("Sequence", "Optional")) or node.op in ("SplitToSequence", "ConcatFromSequence"):
        return False
    if any(isinstance(a, gs.Graph) or (isinstance(a, list) and any(isinstance(x, gs.Graph) for x in a))
           for a in node.attrs.values()):
        return False
    if any(is_graph_output(graph, t) for t in node.outputs):
        return False
    if node.op == "Constant":
        return constant_value(node.outputs[0]) is not None
    inputs = [t for t in node.inputs if t.name]
    return bool(inputs) and all(isinstance(t, gs.Constant) or id(t) in known for t in inputs)


def _leaf_bytes(nodes: list[gs.Node]):
    """bytes(tensor) -> total bytes of the constants a foldable tensor is computed from that folding can free:
    a constant also read outside this fold (by another node, or by a node in another graph: an If's other branch)
    stays in the file, so it pays for nothing. Without this, ``Transpose(W)`` in both branches of an If folded
    into two copies of W and the lossless cleanup doubled the file."""
    inside = {id(n) for n in nodes}
    producer = {id(t): n for n in nodes for t in n.outputs}

    def leaves(tensor: gs.Tensor, seen: set[int], top: bool = False) -> int:
        node = producer.get(id(tensor))
        if node is not None and node.op != "Constant":
            return sum(leaves(t, seen) for t in node.inputs if t.name)
        if id(tensor) in seen:
            return 0
        seen.add(id(tensor))
        if not top and any(id(c) not in inside for c in tensor.outputs):
            return 0  # read elsewhere too: it stays (a Constant node's own value, ``top``, becomes the initializer)
        value = constant_value(tensor)
        return 0 if value is None else value.nbytes

    return lambda tensor: leaves(tensor, set(), top=True)
