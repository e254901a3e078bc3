"""Bias correction: a layer's bias absorbs the change of its output mean when its weights change.

When pruning, sharing or quantization moves a layer's weights from ``W`` to ``W'``, its output changes by
``W x - W' x~`` (``x~`` the possibly already compressed input). The mean of that change, ``W E[x] - W' E[x~]``
per output channel, costs nothing to undo: add it to the bias. What is left for the weights to fit is the
mean-free part, whose statistics are :meth:`onnxcomp.calibration.hessian.LayerHessian.centered`. Fitting the weights on
the centered statistics and then correcting the bias is the exact least-squares solution over weights and bias
together (Nagel et al., "Data-Free Quantization", 2019, correct the bias alone; here the weight fit knows the
bias will follow).

:func:`layer_bias` finds the tensor that adds per output channel after a kernel:
- Conv and ConvTranspose: input 2 (created, zeros, when the layer has none);
- Gemm: ``C`` when it is a vector of the output width (created when absent), scaled by ``alpha / beta``;
- MatMul with a constant right operand: the constant vector of the Add that alone reads its output.
It must be a main-graph initializer used by this layer alone, so that a search can feed it; else there is
none and the callers fit the uncentered statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.calibration.hessian import LayerHessian
from onnxcomp.ir.graph_edit import single_consumer, tensor_names, unique_name
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Weight, weight_of


@dataclass
class LayerBias:
    weight: Weight
    scale: float = 1.0  # output change per unit of bias change is 1 / scale (Gemm: beta / alpha)
    created: bool = False

    @property
    def name(self) -> str:
        return self.weight.name

    def corrected(self, hessian: LayerHessian, original: np.ndarray, new: np.ndarray) -> np.ndarray:
        """The bias that keeps the layer's output mean when kernel ``original`` becomes ``new``."""
        current = self.weight.array
        shift = hessian.mean_shift(original, new).reshape(current.shape)
        return (current.astype(np.float64) + self.scale * shift).astype(current.dtype)

    def absorb(self, hessian: LayerHessian, original: np.ndarray, new: np.ndarray) -> None:
        self.weight.set(self.corrected(hessian, original, new))


def centered_where_biased(hessians: dict[str, LayerHessian], biases: dict[str, LayerBias]
                          ) -> dict[str, LayerHessian]:
    """Each weight's Hessian, centered when its layer has a bias to absorb the mean shift."""
    return {name: h.centered() if name in biases else h for name, h in hessians.items()}


def layer_bias(model: Model, w: Weight, create: bool = False) -> LayerBias | None:
    """The per-output-channel bias of the layer whose kernel is ``w`` (see the module docstring), or None."""
    use = w.primary
    if use is None or w.shared or w.layout is None or w.layout.out_axis is None:
        return None
    node = use.node
    out_channels = w.shape[w.layout.out_axis]
    if node.op in ("Conv", "ConvTranspose") and use.slot == 1:
        return _slot_bias(model, node, out_channels, w.array.dtype, 1.0, create)
    if node.op == "Gemm" and use.slot == 1:
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        if beta == 0.0:
            return None
        return _slot_bias(model, node, out_channels, w.array.dtype, alpha / beta, create)
    if node.op == "MatMul" and use.slot == 1 and len(w.shape) == 2:
        add = single_consumer(node.outputs[0])
        if add is None or add.op != "Add":
            return None
        other = next((t for t in add.inputs if t is not node.outputs[0]), None)
        bias = weight_of(other) if other is not None else None
        if bias is None or bias.shape[-1:] != (out_channels,) or bias.size != out_channels:
            return None
        return _checked(model, bias, add, 1.0, False)
    return None


def discard_unused(model: Model, biases: list[LayerBias]) -> None:
    """Remove the biases this module created that stayed all zero."""
    for bias in biases:
        if bias.created and not np.any(bias.weight.array):
            node = bias.weight.primary.node
            node.inputs.pop(bias.weight.primary.slot)  # the tensor, now read by nothing, is not exported


def _slot_bias(model: Model, node: gs.Node, out_channels: int, dtype: np.dtype, scale: float,
               create: bool) -> LayerBias | None:
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = weight_of(node.inputs[2])
        if bias is None or bias.size != out_channels or bias.shape[-1:] != (out_channels,):
            return None
        return _checked(model, bias, node, scale, False)
    if not create:
        return None
    names = tensor_names([model.graph])
    const = gs.Constant(unique_name(f"{node.name or node.op}.bias", names), np.zeros(out_channels, dtype=dtype))
    if len(node.inputs) > 2:
        node.inputs[2] = const
    else:
        node.inputs.append(const)
    return _checked(model, weight_of(const), node, scale, True)


def _checked(model: Model, bias: Weight, node: gs.Node, scale: float, created: bool) -> LayerBias | None:
    main = {id(n) for n in model.graph.nodes}
    if bias.source != "initializer" or bias.shared or id(node) not in main:
        return None
    return LayerBias(bias, scale, created)
