"""Fold BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

With ``s = gamma / sqrt(var + eps)`` per output channel ``c``::

    W'[c] = W[c] * s[c]            b'[c] = (b[c] - mean[c]) * s[c] + beta[c]

computed in the weight's precision and in the order onnxruntime's own Conv+BN fusion uses, so that the folded
model is bit-identical to what onnxruntime ran for the original.

For Gemm ``Y = alpha * A @ B + beta_g * C`` the bias becomes ``(beta_g * C - mean) * s + beta`` and beta_g = 1.
For a grouped ConvTranspose (weight ``[Cin, Cout/g, k...]``) output channel ``c`` of input row ``i`` is
``(i // (Cin/g)) * (Cout/g) + c``.

Rules:
1. Fires when the BN reads the only output of such a node in the same graph, that output has no other consumer
   and is not a graph output, the node's weight and bias and all BN parameters are constants, and the BN is in
   inference mode (training_mode 0, spatial 1) with a single used output.
2. A weight or bias shared with another node is copied before it is changed (the other user must not see the
   fold); otherwise it is changed in place and keeps its name.
3. The BN's output name survives (it may be a graph output); the producer writes it directly.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.ir.graph_edit import detach, is_graph_output, is_standard, node_label, tensor_names, unique_name
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import constant_value, weight_of
from onnxcomp.passes.base import Pass, PassContext, PassResult

_FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


class FoldBatchNorm(Pass):
    name = "fold_batchnorm"
    description = "fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        result = PassResult(modified=False)
        names = tensor_names(model.graphs())
        for graph in list(model.graphs()):
            for bn in [n for n in graph.nodes if is_standard(n, "BatchNormalization")]:
                reason = _refusal(graph, bn)
                if reason:
                    result.skipped.append((node_label(bn), reason))
                    continue
                producer = bn.inputs[0].inputs[0]
                _fold(graph, bn, producer, names)
                result.modified = True
                result.records.append({"layer": node_label(producer), "op": producer.op, "action": "folded BN",
                                       "bn": node_label(bn)})
        return result


def _refusal(graph: gs.Graph, bn: gs.Node) -> str | None:
    x = bn.inputs[0]
    if int(bn.attrs.get("training_mode", 0)) or int(bn.attrs.get("spatial", 1)) != 1:
        return "BatchNormalization is not in inference mode"
    if any(t.outputs or is_graph_output(graph, t) for t in bn.outputs[1:]):
        return "BatchNormalization running statistics outputs are used"
    if any(constant_value(t) is None for t in bn.inputs[1:5]):
        return "BatchNormalization parameters are not constant"
    if len(x.inputs) != 1 or x.inputs[0] not in graph.nodes or x.inputs[0].op not in _FOLDABLE:
        return "input is not produced by a Conv, ConvTranspose or Gemm"
    producer = x.inputs[0]
    if not is_standard(producer):
        return "producer is not a standard op"
    if len(x.outputs) != 1 or is_graph_output(graph, x):
        return f"the {producer.op} output has other consumers or is a graph output"
    if weight_of(producer.inputs[1]) is None:
        return f"the {producer.op} weight is not a float constant"
    if len(producer.inputs) > 2 and producer.inputs[2].name and weight_of(producer.inputs[2]) is None:
        return f"the {producer.op} bias is not a float constant"
    if producer.op == "Gemm" and int(producer.attrs.get("transA", 0)) not in (0, 1):
        return "unsupported Gemm attributes"
    return None


def _fold(graph: gs.Graph, bn: gs.Node, producer: gs.Node, names: set[str]) -> None:
    w = weight_of(producer.inputs[1])
    dtype = w.array.dtype
    # Arithmetic in the weight's own precision and in onnxruntime's order (ConvBNFusion): the folded model then
    # computes exactly what onnxruntime computed when it fused the original at load.
    gamma, beta, mean, var = (constant_value(t).astype(dtype) for t in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + dtype.type(bn.attrs.get("epsilon", 1e-5)))
    kernel = w.array
    op = producer.op
    if op == "Conv":
        kernel = kernel * scale.reshape((-1,) + (1,) * (kernel.ndim - 1))
    elif op == "ConvTranspose":
        groups = int(producer.attrs.get("group", 1))
        cin, cout_g = kernel.shape[:2]
        channel = (np.arange(cin)[:, None] // (cin // groups)) * cout_g + np.arange(cout_g)[None, :]
        kernel = kernel * scale[channel].reshape(channel.shape + (1,) * (kernel.ndim - 2))
    else:  # Gemm
        out_axis = 0 if int(producer.attrs.get("transB", 0)) else 1
        kernel = kernel * (scale[:, None] if out_axis == 0 else scale[None, :])
    _store(producer, 1, kernel.astype(dtype), names)

    has_bias = len(producer.inputs) > 2 and producer.inputs[2].name
    if has_bias:
        bias = weight_of(producer.inputs[2]).array.astype(dtype)
        if op == "Gemm":
            bias = bias * dtype.type(producer.attrs.get("beta", 1.0))
        new_bias = (bias - mean) * scale + beta
    else:
        new_bias = beta - mean * scale
    if op == "Gemm":
        producer.attrs["beta"] = 1.0
    else:
        new_bias = new_bias.reshape(-1)
    new_bias = new_bias.astype(dtype)
    if has_bias:
        _store(producer, 2, new_bias, names)
    else:
        while len(producer.inputs) < 2:
            producer.inputs.append(gs.Variable.empty())
        producer.inputs.append(gs.Constant(unique_name(w.name + "_bias", names), new_bias))

    y = bn.outputs[0]
    detach(graph, bn)
    producer.outputs[0] = y


def _store(node: gs.Node, slot: int, values: np.ndarray, names: set[str]) -> None:
    """Write a folded weight: in place when only this node reads it, else as a fresh copy (rule 2)."""
    w = weight_of(node.inputs[slot])
    if w.shared or w.array.shape != values.shape:
        node.inputs[slot] = gs.Constant(unique_name(w.name + "_folded", names), values)
    else:
        w.set(values)
