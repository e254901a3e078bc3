"""Least-squares repair of a layer after filter (channel) pruning, without retraining.

Filter pruning removes output channels of a layer and the matching input channels of its consumers. The
consumers then see fewer (and, after earlier repairs, slightly different) inputs ``x~`` than the original
model's ``x``. Following ThiNet (Luo et al., ICCV 2017) and channel pruning by feature-map reconstruction
(He et al., ICCV 2017), the pruned layer's weights are re-fitted so that its outputs on calibration data
reproduce the ORIGINAL layer's outputs at the kept rows:

    t       = W_ref[rows] x + b_ref[rows]                  (the reference layer's output at the kept rows)
    [W' b'] = argmin_A E|| W' x~ + b' - t ||^2 + tr((A - A0) D (A - A0)^T)
    A = [W' b'],   A0 = [W_ref[rows][:, cols]  b_ref[rows]]   (the plain slicing of the reference layer)

For a Conv, ``x`` is an im2col patch (columns ordered channel, kh, kw as in ``hessian.py``), so a kept input
channel is ``kh * kw`` columns. With the augmented input ``x~a = [x~; 1]`` (the bias is re-fitted too) and
the moments ``H~ = E[x~a x~a^T]`` and ``G = E[x~a t^T]``, the normal equations are

    A (H~ + D) = G^T + A0 D,     D = diag(dampening of H~)  (``obs.dampened``: damp * mean(diag H~), dead inputs 1)

the ridge form of :func:`onnxcomp.numerics.retarget.retarget` (there ``G^T = W C^T`` with ``C = E[x~ x^T]``;
here ``t`` is formed batch by batch, so only ``G`` (fan-in x rows) is kept instead of the fan-in x fan-in
``C``). The ridge pulls towards the sliced reference weights, so a layer whose inputs did not change keeps its
weights, and input directions the calibration data do not span are left alone. The output error of any ``A``
follows from the same moments, without a second pass over the data:

    E|| A x~a - t ||^2 = tr(A H~ A^T) - 2 tr(A G) + E||t||^2

:func:`fit_channel_map` solves the same problem for one activation: the map ``P x~ + b`` from the kept
channels ``src`` to the reference channels ``dst``, with the ridge pulling towards the plain selection.

Everything streams over the calibration feeds: one batch of patches plus the moment sums is in memory.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.calibration.data import CalibrationData, iter_captures
from onnxcomp.calibration.hessian import input_patches
from onnxcomp.errors import PassError
from onnxcomp.ir.graph_edit import is_graph_output, is_standard, tensor_names, unique_name
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Use, Weight, constant_value, is_constant, weight_of
from onnxcomp.numerics.obs import DAMP, dampened


def solve_ridge(H: np.ndarray, G: np.ndarray, prior: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """``argmin_A E||A x - t||^2 + tr((A - prior) D (A - prior)^T)`` from ``H = E[x x^T]`` and ``G = E[x t^T]``.

    ``H`` is (d, d), ``G`` (d, r), ``prior`` (r, d); returns ``A`` (r, d) in float64. ``D`` is the dampening of
    :func:`onnxcomp.numerics.obs.dampened` (``damp * mean(diag H)``, inputs that are always zero get 1 + that), so an
    input the data never excite keeps its prior weight.
    """
    H = np.asarray(H, dtype=np.float64)
    Hd = dampened(H, damp)
    ridge = np.diag(Hd) - np.diag(H)
    rhs = np.asarray(G, dtype=np.float64) + ridge[:, None] * np.asarray(prior, dtype=np.float64).T
    try:
        return np.linalg.solve(Hd, rhs).T
    except np.linalg.LinAlgError:  # only with damp = 0 and rank-deficient data: the minimum-norm solution
        return np.linalg.lstsq(Hd, rhs, rcond=None)[0].T


def refit_layer(model: Model, reference: Model, node_name: str, rows: np.ndarray | None, cols: np.ndarray | None,
                data: CalibrationData, damp: float = DAMP) -> tuple[float, float] | None:
    """Re-fit the weights and bias of a pruned layer to the reference layer's outputs at the kept ``rows``.

    ``node_name`` names a Conv (group 1, 1-D or 2-D, explicit or VALID padding), Gemm (transA 0, constant weight)
    or MatMul (constant 2-D weight) in both models. ``rows`` are the reference output channels the pruned layer
    kept and ``cols`` the reference input channels its input still has (ascending; None = all). The model is
    changed in place: the weight (copied first when other nodes share it) and the bias; a Conv/Gemm without bias
    gets one, a MatMul's bias is the constant of a following single-consumer Add, else it is fitted without bias.

    Returns the relative output error ``E||y - t||^2 / E||t||^2`` on ``data`` before and after (absolute when the
    target is always zero). When the fit does not lower the error the model is left unchanged and (before,
    before) is returned. None when the layer is not supported; PassError when the node is missing or the pruned
    shapes do not match ``rows``/``cols``.
    """
    node, ref_node = _find(model, node_name, "model"), _find(reference, node_name, "reference")
    layer, ref = _layer(node, model.graph), _layer(ref_node, reference.graph)
    if layer is None or ref is None:
        return None
    if node.op != ref_node.op:
        raise PassError(f"node '{node_name}' is a {node.op} in the model but a {ref_node.op} in the reference")
    if layer.kernel != ref.kernel:
        raise PassError(f"node '{node_name}': kernel {layer.kernel} in the model but {ref.kernel} in the reference")
    rows = _indices(rows, ref.rows, node_name, "rows")
    cols = _indices(cols, ref.fan_in // ref.positions, node_name, "cols")
    if layer.matrix.shape != (len(rows), len(cols) * ref.positions):
        raise PassError(f"node '{node_name}': pruned weight {layer.weight.shape} does not match {len(rows)} kept rows "
                        f"and {len(cols)} kept input channels of the reference weight {ref.weight.shape}")

    target_w = ref.matrix[rows].astype(np.float32)
    target_b = ref.bias[rows].astype(np.float32) if ref.bias is not None else None
    moments = _Moments(layer.matrix.shape[1], len(rows))
    probe, ref_probe = _probe(node, layer.weight), _probe(ref_node, ref.weight)
    names, ref_names = [node.inputs[0].name], [ref_node.inputs[0].name]
    for values, ref_values in zip(iter_captures(model, names, data), iter_captures(reference, ref_names, data)):
        (x,) = input_patches(probe, values[names[0]], 1)
        (x_ref,) = input_patches(ref_probe, ref_values[ref_names[0]], 1)
        if len(x) != len(x_ref):
            raise PassError(f"node '{node_name}': {len(x)} input positions in the model but {len(x_ref)} in the "
                            "reference (different strides, pads or input sizes)")
        t = x_ref.astype(np.float32, copy=False) @ target_w.T
        if target_b is not None:
            t += target_b
        moments.add(x.astype(np.float32, copy=False), t)

    fit_bias = layer.can_have_bias
    H, G, tt = moments.mean(fit_bias)
    cols_x = (cols[:, None] * ref.positions + np.arange(ref.positions)).ravel()
    prior = ref.matrix[np.ix_(rows, cols_x)]
    current = layer.matrix
    if fit_bias:
        zeros = np.zeros(len(rows))
        prior = np.hstack([prior, (ref.bias[rows] if ref.bias is not None else zeros)[:, None]])
        current = np.hstack([current, (layer.bias if layer.bias is not None else zeros)[:, None]])
    new = solve_ridge(H, G, prior, damp)
    before, after = _error(current, H, G, tt), _error(new, H, G, tt)
    if not after < before:
        return before, before
    layer.write(node, new[:, :-1] if fit_bias else new, new[:, -1] if fit_bias else None, model)
    return before, after


def fit_channel_map(model: Model, reference: Model, tensor: str, src: np.ndarray, dst: np.ndarray,
                    data: CalibrationData, damp: float = DAMP,
                    axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The affine map ``P x~ + b`` from the kept channels ``src`` of ``tensor`` to the reference channels ``dst``.

    In ``model`` the tensor holds ``len(src)`` channels: the reference's channels ``src`` (ascending), as pruned.
    Minimises ``E||P x~ + b - x_ref[dst]||^2`` over all positions (channels are features, batch and spatial
    positions are samples) plus a ridge pulling ``[P b]`` towards ``[S 0]``, the selection ``S[i, j] = 1`` where
    ``dst[i] == src[j]``: where ``dst`` is a subset of ``src`` and the data agree, ``P`` is that selection, and a
    channel not in ``src`` is predicted from the kept ones instead of being left at zero. ``axis`` is the channel
    axis: by default 1 for rank 4/5 tensors ([N, C, ...]) and the last one for rank 2/3 ([N, F], [N, S, C]).
    Returns ``P`` (len(dst), len(src)) and ``b`` (len(dst),), float64.
    """
    src = np.asarray(src, dtype=np.int64).reshape(-1)
    dst = np.asarray(dst, dtype=np.int64).reshape(-1)
    moments = _Moments(len(src), len(dst))
    for values, ref_values in zip(iter_captures(model, [tensor], data), iter_captures(reference, [tensor], data)):
        x, x_ref = values[tensor], ref_values[tensor]
        ax = _channel_axis(x.ndim, axis, tensor)
        x = np.moveaxis(x, ax, -1).reshape(-1, x.shape[ax])
        x_ref = np.moveaxis(x_ref, ax, -1).reshape(-1, x_ref.shape[ax])
        if x.shape[1] != len(src):
            raise PassError(f"tensor '{tensor}' has {x.shape[1]} channels in the model but {len(src)} kept channels "
                            "were given")
        for name, idx in (("src", src), ("dst", dst)):
            if idx.size and (idx.min() < 0 or idx.max() >= x_ref.shape[1]):
                raise PassError(f"tensor '{tensor}': {name} indices out of range for {x_ref.shape[1]} reference "
                                "channels")
        if len(x) != len(x_ref):
            raise PassError(f"tensor '{tensor}': {len(x)} positions in the model but {len(x_ref)} in the reference")
        moments.add(x.astype(np.float32, copy=False), x_ref[:, dst].astype(np.float32, copy=False))
    H, G, _ = moments.mean(bias=True)
    prior = np.zeros((len(dst), len(src) + 1))
    i, j = np.nonzero(dst[:, None] == src[None, :])
    prior[i, j] = 1.0
    A = solve_ridge(H, G, prior, damp)
    return A[:, :-1], A[:, -1]


