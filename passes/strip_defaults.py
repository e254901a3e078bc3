"""Drop node attributes that only restate the default: the same computation in a smaller file.

Exporters write every attribute out (PyTorch's Conv: ``dilations=[1, 1]``, ``group=1``, ``strides=[1, 1]``,
``pads=[0, 0, 0, 0]``; Gemm: ``alpha=1.0``, ``beta=1.0``), about 50 bytes per layer. On a model compressed to a
few kilobytes that is a visible share (the bundled ResCNN after ``deep-compression``: ~0.5 KB of 13 KB).

Rules:
1. Only standard-domain nodes (``""`` / ``ai.onnx``) of every graph, checked against the operator schema of the
   model's opset (``onnx.defs.get_schema``).
2. An attribute goes when it equals the schema's ``default_value`` (same type, same value).
3. The list attributes of convolution and pooling whose defaults the specification states in words and the
   schema leaves empty (Conv, ConvTranspose, MaxPool, AveragePool, LpPool: ``dilations`` and ``strides`` all 1,
   ``pads`` all 0) go when they equal them. ``kernel_shape`` stays: some runtimes need it.
4. ``value_info: drop`` also removes the shapes and types the file records for intermediate tensors (the
   graphs' ``value_info``; ONNX shape inference re-derives them, runtimes do not read them). Graph inputs and
   outputs keep theirs. The bundled ResCNN after ``deep-compression``: 14 entries, ~310 of ~9,000 bytes.
   ``keep`` (the default) leaves them.
5. Nothing else changes; outputs are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import onnx
import onnx.defs
import onnx_graphsurgeon as gs

from onnxcomp.errors import RecipeError
from onnxcomp.ir.model import Model
from onnxcomp.passes.base import Pass, PassContext, PassResult

_WINDOW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"}
_WORDED = {"dilations": 1, "strides": 1, "pads": 0}  # rule 3: every entry equals this


@dataclass(frozen=True)
class StripConfig:
    value_info: Literal["keep", "drop"] = "keep"  # rule 4

    def __post_init__(self) -> None:
        if self.value_info not in ("keep", "drop"):
            raise RecipeError(f"value_info must be 'keep' or 'drop', got {self.value_info!r}")


class StripDefaults(Pass):
    name = "strip_defaults"
    Config = StripConfig
    description = "drop node attributes equal to their ONNX default (and, optionally, intermediate shapes)"

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        result = PassResult(modified=False)
        opset = model.graph.opset
        dropped = 0
        nbytes = 0
        for g in model.graphs():
            for node in g.nodes:
                if node.domain not in (None, "", "ai.onnx"):
                    continue
                defaults = _defaults(node.op, opset)
                for key in [k for k, v in node.attrs.items() if _is_default(node.op, k, v, defaults)]:
                    nbytes += len(onnx.helper.make_attribute(key, node.attrs[key]).SerializeToString())
                    del node.attrs[key]
                    dropped += 1
        result.summary = f"{dropped} default attributes dropped ({nbytes:,} B)"
        if self.config.value_info == "drop":
            cleared = _drop_value_info(model)
            result.summary += f"; value_info of {cleared} intermediate tensors dropped"
            dropped += cleared
        result.modified = dropped > 0
        return result


def _drop_value_info(model: Model) -> int:
    """Rule 4: forget the dtype and shape of every intermediate variable (they are what is exported as
    value_info); the count of those that had one."""
    cleared = 0
    graphs = list(model.graphs())
    # Every graph's inputs and outputs, not only its own: a subgraph lists the outer tensors it reads among its
    # tensors, and those are the very objects of the outer graph (clearing the model input ``state`` from inside an
    # If branch left it without a type, which onnxruntime refuses).
    boundary = {id(t) for g in graphs for t in list(g.inputs) + list(g.outputs)}
    for g in graphs:
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Variable) and id(tensor) not in boundary and (
                    tensor.dtype is not None or tensor.shape is not None):
                tensor.dtype = tensor.shape = None
                cleared += 1
    return cleared


def _defaults(op: str, opset: int) -> dict[str, onnx.AttributeProto]:
    try:
        schema = onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        return {}
    return {k: a.default_value for k, a in schema.attributes.items() if a.default_value.name}


def _is_default(op: str, key: str, value, defaults: dict[str, onnx.AttributeProto]) -> bool:
    if op in _WINDOW_OPS and key in _WORDED and isinstance(value, (list, tuple)):
        return len(value) > 0 and all(v == _WORDED[key] for v in value)
    default = defaults.get(key)
    if default is None:
        return False
    try:
        mine = onnx.helper.make_attribute(key, value)
    except (TypeError, ValueError):
        return False
    if isinstance(value, str):  # graphsurgeon holds strings decoded, the schema as bytes
        return mine.s == default.s and default.type == onnx.AttributeProto.STRING
    return mine.type == default.type and onnx.helper.get_attribute_value(mine) == onnx.helper.get_attribute_value(
        default)
