"""Channel groups: which channels of which tensors must be removed together (pure analysis, no mutation).

Every channel of every activation tensor is an *element*. Ops relate elements: a Relu's output channel ``c`` is
its input channel ``c`` (same element); a Concat's output channels are its inputs' channels at offsets; a Reshape
or Transpose moves elements between axes; a residual Add makes ``a[c]`` and ``b[c]`` the same channel (a union).
Union-find over elements gives *atoms*: sets of channels that can only be removed all together. A conv's output
channels are fresh elements, so pruning a conv's filters is removing atoms (as in Torch-Pruning's dependency
graph, here on the ONNX graph with explicit index maps).

Constants attached to channels are *slots*: a conv's output rows ('out'), a consumer's input columns ('in'),
BatchNorm / PRelu / broadcast Add-Mul parameters ('norm'). Removing an atom slices every slot position that
holds one of its elements. Op attributes that count channels (depthwise ``group``, Split sizes, Slice bounds,
Reshape shape constants, Resize sizes) are *fixups* the mutation pass rewrites.

Rules (anything not listed locks the channels it touches, with the reason):
- element-wise unary ops, pooling, Resize/Upsample (scale 1 on channels), Pad (no channel padding), Dropout,
  Cast: output channels are the input's;
- BatchNormalization, InstanceNormalization: parameters are 'norm' slots; PRelu slope and broadcast constant
  operands of Add/Sub/Mul/Div/Pow/Min/Max likewise;
- binary ops of two activations (Add, Mul-by-sigmoid, ...): their channels are unioned (``align='strict'``); with
  ``align='independent'`` an Add input that is also used elsewhere (an identity shortcut) keeps its own channels
  and is recorded as an :class:`Alignment` that the pruning pass repairs with a least-squares map;
- Conv/ConvTranspose: group 1 (out rows / in columns), depthwise (output channels are the input's, times the
  channel multiplier); other grouped convs lock;
- Gemm (transA=0, constant B), MatMul with a constant 2-D right operand (channels on the last axis); MatMul of
  two activations (attention): the contracted channels of ``q`` and ``k`` are unioned, ``scores @ v`` keeps v's;
- Concat on the channel axis (offsets) or another axis (inputs unioned); Split and Slice (step 1) on the channel
  axis (offsets) or another axis;
- Reshape / Flatten / Squeeze / Unsqueeze and Transpose: the element map is computed from the tensor shapes, so
  Flatten -> Gemm maps a channel to its block of features and a channel shuffle (Reshape, Transpose, Reshape)
  permutes channels. A Reshape that splits channels over several axes ties the outer axes (removal is along the
  innermost one, the same positions in every row), so the reshaped tensor stays rectangular;
- Reduce* and Softmax/LayerNormalization over non-channel axes;
- graph inputs and outputs, tensors read inside subgraphs, and the channels of unknown ops are locked.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.analysis.channel_graph import ChannelGraph, ChannelGroup, Slot, Space
from onnxcomp.analysis.channel_ops import HANDLERS, tie_computed_slices
from onnxcomp.errors import PassError
from onnxcomp.ir.graph_edit import is_standard, node_label
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import constant_value, is_constant


def analyze(model: Model, align: str = "strict", shapes: dict[str, tuple[int, ...]] | None = None,
            exclude: tuple[str, ...] = ()) -> ChannelGraph:
    """The channel groups of the main graph. ``shapes`` maps tensor names to concrete shapes (batch 1); when
    missing they are inferred (:func:`onnxcomp.analysis.cost.tensor_shapes`). ``exclude``: glob patterns of layers whose
    output channels must stay."""
    if align not in ("strict", "independent"):
        raise PassError(f"align must be 'strict' or 'independent', got {align!r}")
    if shapes is None:
        from onnxcomp.analysis.cost import tensor_shapes
        shapes = tensor_shapes(model)
    analysis = _Analyzer(model, align, shapes)
    analysis.run()
    cg = analysis.cg
    cg.shapes = shapes
    for slot in cg.slots:
        if slot.kind == "out" and any(fnmatch.fnmatchcase(node_label(slot.node), p) for p in exclude):
            cg.lock(slot.ids, f"layer '{node_label(slot.node)}' is excluded")
    _build_groups(cg)
    return cg


class _Analyzer:
    def __init__(self, model: Model, align: str, shapes: dict[str, tuple[int, ...]]):
        self.model = model
        self.graph = model.graph
        self.align = align
        self.shapes = shapes
        self.cg = ChannelGraph(model)
        self.main_nodes = {id(n) for n in self.graph.nodes}

    def run(self) -> None:
        self.computed_slices: dict[str, list[tuple[gs.Node, slice]]] = {}
        self._values: dict[str, np.ndarray] | None = None
        for node in self.graph.nodes:
            if not is_standard(node):
                self.refuse(node, f"custom op {node.domain}.{node.op}")
                continue
            if node.op in ("Shape", "Size"):
                continue  # reads the run-time shape; nothing to keep consistent
            handler = HANDLERS.get(node.op)
            reason = handler(self, node) if handler is not None else f"unsupported op {node.op}"
            if reason:
                self.refuse(node, reason)
        tie_computed_slices(self)
        for t in self.graph.outputs:
            if t.name in self.cg.spaces:
                self.cg.lock(self.cg.spaces[t.name].ids, f"graph output '{t.name}'")
        for t in self.graph.tensors().values():
            space = self.cg.spaces.get(t.name)
            if space is not None and any(id(n) not in self.main_nodes for n in t.outputs):
                self.cg.lock(space.ids, f"'{t.name}' is read inside a subgraph")

    def evaluate(self, t: gs.Tensor) -> np.ndarray | None:
        """The value of a small computed tensor (Slice bounds) at the analysis shapes: every such tensor of the
        graph from one onnxruntime run on zero inputs, done the first time one is asked for."""
        value = constant_value(t)
        if value is not None:
            return value
        if self._values is None:
            wanted = [n.inputs[i].name for n in self.graph.nodes if is_standard(n, "Slice")
                      for i in (1, 2) if i < len(n.inputs) and n.inputs[i].name and not is_constant(n.inputs[i])]
            self._values = _run_values(self.model, wanted, self.shapes)
        return self._values.get(t.name)

    # -- helpers -------------------------------------------------------------------------------------
    def shape(self, t: gs.Tensor) -> tuple[int, ...] | None:
        s = self.shapes.get(t.name)
        return tuple(int(d) for d in s) if s is not None else None

    def space(self, t: gs.Tensor) -> Space | None:
        return self.cg.spaces.get(t.name)

    def refuse(self, node: gs.Node, reason: str) -> None:
        """Lock the channels of every activation input (their consumer cannot follow a removal)."""
        why = f"{node.op} '{node_label(node)}': {reason}"
        for t in node.inputs:
            space = self.space(t)
            if space is not None:
                self.cg.lock(space.ids, why)

    def need(self, t: gs.Tensor, axis: int, count: int, consumer: gs.Node) -> np.ndarray:
        """The element ids along ``axis`` of ``t``; locked fresh ids when ``t`` has no such single-axis space."""
        space = self.space(t)
        if space is not None and space.axes == (axis,) and space.ids.shape == (count,):
            return space.ids
        if space is not None:
            self.cg.lock(space.ids, f"{consumer.op} '{node_label(consumer)}' reads '{t.name}' on another axis")
        ids = self.cg.new((count,))
        producer = t.inputs[0] if t.inputs else None
        why = (f"graph input '{t.name}'" if producer is None
               else f"'{t.name}' comes from {producer.op} '{node_label(producer)}', whose channels are not tracked")
        self.cg.lock(ids, why)
        if space is None and not is_constant(t):
            self.cg.spaces[t.name] = Space((axis,), ids)
        return ids

    def set(self, t: gs.Tensor, axes: tuple[int, ...], ids: np.ndarray) -> None:
        self.cg.spaces[t.name] = Space(tuple(axes), ids)

    def slot(self, node: gs.Node, index: int, axis: int, ids: np.ndarray, kind: str) -> None:
        self.cg.slots.append(Slot(node, index, axis, np.asarray(ids), kind))


def _run_values(model: Model, names: list[str], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Values of ``names`` from one onnxruntime run on zero inputs of the analysis shapes ({} when it fails)."""
    from onnxcomp.runtime import session

    if not names:
        return {}
    proto = model.to_proto()
    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in present)
    feed = {}
    for vi in proto.graph.input:
        if vi.name in shapes:
            elem = vi.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
            feed[vi.name] = np.zeros(shapes[vi.name], dtype=onnx.helper.tensor_dtype_to_np_dtype(elem))
    try:
        out = session(proto, optimize=False).run(list(dict.fromkeys(names)), feed)
    except Exception:  # noqa: BLE001 - onnxruntime cannot run it here: the Slices stay locked, with their reason
        return {}
    return dict(zip(dict.fromkeys(names), out))