# -- moments --------------------------------------------------------------------------------------------------
class _Moments:
    """Streaming sums for ``H = E[xa xa^T]``, ``G = E[xa t^T]`` and ``E||t||^2`` with ``xa = [x; 1]``.

    The ones column is kept as separate sums (``x`` total, ``t`` total, count), so no batch is copied to append it.
    Products are float32 GEMMs per batch, summed in float64 across batches (as in ``hessian.py``).
    """

    def __init__(self, d: int, r: int):
        self.xx = np.zeros((d, d))
        self.xt = np.zeros((d, r))
        self.x1 = np.zeros(d)
        self.t1 = np.zeros(r)
        self.tt = 0.0
        self.n = 0

    def add(self, x: np.ndarray, t: np.ndarray) -> None:
        self.xx += x.T @ x
        self.xt += x.T @ t
        self.x1 += x.sum(axis=0, dtype=np.float64)
        self.t1 += t.sum(axis=0, dtype=np.float64)
        self.tt += float(np.einsum("ij,ij->", t, t, dtype=np.float64))
        self.n += len(x)

    def mean(self, bias: bool) -> tuple[np.ndarray, np.ndarray, float]:
        """(H, G, E||t||^2), averaged over the samples; with ``bias`` the ones row/column is appended last."""
        n = max(self.n, 1)
        if not bias:
            return self.xx / n, self.xt / n, self.tt / n
        d = len(self.x1)
        H = np.empty((d + 1, d + 1))
        H[:d, :d], H[:d, d], H[d, :d], H[d, d] = self.xx, self.x1, self.x1, self.n
        G = np.vstack([self.xt, self.t1[None, :]])
        return H / n, G / n, self.tt / n


