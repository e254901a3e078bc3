"""The weight table: every float weight a pass may touch, wherever the exporter put it.

Exporters store weights as graph initializers (PyTorch, Keras), as Constant nodes (Paddle, some TF converters),
or inside If/Loop/Scan bodies. :func:`weight_table` finds all of them in the main graph and every subgraph,
records every use (consuming node and input slot, across graph boundaries), and derives the layout a
compression pass needs: which axis holds output channels, which holds input channels, and the group count.

Passes read and write weights through :class:`Weight` (``array`` / ``set``) and never parse protobuf.
A weight used by several nodes is *shared*: a pass that changes it for one consumer must copy it first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxcomp.ir.graph_edit import is_standard
from onnxcomp.ir.model import Model, iter_graphs

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class Layout:
    """Where the channels are. ``None`` means the weight has no such axis (a bias has no input axis)."""

    out_axis: int | None
    in_axis: int | None
    groups: int = 1


@dataclass(frozen=True)
class Use:
    node: gs.Node
    slot: int

    @property
    def op(self) -> str:
        return self.node.op


class Weight:
    """One float tensor held by an initializer or a Constant node, with its uses."""

    def __init__(self, tensor: gs.Constant, producer: gs.Node | None, uses: list[Use]):
        self.tensor = tensor
        self.producer = producer  # the Constant node holding it, or None for an initializer
        self.uses = uses

    @property
    def name(self) -> str:
        return self.producer.outputs[0].name if self.producer is not None else self.tensor.name

    @property
    def source(self) -> str:
        return "constant" if self.producer is not None else "initializer"

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.tensor.values)

    def set(self, values: np.ndarray) -> None:
        """Replace the values (dtype is kept unless the caller passes another float dtype on purpose)."""
        self.tensor.values = np.asarray(values, order="C")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def shared(self) -> bool:
        return len(self.uses) > 1

    @property
    def primary(self) -> Use | None:
        return self.uses[0] if self.uses else None

    @property
    def layer(self) -> str:
        """The name of the (first) consuming node, for reports."""
        use = self.primary
        if use is None:
            return self.name
        return use.node.name or f"{use.node.op}:{use.node.outputs[0].name if use.node.outputs else self.name}"

    @property
    def role(self) -> str:
        """'weight' (a layer's kernel), 'bias', 'norm' (BN/LayerNorm parameters) or 'other'."""
        use = self.primary
        return _role(use) if use is not None else "other"

    @property
    def layout(self) -> Layout | None:
        use = self.primary
        return _layout(use, len(self.shape)) if use is not None else None

    def __repr__(self) -> str:
        return f"Weight({self.name!r}, {self.shape}, {self.source}, role={self.role}, layer={self.layer!r})"


def weight_table(model: Model | gs.Graph) -> list[Weight]:
    """Every float weight in the model, in graph order, each listed once with all its uses."""
    graph = model.graph if isinstance(model, Model) else model
    found: dict[int, Weight] = {}
    for g in iter_graphs(graph):
        for node in g.nodes:
            for slot, tensor in enumerate(node.inputs):
                held = _held_tensor(tensor)
                if held is None:
                    continue
                const, producer = held
                if not _is_float(const):
                    continue
                key = id(const)
                if key not in found:
                    found[key] = Weight(const, producer, [])
                found[key].uses.append(Use(node, slot))
    return list(found.values())


def dequantized_codes(model: Model) -> list[Weight]:
    """Integer constants (initializers or Constant nodes, any graph) that some DequantizeLinear reads as its
    quantized input, each once with all its uses (as :func:`weight_table` lists floats)."""
    found: dict[int, Weight] = {}
    dequantized: set[int] = set()
    for graph in model.graphs():
        for node in graph.nodes:
            for slot, tensor in enumerate(node.inputs):
                producer = None
                if not isinstance(tensor, gs.Constant):
                    if len(tensor.inputs) != 1 or not is_standard(tensor.inputs[0], "Constant"):
                        continue
                    producer, tensor = tensor.inputs[0], tensor.inputs[0].attrs.get("value")
                    if not isinstance(tensor, gs.Constant):
                        continue
                if not is_integer_dtype(tensor.dtype):
                    continue
                entry = found.setdefault(id(tensor), Weight(tensor, producer, []))
                entry.uses.append(Use(node, slot))
                if slot == 0 and is_standard(node, "DequantizeLinear"):
                    dequantized.add(id(tensor))
    return [w for key, w in found.items() if key in dequantized]


def _held_tensor(tensor: gs.Tensor) -> tuple[gs.Constant, gs.Node | None] | None:
    if isinstance(tensor, gs.Constant):
        return tensor, None
    producer = _constant_node(tensor)
    if producer is not None and isinstance(producer.attrs.get("value"), gs.Constant):
        return producer.attrs["value"], producer
    return None


def _constant_node(tensor: gs.Tensor) -> gs.Node | None:
    if len(tensor.inputs) == 1 and is_standard(tensor.inputs[0], "Constant"):
        return tensor.inputs[0]
    return None


def _is_float(const: gs.Constant) -> bool:
    try:
        return np.dtype(const.dtype) in FLOAT_DTYPES
    except TypeError:  # bfloat16 and other ONNX-only types have no numpy dtype
        return False


def is_constant(tensor: gs.Tensor) -> bool:
    """True when the tensor's value is known without running the graph (initializer or Constant output)."""
    return isinstance(tensor, gs.Constant) or _constant_node(tensor) is not None


# The ml_dtypes types onnx reads INT4/UINT4/INT2/UINT2 into: the numpy type that holds the same values, and how many
# codes ONNX packs into one byte.
NARROW_INTS: dict[str, tuple[type, int]] = {
    "int4": (np.int8, 2), "uint4": (np.uint8, 2), "int2": (np.int8, 4), "uint2": (np.uint8, 4),
}


def values_of(constant: gs.Constant) -> np.ndarray:
    """A constant's values; INT4/INT2 ones widened to int8/uint8 and read without caching them in the constant
    (graphsurgeon exports a loaded narrow array with the unpacked byte count, which onnx rejects)."""
    name = _dtype_name(constant.dtype)
    if name not in NARROW_INTS:
        return np.asarray(constant.values)
    raw = constant._values  # graphsurgeon has no public way to read without caching
    return np.asarray(raw.load() if isinstance(raw, LazyValues) else raw).astype(NARROW_INTS[name][0])


def stored_nbytes(dtype, size: int) -> int:
    """Bytes of ``size`` elements of ``dtype`` as ONNX stores them (INT4 two to a byte, INT2 four)."""
    narrow = NARROW_INTS.get(_dtype_name(dtype))
    return -(-size // narrow[1]) if narrow else size * np.dtype(dtype).itemsize


def is_integer_dtype(dtype) -> bool:
    """Integer element types, the narrow ones (ml_dtypes int4/int2, not numpy integers) included."""
    name = _dtype_name(dtype)
    return name is not None and (np.dtype(dtype).kind in "iu" or name in NARROW_INTS)


def _dtype_name(dtype) -> str | None:
    """numpy's name for a constant's dtype; None for the element types graphsurgeon keeps as an onnx enum
    (bfloat16, float8)."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        return None


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or Constant-node output, else None."""
    if isinstance(tensor, gs.Constant):
        return values_of(tensor)
    if is_constant(tensor):
        attrs = tensor.inputs[0].attrs
        if isinstance(attrs.get("value"), gs.Constant):
            return values_of(attrs["value"])
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
    return None


_KERNEL_SLOTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "LSTM": 1, "GRU": 1, "RNN": 1}
_BIAS_SLOTS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "LSTM": 3, "GRU": 3, "RNN": 3}
_NORM_OPS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"}