def _build_groups(cg: ChannelGraph) -> None:
    """Atoms keyed by the layers that produce them; the lock reason of a group is its first locked atom's."""
    locked = cg.locked_atoms()
    cg.locked = locked
    sources: dict[int, set[str]] = defaultdict(set)
    members: dict[int, list[str]] = defaultdict(list)
    for slot in cg.slots:
        label = f"{node_label(slot.node)} ({slot.kind})"
        for root in set(cg.atoms(slot.ids).tolist()):
            if slot.kind == "out":
                sources[root].add(node_label(slot.node))
            if label not in members[root]:
                members[root].append(label)
    tensors: dict[int, list[str]] = defaultdict(list)
    for name, space in cg.spaces.items():
        for root in set(cg.atoms(space.ids).ravel().tolist()):
            tensors[root].append(name)
    by_key: dict[tuple[tuple[str, ...], str], list[int]] = defaultdict(list)
    for root in sorted(set(tensors) | set(members)):
        if not sources[root]:  # no layer produces them (a graph input's channels, an unknown op's): locked
            locked.setdefault(root, "no layer produces these channels")
            by_key[(), locked[root]].append(root)  # one group per reason
        else:
            by_key[tuple(sorted(sources[root])), ""].append(root)
    for (key, _), roots in by_key.items():
        names = sorted({n for r in roots for n in tensors[r]})
        mem = list(dict.fromkeys(m for r in roots for m in members[r]))
        free = [r for r in roots if r not in locked]
        why = None if free else locked[roots[0]]
        cg.groups.append(ChannelGroup(len(cg.groups), roots, key, names, mem, why))