def _error(A: np.ndarray, H: np.ndarray, G: np.ndarray, tt: float) -> float:
    """``E||A x - t||^2 / E||t||^2`` from the moments (absolute when ``t`` is always zero)."""
    err = float(np.einsum("rd,de,re->", A, H, A, optimize=True)) - 2.0 * float(np.sum(A * G.T)) + tt
    err = max(err, 0.0)  # cancellation can leave a tiny negative number for an exact fit
    return err / tt if tt > 0 else err


# -- layers ---------------------------------------------------------------------------------------------------
class _Layer:
    """A supported layer's weight as a (rows, fan-in) matrix of effective values (Gemm alpha/beta applied)."""

    def __init__(self, node: gs.Node, weight: Weight, bias_slot: tuple[gs.Node, int] | None,
                 bias: np.ndarray | None):
        self.weight = weight
        self.bias_slot = bias_slot  # (node, input slot) holding the bias constant; None when absent
        self.bias = bias  # effective bias, 1-D (rows,), or None
        self.op = node.op
        self.transposed = node.op == "MatMul" or (node.op == "Gemm" and not int(node.attrs.get("transB", 0)))
        self.alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
        array = weight.array.astype(np.float64)
        self.kernel = tuple(weight.shape[2:]) if node.op == "Conv" else ()
        self.positions = int(np.prod(self.kernel, dtype=np.int64))
        mat = array.reshape(array.shape[0], -1) if node.op == "Conv" else (array.T if self.transposed else array)
        self.matrix = mat * self.alpha
        self.rows, self.fan_in = self.matrix.shape
        # A MatMul without a following constant Add has nowhere to put a bias.
        self.can_have_bias = node.op != "MatMul" or bias_slot is not None

    def write(self, node: gs.Node, matrix: np.ndarray, bias: np.ndarray | None, model: Model) -> None:
        names = tensor_names(model.graphs())
        dtype = self.weight.array.dtype
        mat = matrix / self.alpha
        values = mat.reshape(self.weight.shape) if self.op == "Conv" else (mat.T if self.transposed else mat)
        _store(node, 1, values.astype(dtype), names)
        if bias is None:
            return
        if self.bias_slot is None:  # Conv / Gemm without bias: a new initializer at slot 2
            while len(node.inputs) < 2:
                node.inputs.append(gs.Variable.empty())
            if len(node.inputs) == 2:
                node.inputs.append(gs.Variable.empty())
            node.inputs[2] = gs.Constant(unique_name(self.weight.name + "_bias", names), bias.astype(dtype))
            if self.op == "Gemm":
                node.attrs["beta"] = 1.0
            return
        holder, slot = self.bias_slot
        old = weight_of(holder.inputs[slot]).array
        if self.op == "Gemm":
            beta = float(holder.attrs.get("beta", 1.0))
            if beta == 0.0:
                holder.attrs["beta"] = beta = 1.0
            bias = bias / beta
        _store(holder, slot, bias.reshape(old.shape if old.size == bias.size else bias.shape).astype(old.dtype),
               names)