def _role(use: Use) -> str:
    op, slot = use.node.op, use.slot
    if op in _NORM_OPS and slot >= 1:
        return "norm"
    if op in ("LSTM", "GRU", "RNN") and slot in (1, 2):
        return "weight"
    if _KERNEL_SLOTS.get(op) == slot:
        return "weight"
    if op in ("MatMul", "Gemm") and slot == 0 and not is_constant(use.node.inputs[1]):
        return "weight"  # constant @ activation
    if _BIAS_SLOTS.get(op) == slot:
        return "bias"
    if op == "Add" and _adds_to_matmul(use):
        return "bias"  # MatMul + Add: how exporters write a linear layer's bias (PyTorch's nn.Linear on 3-D input)
    return "other"


def _adds_to_matmul(use: Use) -> bool:
    """Whether this Add input is a vector added to the output of a MatMul (one value per output column)."""
    node = use.node
    if len(node.inputs) != 2:
        return False
    other = node.inputs[1 - use.slot]
    producer = other.inputs[0] if len(other.inputs) == 1 else None
    held = _held_tensor(node.inputs[use.slot])
    shape = tuple(held[0].shape) if held is not None else ()
    return (producer is not None and producer.op == "MatMul" and len(shape) >= 1
            and int(np.prod(shape)) == shape[-1])


def _layout(use: Use, rank: int) -> Layout | None:
    node, slot = use.node, use.slot
    op = node.op
    if op == "Conv" and slot == 1:
        return Layout(0, 1, int(node.attrs.get("group", 1)))
    if op == "ConvTranspose" and slot == 1:
        return Layout(1, 0, int(node.attrs.get("group", 1)))
    if op == "Gemm" and slot in (0, 1):
        trans = int(node.attrs.get("transB" if slot == 1 else "transA", 0))
        if slot == 1:
            return Layout(0, 1) if trans else Layout(1, 0)
        return Layout(1, 0) if trans else Layout(0, 1)
    if op == "MatMul" and rank >= 2:
        if slot == 1:
            return Layout(rank - 1, rank - 2)
        return Layout(rank - 2, rank - 1)
    if op in ("LSTM", "GRU", "RNN") and slot in (1, 2):
        return Layout(1, 2)
    if op in ("LSTM", "GRU", "RNN") and slot == 3:
        return Layout(1, None)  # [num_directions, 2 * gates * hidden]
    if _BIAS_SLOTS.get(op) == slot or (op in _NORM_OPS and slot >= 1):
        return Layout(0, None)
    return None


def weight_of(tensor: gs.Tensor) -> Weight | None:
    """The weight behind one node input (initializer or Constant output), with all its uses; None otherwise."""
    held = _held_tensor(tensor)
    if held is None or not _is_float(held[0]):
        return None
    uses = [Use(node, i) for node in tensor.outputs for i, t in enumerate(node.inputs) if t is tensor]
    return Weight(held[0], held[1], uses)
