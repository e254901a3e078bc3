"""Layer-input Gram matrices ("Hessians") from calibration data, for compensation and refinement passes.

A Conv, Gemm or MatMul computes, for each output row ``r`` (an output channel) and each input patch ``x``
(im2col for Conv), ``y_r = w_r . x``. Changing the weights by ``dW`` changes the outputs by ``dW X``, whose
expected squared size is ``sum_r dw_r H dw_r^T`` with ``H = E[x x^T]`` (d x d, d = the fan-in). This ``H`` is the
Hessian of the layer-wise reconstruction error used by OBS/SparseGPT/GPTQ (Frantar & Alistarh 2022/2023) and by
least-squares centroid refinement.

When earlier layers were already compressed, a layer sees inputs ``x~`` instead of ``x``. Given the original
model as ``reference``, the cross moments ``C = E[x~ x^T]`` are collected too: the weights that best reproduce
the ORIGINAL outputs from the compressed inputs are ``W C^T H~^{-1}`` (:func:`onnxcomp.numerics.retarget.retarget`), so
the error of upstream layers is corrected instead of carried forward. That fit is a least-squares problem on the
calibration samples, and with few samples per input (a squeeze-excite conv sees one vector per image) it learns
the samples: collected with ``folds``, the statistics of each contiguous run of feeds are kept too
(:attr:`LayerHessian.parts`), and :func:`~onnxcomp.numerics.retarget.retarget` picks the strength of its ridge towards
the original weights by cross-validation on them (or keeps the original weights when no strength helps on samples
the fit did not see). PP-OCRv4 rec, 6-bit sequential sharing on 72 lines: top-1 agreement 0.998 on the fitted
lines and 0.983 on held-back ones with the fixed ridge (measured while the refit that follows shrank all weights,
see ``share_weights``); see ``onnxcomp.numerics.retarget.RIDGES``.

This module only collects statistics; the solves that use them are :mod:`onnxcomp.numerics`'s.

The input means ``E[x]`` (and the reference's) are collected too. A layer with a bias can absorb any change of its
output mean (``bias_correction.py``), so what its weights must fit is only the change of the mean-free output:
:meth:`LayerHessian.centered` gives the statistics of ``x - E[x]``, and :meth:`LayerHessian.mean_shift` the bias
change that keeps the output mean. An input that is constant on the calibration data (an image border after
normalisation, a channel that is always positive after a ReLU contributes its mean) then carries no
information for the weights at all: its weights can go and the bias takes their contribution.

Grouped convolutions have one ``H`` per group: group ``g`` of the weight (rows ``g*R .. (g+1)*R``) sees only
input channels ``g*Cg .. (g+1)*Cg``.

``H`` is accumulated batch by batch (memory: one batch of patches plus the d x d sums); weights are processed
in chunks so that the sums of one chunk stay under ``max_bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from onnxcomp.calibration.data import CalibrationData, iter_captures
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Weight

SAMPLES_PER_INPUT = 2  # input vectors per input width below which a fitted layer gets a note (few_samples)
RETARGET_FOLDS = 4  # runs of feeds whose statistics are kept apart to cross-validate retargeting


@dataclass
class LayerHessian:
    """``H`` of shape (groups, d, d), averaged over the calibration patches, and the weight's matrix view."""

    op: str
    shape: tuple[int, ...]
    groups: int
    H: np.ndarray
    transposed: bool = False  # Gemm(transB=0) / MatMul kernels are stored [fan-in, out]
    count: int = 0
    C: np.ndarray | None = None  # E[x~ x^T] against a reference model's inputs, (groups, d, d)
    mean: np.ndarray | None = None  # E[x~], (groups, d)
    ref_mean: np.ndarray | None = None  # E[x] of the reference model's inputs, with C
    is_centered: bool = False
    parts: list[LayerHessian] | None = None  # raw statistics per run of feeds (collected with folds)

    def centered(self) -> LayerHessian:
        """The statistics of the mean-free inputs ``x - E[x]``: ``H - mu mu^T`` and ``C - mu mu_ref^T``.

        Inputs whose variance is below 1e-7 of the mean second moment are constant on the calibration data; their
        rows and columns are set to exactly zero, which compensation treats as dead inputs.
        """
        if self.is_centered:
            return self
        mu = self.mean
        H = self.H - mu[:, :, None] * mu[:, None, :]
        H = (H + np.swapaxes(H, 1, 2)) / 2
        var = np.diagonal(H, axis1=1, axis2=2)
        scale = np.diagonal(self.H, axis1=1, axis2=2).mean(axis=1, keepdims=True)
        const = var <= 1e-7 * scale
        H = np.where(const[:, :, None] | const[:, None, :], 0.0, H)
        C = None
        if self.C is not None:
            C = self.C - mu[:, :, None] * self._reference_mean()[:, None, :]
            C = np.where(const[:, :, None], 0.0, C)
        return replace(self, H=H, C=C, is_centered=True)  # parts stay raw: pooled() needs raw moments

    def mean_shift(self, original: np.ndarray, new: np.ndarray) -> np.ndarray:
        """``E[original x] - E[new x~]`` per output channel (ONNX channel order): what the bias must add so that
        the layer's output mean stays the reference's when ``new`` replaces ``original``."""
        W0 = self.to_matrix(original.astype(np.float64))
        W1 = self.to_matrix(new.astype(np.float64))
        shift = np.einsum("grd,gd->gr", W0, self._reference_mean()) - np.einsum("grd,gd->gr", W1, self.mean)
        return shift.reshape(-1)

    def _reference_mean(self) -> np.ndarray:
        return self.ref_mean if self.ref_mean is not None else self.mean

    def few_samples(self, layer: str) -> str | None:
        """A note when the statistics come from fewer input vectors than ``SAMPLES_PER_INPUT`` times the input
        width: a least-squares fit on them (compensation, retargeting, refinement) matches the calibration
        inputs better than new ones, and the bounds checked on held-out samples then accept less compression.
        (LeNet-300's 784-wide first layer, recipe deep-compression: 500 calibration images give 34.1x, 2000 give
        47.8x.)"""
        d = self.H.shape[-1]
        if self.count >= SAMPLES_PER_INPUT * d:
            return None
        return (f"{layer}: fitted on {self.count} input vectors of width {d}; "
                f">= {SAMPLES_PER_INPUT * d} (more calibration samples) would generalise better")

    def to_matrix(self, array: np.ndarray) -> np.ndarray:
        """Weight in ONNX layout -> (groups, rows per group, d), columns in H's order."""
        if self.op == "Conv":
            return array.reshape(self.groups, self.shape[0] // self.groups, -1)
        mat = array.T if self.transposed else array
        return mat.reshape(1, mat.shape[0], mat.shape[1])

    def from_matrix(self, mat: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_matrix`."""
        if self.op == "Conv":
            return mat.reshape(self.shape)
        mat = mat.reshape(mat.shape[1], mat.shape[2])
        return mat.T if self.transposed else mat


def supports(w: Weight) -> bool:
    """Whether an input Hessian is defined for this weight's (first) use."""
    use = w.primary
    if use is None or w.role != "weight":
        return False
    node = use.node
    if node.op == "Conv" and use.slot == 1 and len(w.shape) in (3, 4):
        return node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID", b"NOTSET", b"VALID")
    if node.op == "Gemm" and use.slot == 1 and not int(node.attrs.get("transA", 0)):
        return True
    return node.op == "MatMul" and use.slot == 1 and len(w.shape) == 2


def collect_hessians(
    model: Model,
    weights: Sequence[Weight],
    data: CalibrationData,
    max_bytes: int = 1 << 30,
    reference: Model | None = None,
    folds: int = 1,
) -> dict[str, LayerHessian]:
    """``H`` for every supported weight (keyed by weight name), from the layer inputs on ``data``.

    With ``reference`` (the uncompressed model, same tensor names), also ``C`` against its layer inputs. With
    ``folds`` > 1 (and at least as many feeds), each result also holds the statistics of ``folds`` contiguous runs
    of feeds in ``parts`` (the runs of :meth:`CalibrationData.folds`), from the same single pass over the data.
    """
    # Layer inputs are captured as main-graph outputs: a layer inside an If/Loop body gets no Hessian (its callers
    # then round to nearest, or keep their defaults), and neither does one whose input is not a named tensor.
    main = {id(n) for n in model.graph.nodes}
    todo = [w for w in weights if supports(w) and id(w.primary.node) in main]
    folds = len(data.fold_edges(folds)) - 1
    out: dict[str, LayerHessian] = {}
    chunk: list[Weight] = []
    size = 0
    for w in todo + [None]:
        d2 = 0 if w is None else _fan_in(w) ** 2 * 8 * _groups(w) * (1 if folds == 1 else folds + 1)
        if chunk and (w is None or size + d2 > max_bytes):
            out.update(_collect(model, chunk, data, reference, folds))
            chunk, size = [], 0
        if w is not None:
            chunk.append(w)
            size += d2
    return out


def _collect(model: Model, weights: list[Weight], data: CalibrationData,
             reference: Model | None, folds: int) -> dict[str, LayerHessian]:
    parts: dict[str, list[LayerHessian]] = {}
    inputs = {}
    for w in weights:
        node = w.primary.node
        groups = _groups(w)
        d = _fan_in(w)
        transposed = node.op == "MatMul" or (node.op == "Gemm" and not int(node.attrs.get("transB", 0)))
        parts[w.name] = [LayerHessian(node.op, w.shape, groups, np.zeros((groups, d, d)), transposed,
                                      mean=np.zeros((groups, d))) for _ in range(folds)]
        inputs[w.name] = node.inputs[0].name

    names = sorted(set(inputs.values()))
    if reference is not None:
        for h in (h for hs in parts.values() for h in hs):
            h.C = np.zeros_like(h.H)
            h.ref_mean = np.zeros_like(h.mean)
        ref_iter = iter_captures(reference, names, data)
    run_of_feed = np.searchsorted(data.fold_edges(folds), np.arange(len(data)), side="right") - 1
    for feed, values in enumerate(iter_captures(model, names, data)):
        ref_values = next(ref_iter) if reference is not None else None
        fold = int(run_of_feed[feed])
        for w in weights:
            h = parts[w.name][fold]
            patches = [p.astype(np.float32, copy=False) for p in input_patches(w, values[inputs[w.name]], h.groups)]
            for g, p32 in enumerate(patches):
                h.H[g] += p32.T @ p32  # float32 GEMM per batch, float64 sums across batches
                h.mean[g] += p32.sum(axis=0, dtype=np.float64)
            if ref_values is not None:
                ref = input_patches(w, ref_values[inputs[w.name]], h.groups)
                for g, p32 in enumerate(patches):
                    h.C[g] += p32.T @ ref[g].astype(np.float32, copy=False)
                    h.ref_mean[g] += ref[g].sum(axis=0, dtype=np.float64)
            h.count += patches[0].shape[0]
    hessians = {}
    for name, hs in parts.items():
        for h in hs:
            for field in ("H", "mean", "C", "ref_mean"):
                if getattr(h, field) is not None:
                    setattr(h, field, getattr(h, field) / max(h.count, 1))
        hessians[name] = hs[0] if folds == 1 else replace(pooled(hs), parts=hs)
    return hessians


def pooled(parts: Sequence[LayerHessian]) -> LayerHessian:
    """The statistics of several disjoint sets of raw (not centered) samples of one layer together (weighted by
    their counts), as ``collect_hessians`` on their union would give them; cross moments when all have them."""
    total = sum(h.count for h in parts)
    if len(parts) == 1 or total == 0:
        return parts[0]

    def mix(field: str) -> np.ndarray | None:
        values = [getattr(h, field) for h in parts]
        return None if any(v is None for v in values) else sum(v * h.count for v, h in zip(values, parts)) / total

    return replace(parts[0], H=mix("H"), mean=mix("mean"), C=mix("C"), ref_mean=mix("ref_mean"), count=total,
                   is_centered=False, parts=None)


def _groups(w: Weight) -> int:
    node = w.primary.node
    return int(node.attrs.get("group", 1)) if node.op == "Conv" else 1


def _fan_in(w: Weight) -> int:
    node = w.primary.node
    if node.op == "Conv":
        return int(np.prod(w.shape[1:]))
    if node.op == "Gemm":
        return w.shape[1] if int(node.attrs.get("transB", 0)) else w.shape[0]
    return w.shape[0]  # MatMul: [K, N]


def input_patches(w: Weight, x: np.ndarray, groups: int) -> list[np.ndarray]:
    """Per group, the (patches x d) matrix whose rows are the vectors each output row is dotted with."""
    node = w.primary.node
    if node.op != "Conv":
        return [x.reshape(-1, x.shape[-1])]
    kernel = w.shape[2:]
    if len(kernel) == 1:  # Conv1d as Conv2d with height 1
        x, kernel = x[:, :, None, :], (1, kernel[0])
        attrs = {k: ([1] + list(v) if k in ("strides", "dilations") else v) for k, v in node.attrs.items()}
        pads = list(node.attrs.get("pads", [0, 0]))
        attrs["pads"] = [0, pads[0], 0, pads[1]]
    else:
        attrs = node.attrs
    cols = _im2col(x, kernel, list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1])),
                   list(attrs.get("pads", [0, 0, 0, 0])))  # (N, OH, OW, C, kh, kw)
    n, oh, ow, c = cols.shape[:4]
    cg = c // groups
    return [cols[:, :, :, g * cg:(g + 1) * cg].reshape(n * oh * ow, -1) for g in range(groups)]


def _im2col(x: np.ndarray, kernel, strides, dilations, pads) -> np.ndarray:
    kh, kw = kernel
    dh, dw = dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (span_h, span_w), axis=(2, 3))
    win = win[:, :, ::strides[0], ::strides[1], ::dh, ::dw]  # (N, C, OH, OW, kh, kw)
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5))