def _layer(node: gs.Node, graph: gs.Graph) -> _Layer | None:
    """The layer view of a supported node, None for anything else (grouped Conv, SAME padding, transA, ...)."""
    if not is_standard(node, "Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
        return None
    weight = weight_of(node.inputs[1])
    if weight is None:
        return None
    rank = len(weight.shape)
    if node.op == "Conv":
        pad = node.attrs.get("auto_pad", "NOTSET")
        if int(node.attrs.get("group", 1)) != 1 or rank not in (3, 4) or pad not in ("NOTSET", "VALID", b"NOTSET",
                                                                                      b"VALID"):
            return None
    elif node.op == "Gemm":
        if int(node.attrs.get("transA", 0)) or rank != 2 or float(node.attrs.get("alpha", 1.0)) == 0.0:
            return None
    elif rank != 2:
        return None
    out = weight.shape[1] if node.op == "MatMul" or (node.op == "Gemm" and not int(node.attrs.get("transB", 0))) \
        else weight.shape[0]
    slot = _bias_slot(node, graph)
    if slot is False:
        return None
    bias = None
    if slot is not None:
        holder, i = slot
        value = constant_value(holder.inputs[i]).astype(np.float64)
        if value.size != 1 and (value.shape[-1] != out or any(s != 1 for s in value.shape[:-1])):
            return None  # not one value per output row (a Gemm C of shape [M, N] or [M, 1] varies along the batch)
        scale = float(holder.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
        bias = np.broadcast_to(value.reshape(-1) * scale, (out,)).copy()
    return _Layer(node, weight, slot, bias)


def _bias_slot(node: gs.Node, graph: gs.Graph) -> tuple[gs.Node, int] | None | bool:
    """Where the layer's bias lives: (node, slot), None when it has none, False when it is not a constant."""
    if node.op in ("Conv", "Gemm"):
        if len(node.inputs) < 3 or not node.inputs[2].name:
            return None
        tensor = node.inputs[2]
        return (node, 2) if is_constant(tensor) and weight_of(tensor) is not None else False
    y = node.outputs[0]
    # The MatMul's own output must not be observed elsewhere, or moving the bias into the Add would change it.
    if len(y.outputs) != 1 or not is_standard(y.outputs[0], "Add") or is_graph_output(graph, y):
        return None
    add = y.outputs[0]
    if len(add.inputs) != 2 or sum(t is y for t in add.inputs) != 1:
        return None
    i = 1 if add.inputs[0] is y else 0
    other = add.inputs[i]
    if not is_constant(other) or weight_of(other) is None:
        return None
    shape = weight_of(other).shape
    # Only a bias along the output features ([N] or [1, ..., N]) is a per-row bias.
    if not shape or any(s != 1 for s in shape[:-1]):
        return None
    return add, i


def _probe(node: gs.Node, weight: Weight) -> Weight:
    """The weight as seen by this node alone, for ``hessian.input_patches`` (which reads the primary use's attributes);
    a shared weight's first use may be another node."""
    return Weight(weight.tensor, weight.producer, [Use(node, 1)])


def _store(node: gs.Node, slot: int, values: np.ndarray, names: set[str]) -> None:
    """Write in place when only this node reads the constant, else as a fresh initializer (a shared weight's other
    users must keep theirs)."""
    w = weight_of(node.inputs[slot])
    if w.shared or w.shape != values.shape:
        node.inputs[slot] = gs.Constant(unique_name(w.name + "_refit", names), np.ascontiguousarray(values))
    else:
        w.set(values)


def _find(model: Model, name: str, which: str) -> gs.Node:
    for node in model.graph.nodes:
        if node.name == name:
            return node
    raise PassError(f"no node named '{name}' in the main graph of the {which}")


def _indices(idx: np.ndarray | None, size: int, node_name: str, what: str) -> np.ndarray:
    if idx is None:
        return np.arange(size)
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= size or np.any(np.diff(idx) <= 0)):
        raise PassError(f"node '{node_name}': {what} must be ascending indices below {size}")
    return idx


def _channel_axis(rank: int, axis: int | None, tensor: str) -> int:
    if rank < 2:
        raise PassError(f"tensor '{tensor}' has rank {rank}; a channel map needs [N, C, ...] or [N, ..., F]")
    if axis is None:
        return 1 if rank >= 4 else rank - 1
    return axis % rank
