"""Op handlers of the channel-group analysis: how each op maps or unions the channel elements of its tensors.

Each handler returns None when it handled the node, else the reason the node locks the channels of its inputs.
Elementwise ops carry elements through; Add/Mul/... union those of their operands (residual Adds); Conv/Gemm/MatMul
record their weight slots; Concat/Split/Slice map through offsets; Reshape/Flatten/Transpose map through the
shapes. See :mod:`onnxcomp.analysis.channel_groups` for the analysis that calls them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.analysis.channel_graph import Alignment, Fixup, Space
from onnxcomp.ir.graph_edit import is_standard, node_label
from onnxcomp.ir.weights import constant_value, is_constant

if TYPE_CHECKING:
    from onnxcomp.analysis.channel_groups import _Analyzer

_UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Gelu", "Erf", "Identity", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Mish", "ThresholdedRelu", "Cast", "Clip", "Dropout", "MaxPool",
    "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
    "InstanceNormalization", "PRelu", "Resize", "Upsample", "Pad",
}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Min", "Max", "Sum", "Mean"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSumExp", "ReduceSumSquare"}
_RESHAPE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_MAX_MAP = 1 << 24  # elements of the index array a Reshape is mapped through


def _rank_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# -- handlers: return None when handled, else the reason the node locks its inputs --------------------
def _unary(a: _Analyzer, node: gs.Node) -> str | None:
    x = node.inputs[0]
    space = a.space(x)
    if space is None:
        return None
    op = node.op
    if op in ("Resize", "Upsample"):
        scales = constant_value(node.inputs[2]) if op == "Resize" and len(node.inputs) > 2 else (
            constant_value(node.inputs[1]) if op == "Upsample" and len(node.inputs) > 1 else None)
        sizes = constant_value(node.inputs[3]) if op == "Resize" and len(node.inputs) > 3 else None
        if scales is not None and scales.size and any(scales[i] != 1 for i in space.axes):
            return "resizes the channel axis"
        if sizes is not None and sizes.size:
            a.cg.fixups.append(Fixup(node, "resize", x.name))
        elif scales is None and op == "Resize" and not (len(node.inputs) > 3 and node.inputs[3].name):
            return "non-constant scales"
    if op == "Pad":
        pads = constant_value(node.inputs[1]) if len(node.inputs) > 1 else np.asarray(node.attrs.get("pads", []))
        if pads is None:
            return "non-constant pads"
        if len(node.inputs) > 3 and node.inputs[3].name:
            return "pads given per axis (axes input)"
        rank = len(pads) // 2
        if any(pads[i] != 0 or pads[i + rank] != 0 for i in space.axes):
            return "pads the channel axis"
    if op in ("BatchNormalization", "InstanceNormalization"):
        if space.axes != (1,):
            return "normalizes an axis that is not the channel axis"
        for i in range(1, len(node.inputs)):
            value = constant_value(node.inputs[i])
            if value is None or value.shape != space.ids.shape:
                return f"input {i} is not a constant per-channel vector"
            a.slot(node, i, 0, space.ids, "norm")
    if op == "PRelu" and not _attach_operand(a, node, 1, space, kind="norm"):
        return "the slope is not a per-channel constant"
    for out in node.outputs[:1]:
        a.set(out, space.axes, space.ids)
    return None


def _attach_operand(a: _Analyzer, node: gs.Node, index: int, space: Space, kind: str) -> bool:
    """A constant operand broadcast against a tensor with ``space``: a slot when it varies along the channel
    axes, nothing when it is constant along them. False when it cannot follow (non-constant, bad shape)."""
    t = node.inputs[index]
    value = constant_value(t)
    if value is None:
        return False
    out_shape = a.shape(node.outputs[0])
    rank = len(out_shape) if out_shape is not None else max(space.axes) + 1
    offset = rank - value.ndim
    varying = [ax for ax in space.axes if ax - offset >= 0 and value.shape[ax - offset] > 1]
    if node.op == "PRelu" and value.ndim == 1 and value.size > 1 and space.axes == (1,):
        varying = [1]  # PRelu's unidirectional broadcast of a [C] slope is over axis 1, as exporters use it
        offset = 0
    if not varying:
        return True
    if len(varying) > 1 or len(space.axes) > 1:
        return False
    ax = varying[0]
    const_axis = 0 if node.op == "PRelu" and value.ndim == 1 else ax - offset
    if value.shape[const_axis] != space.ids.shape[0]:
        return False
    a.slot(node, index, const_axis, space.ids, kind)
    return True


def _binary(a: _Analyzer, node: gs.Node) -> str | None:
    spaces = [(i, a.space(t)) for i, t in enumerate(node.inputs)]
    live = [(i, s) for i, s in spaces if s is not None]
    if not live:
        return None
    out_shape = a.shape(node.outputs[0])
    if out_shape is None:
        return "unknown output shape"
    rank = len(out_shape)

    def aligned(i: int, s: Space) -> tuple[int, ...]:
        in_shape = a.shape(node.inputs[i])
        off = rank - len(in_shape) if in_shape is not None else 0
        return tuple(ax + off for ax in s.axes)

    base_i, base = live[0]
    axes = aligned(base_i, base)
    for i, s in live[1:]:
        if aligned(i, s) != axes or s.ids.shape != base.ids.shape:
            if s.ids.size == 1 or base.ids.size == 1:
                return "broadcasts a one-channel tensor over channels"
            return "inputs carry channels on different axes"
    for i, t in enumerate(node.inputs):
        if spaces[i][1] is not None:
            continue
        if is_constant(t):
            if not _attach_operand(a, node, i, Space(axes, base.ids), kind="norm"):
                return f"constant input {i} does not broadcast per channel"
        else:
            shape = a.shape(t)
            off = rank - len(shape) if shape is not None else 0
            if shape is None or any(ax - off >= 0 and shape[ax - off] > 1 for ax in axes):
                return f"input '{t.name}' has channels that are not tracked"
    out_ids = base.ids
    if a.align == "independent" and node.op in ("Add", "Sum") and len(live) > 1:
        exclusive = [(i, s) for i, s in live if len(node.inputs[i].outputs) == 1]
        shared = [(i, s) for i, s in live if len(node.inputs[i].outputs) > 1]
        if exclusive and shared:
            out_ids = exclusive[0][1].ids
            for _, s in exclusive[1:]:
                a.cg.union(out_ids, s.ids)
            for i, _ in shared:
                a.cg.alignments.append(Alignment(node, i, node.inputs[i].name))
            a.set(node.outputs[0], axes, out_ids)
            return None
    for _, s in live[1:]:
        a.cg.union(base.ids, s.ids)
    a.set(node.outputs[0], axes, out_ids)
    return None


def _conv(a: _Analyzer, node: gs.Node) -> str | None:
    x, w = node.inputs[0], node.inputs[1]
    wv = constant_value(w)
    if wv is None:
        a.refuse(node, "non-constant weight")
        return None
    group = int(node.attrs.get("group", 1))
    transposed = node.op == "ConvTranspose"
    cin = wv.shape[0] if transposed else wv.shape[1] * group
    cout = wv.shape[1] * group if transposed else wv.shape[0]
    in_ids = a.need(x, 1, cin, node)
    has_bias = len(node.inputs) > 2 and node.inputs[2].name != ""
    if group == 1:
        a.slot(node, 1, 0 if transposed else 1, in_ids, "in")
        out_ids = a.cg.new((cout,))
        a.slot(node, 1, 1 if transposed else 0, out_ids, "out")
    elif group == cin and wv.shape[1] == 1 and cout % cin == 0:  # depthwise (times a channel multiplier)
        mult = cout // cin
        out_ids = np.repeat(in_ids, mult)
        a.slot(node, 1, 0, out_ids if not transposed else in_ids, "out")
        a.cg.fixups.append(Fixup(node, "depthwise", x.name, {"multiplier": mult}))
    else:
        why = f"{node.op} '{node_label(node)}': grouped convolution (group={group})"
        a.cg.lock(in_ids, why)
        out_ids = a.cg.new((cout,))
        a.cg.lock(out_ids, why)
    if has_bias:
        a.slot(node, 2, 0, out_ids, "out")
    a.set(node.outputs[0], (1,), out_ids)
    return None


def _gemm(a: _Analyzer, node: gs.Node) -> str | None:
    x, w = node.inputs[0], node.inputs[1]
    wv = constant_value(w)
    if wv is None or int(node.attrs.get("transA", 0)) or wv.ndim != 2:
        return "needs transA=0 and a constant B"
    trans = int(node.attrs.get("transB", 0))
    k, n = (wv.shape[1], wv.shape[0]) if trans else wv.shape
    in_ids = a.need(x, 1, k, node)
    a.slot(node, 1, 1 if trans else 0, in_ids, "in")
    out_ids = a.cg.new((n,))
    a.slot(node, 1, 0 if trans else 1, out_ids, "out")
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = constant_value(node.inputs[2])
        if c is None:
            a.cg.lock(out_ids, f"Gemm '{node_label(node)}': non-constant C")
        elif c.size > 1:
            if c.shape[-1] != n or (c.ndim == 2 and c.shape[0] != 1):
                a.cg.lock(out_ids, f"Gemm '{node_label(node)}': C is not a per-column bias")
            else:
                a.slot(node, 2, c.ndim - 1, out_ids, "out")
    a.set(node.outputs[0], (1,), out_ids)
    return None


def _matmul(a: _Analyzer, node: gs.Node) -> str | None:
    x, w = node.inputs
    wv = constant_value(w)
    shape = a.shape(x)
    if wv is None and not is_constant(x):
        return _matmul_activations(a, node)
    if wv is None or wv.ndim != 2 or shape is None or is_constant(x):
        return "needs an activation times a constant 2-D matrix"
    rank = len(shape)
    in_ids = a.need(x, rank - 1, wv.shape[0], node)
    a.slot(node, 1, 0, in_ids, "in")
    out_ids = a.cg.new((wv.shape[1],))
    a.slot(node, 1, 1, out_ids, "out")
    a.set(node.outputs[0], (rank - 1,), out_ids)
    return None


def _matmul_activations(a: _Analyzer, node: gs.Node) -> str | None:
    """Activation times activation (attention): ``scores = q @ k^T`` contracts q's last axis with k^T's
    second-to-last, so those channels are unioned (q and k lose the same positions of every head) and the scores
    carry none; ``out = scores @ v`` keeps v's channels (its last axis and any head axis) in place. Tracked
    channels on the batch-like axes of both operands (the head axis) are unioned too."""
    x, y, out = node.inputs[0], node.inputs[1], node.outputs[0]
    sx, sy, so = a.shape(x), a.shape(y), a.shape(out)
    if sx is None or sy is None or so is None or len(sx) < 2 or len(sy) < 2:
        return "activation MatMul with unknown or 1-D shapes"
    px, py = a.space(x), a.space(y)
    rank = len(so)
    ox, oy = rank - len(sx), rank - len(sy)  # right-aligned batch axes
    cx, cy = len(sx) - 1, len(sy) - 2  # the contracted axes
    if px is not None and len(px.axes) > 2 or py is not None and len(py.axes) > 2:
        return "activation MatMul over a channel space of more than two axes"
    contracted = (px is not None and cx in px.axes, py is not None and cy in py.axes)
    if contracted[0] != contracted[1]:
        return "contracts tracked channels with untracked ones"
    if contracted[0]:
        # q @ k^T: the same axes must line up: (head axis, contracted axis) on both, same shapes
        batch_x = [ax + ox for ax in px.axes if ax != cx]
        batch_y = [ax + oy for ax in py.axes if ax != cy]
        if batch_x != batch_y or px.ids.shape != py.ids.shape:
            return "contracted channels that do not line up"
        a.cg.union(px.ids, py.ids)
        return None
    out_axes, out_ids = [], None
    for p, off, row in ((px, ox, len(sx) - 2), (py, oy, None)):
        if p is None:
            continue
        moved = tuple(ax + off if ax != row else rank - 2 for ax in p.axes)
        if out_ids is None:
            out_axes, out_ids = list(moved), p.ids
        elif moved == tuple(out_axes) and p.ids.shape == out_ids.shape:
            a.cg.union(out_ids, p.ids)
        else:
            return "both operands carry channels on different axes"
    if out_ids is not None:
        a.set(out, tuple(out_axes), out_ids)
    return None


def _concat(a: _Analyzer, node: gs.Node) -> str | None:
    out_shape = a.shape(node.outputs[0])
    if out_shape is None:
        return "unknown output shape"
    axis = _rank_axis(int(node.attrs.get("axis", 0)), len(out_shape))
    if not any(a.space(t) is not None for t in node.inputs):
        return None
    if all(a.space(t) is None or a.space(t).axes == (axis,) for t in node.inputs):
        parts = []
        for t in node.inputs:
            shape = a.shape(t)
            if shape is None:
                return f"unknown shape of '{t.name}'"
            parts.append(a.need(t, axis, shape[axis], node))
        a.set(node.outputs[0], (axis,), np.concatenate(parts))
        return None
    live = [a.space(t) for t in node.inputs if a.space(t) is not None]
    if any(axis in s.axes for s in live):
        return "concatenates along a channel axis of a multi-axis channel space"
    base = live[0]
    for s in live[1:]:
        if s.axes != base.axes or s.ids.shape != base.ids.shape:
            return "inputs carry channels on different axes"
        a.cg.union(base.ids, s.ids)
    if len(live) != len(node.inputs):
        return "some inputs have untracked channels"
    a.set(node.outputs[0], base.axes, base.ids)
    return None


def _split(a: _Analyzer, node: gs.Node) -> str | None:
    x = node.inputs[0]
    space = a.space(x)
    if space is None:
        return None
    shape = a.shape(x)
    axis = _rank_axis(int(node.attrs.get("axis", 0)), len(shape))
    if axis not in space.axes:
        for out in node.outputs:
            a.set(out, space.axes, space.ids)
        return None
    if space.axes != (axis,):
        return "splits a multi-axis channel space"
    sizes = [a.shape(o)[axis] if a.shape(o) is not None else None for o in node.outputs]
    if None in sizes:
        return "unknown output shapes"
    bounds = np.cumsum([0] + sizes)
    for out, lo, hi in zip(node.outputs, bounds[:-1], bounds[1:]):
        a.set(out, (axis,), space.ids[lo:hi])
    a.cg.fixups.append(Fixup(node, "split", x.name, {"axis": axis, "bounds": bounds.tolist()}))
    return None


def _slice(a: _Analyzer, node: gs.Node) -> str | None:
    x = node.inputs[0]
    space = a.space(x)
    if space is None:
        return None
    shape = a.shape(x)
    inputs = [node.inputs[i] if i < len(node.inputs) and node.inputs[i].name else None for i in range(1, 5)]
    starts, ends, axes, steps = (constant_value(t) if t is not None else None for t in inputs)
    computed = starts is None or ends is None
    if computed:  # bounds computed at run time (torch.chunk on a dynamic batch): their values at these shapes
        starts, ends = (a.evaluate(t) for t in inputs[:2])
        if starts is None or ends is None:
            return "starts/ends that cannot be evaluated"
    axes = np.arange(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    cut = None
    ids = space.ids
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = _rank_axis(int(ax), len(shape))
        if ax in space.axes and len(space.axes) > 1:
            # an outer axis of a multi-axis space (qkv packed as [.., 3, heads, head_dim]): nothing is removed
            # along it when its positions are tied, so any slice of it stays valid
            k = space.axes.index(ax)
            roots = a.cg.atoms(ids)
            if not np.array_equal(roots, np.broadcast_to(roots.take([0], axis=k), roots.shape)):
                return "slices an axis channels are removed along, in a multi-axis space"
            ids = np.take(ids, np.arange(*slice(int(s), int(e), int(st)).indices(shape[ax])), axis=k)
        elif ax in space.axes:
            if st != 1:
                return "slices the channel axis with a step"
            cut = slice(*slice(int(s), int(e)).indices(shape[ax]))
    ids = ids if cut is None else ids[cut]
    if cut is not None and computed:
        a.computed_slices.setdefault(x.name, []).append((node, cut))
    elif cut is not None:
        a.cg.fixups.append(Fixup(node, "slice", x.name, {"axis": space.axes[0], "start": cut.start,
                                                          "stop": cut.stop, "rank": len(shape)}))
    a.set(node.outputs[0], space.axes, ids)
    return None


def tie_computed_slices(a: _Analyzer) -> None:
    """Slices whose bounds are computed from the run-time channel count follow a removal only as an equal split
    (``torch.chunk``): the parts must partition the channels into equal consecutive ranges, and they lose the
    same positions (part i's j-th channel is tied to part 0's), so that the split of the pruned tensor computes
    the same parts. Anything else locks."""
    for name, parts in a.computed_slices.items():
        ids = a.cg.spaces[name].ids
        cuts = sorted((c.start, c.stop) for _, c in parts)
        size = cuts[0][1] - cuts[0][0]
        equal = (cuts[0][0] == 0 and cuts[-1][1] == len(ids) and size > 0
                 and all(b - s == size and s == cuts[0][0] + i * size for i, (s, b) in enumerate(cuts)))
        if not equal:
            a.cg.lock(ids, f"Slice '{node_label(parts[0][0])}': bounds computed at run time that are not an equal "
                           "split of the channels")
            continue
        for s, _ in cuts[1:]:
            a.cg.union(ids[:size], ids[s:s + size])


def _transpose(a: _Analyzer, node: gs.Node) -> str | None:
    x = node.inputs[0]
    space = a.space(x)
    if space is None:
        return None
    shape = a.shape(x)
    perm = list(node.attrs.get("perm", list(range(len(shape)))[::-1]))
    new_axes = [perm.index(ax) for ax in space.axes]
    order = np.argsort(new_axes)
    a.set(node.outputs[0], tuple(sorted(new_axes)), np.transpose(space.ids, order))
    return None


def _reshape(a: _Analyzer, node: gs.Node) -> str | None:
    x, y = node.inputs[0], node.outputs[0]
    space = a.space(x)
    if space is None:
        return None
    s_in, s_out = a.shape(x), a.shape(y)
    if s_in is None or s_out is None:
        return "unknown shapes"
    if int(np.prod(s_in)) > _MAX_MAP:
        return "tensor too large to map"
    computed = node.op == "Reshape" and constant_value(node.inputs[1]) is None
    full = np.broadcast_to(np.expand_dims(space.ids, [i for i in range(len(s_in)) if i not in space.axes]),
                           s_in)
    mapped = full.reshape(s_out)
    varying = tuple(i for i in range(len(s_out))
                    if s_out[i] > 1 and not np.array_equal(mapped, np.take(mapped, [0], axis=i).repeat(s_out[i], i)))
    if not varying:
        return "removes the channel axis"
    if 0 in varying:
        return "moves channels into the batch axis"
    index = tuple(slice(None) if i in varying else 0 for i in range(len(s_out)))
    ids = mapped[index]
    if computed:
        follows = _follows_removal(a, node.inputs[1], varying[-1])
        if follows is None:
            return "shape computed at run time in a way that cannot follow a removal"
        if follows:  # a constant count inside the computed shape: rewritten after removal
            part, offset = follows
            a.cg.fixups.append(Fixup(node, "shape_part", x.name, {"part": part, "offset": offset,
                                                                   "axis_index": len(varying) - 1}))
    if len(varying) > 1:  # removal along the innermost axis only: tie the outer positions
        inner = ids.reshape(-1, ids.shape[-1])
        for j in range(inner.shape[1]):
            a.cg.union(np.full(inner.shape[0], inner[0, j]), inner[:, j])
    if node.op == "Reshape" and constant_value(node.inputs[1]) is not None:
        a.cg.fixups.append(Fixup(node, "reshape", x.name, {"out_axes": varying, "out_shape": s_out}))
    a.set(y, varying, np.ascontiguousarray(ids))
    return None


def _follows_removal(a: _Analyzer, shape: gs.Tensor, axis: int) -> tuple[gs.Tensor, int] | tuple[()] | None:
    """How a Reshape shape computed at run time (a Concat of parts) follows a removal along ``axis``: ``()`` when
    its entry there is -1 or itself computed (PyTorch's ``x.view(n, -1)``, ``x.view(n, g, c // g, h, w)`` with
    ``n, c, h, w = x.shape``); ``(part, offset)`` when it is a constant to rewrite (Paddle's ``[N, 200]`` heads);
    None when the shape is not such a Concat."""
    producer = shape.inputs[0] if len(shape.inputs) == 1 else None
    if producer is None or not is_standard(producer, "Concat"):
        return None
    at = 0
    for part in producer.inputs:
        value = constant_value(part)
        size = value.size if value is not None else int(np.prod(a.shape(part) or (0,)))
        if size == 0:
            return None
        if at <= axis < at + size:
            if value is None or value.ravel()[axis - at] == -1:
                return ()
            return (part, axis - at) if len(part.outputs) == 1 else None  # a shared constant stays as it is
        at += size
    return None


def _reduce(a: _Analyzer, node: gs.Node) -> str | None:
    x = node.inputs[0]
    space = a.space(x)
    if space is None:
        return None
    rank = len(a.shape(x))
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        axes = constant_value(node.inputs[1])
        if axes is None:
            return "non-constant axes"
    axes = list(range(rank)) if axes is None or len(axes) == 0 else [_rank_axis(int(v), rank) for v in axes]
    if any(ax in axes for ax in space.axes):
        return "reduces over the channel axis"
    keep = int(node.attrs.get("keepdims", 1))
    new_axes = tuple(ax - (0 if keep else sum(r < ax for r in axes)) for ax in space.axes)
    a.set(node.outputs[0], new_axes, space.ids)
    return None


def _softmax(a: _Analyzer, node: gs.Node) -> str | None:
    x = node.inputs[0]
    space = a.space(x)
    if space is None:
        return None
    rank = len(a.shape(x))
    if node.op == "LayerNormalization":
        first = _rank_axis(int(node.attrs.get("axis", -1)), rank)
        if any(ax >= first for ax in space.axes):
            return "normalizes over the channel axis"
    else:
        ax = _rank_axis(int(node.attrs.get("axis", -1)), rank)
        if ax in space.axes:
            return "normalizes over the channel axis"
    a.set(node.outputs[0], space.axes, space.ids)
    return None


HANDLERS = {
    **dict.fromkeys(_UNARY, _unary), **dict.fromkeys(_BINARY, _binary), **dict.fromkeys(_REDUCE, _reduce),
    **dict.fromkeys(_RESHAPE, _reshape),
    "Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "MatMul": _matmul, "Concat": _concat,
    "Split": _split, "Slice": _slice, "Transpose": _transpose, "Softmax": _softmax, "LogSoftmax": _softmax,
    "LayerNormalization": _softmax,
}
