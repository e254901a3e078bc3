"""Re-targeting: the dense weights that map a layer's compressed inputs to the ORIGINAL model's outputs.

When earlier layers were compressed, a layer sees inputs ``x~`` instead of ``x``. With the statistics
``H~ = E[x~ x~^T]`` and ``C = E[x~ x^T]`` (:func:`onnxcomp.calibration.hessian.collect_hessians` with a
reference model), ``argmin ||W' X~ - W X||^2 + tr((W' - W) D (W' - W)^T)`` solves ``W' (H~ + D) = W C^T + W D``
(:func:`retarget`), with a ridge ``D`` towards the original weights whose strength is cross-validated on the runs
of feeds kept apart in :attr:`LayerHessian.parts` (:func:`retarget_ridge`, the candidates ``RIDGES``).
:func:`retarget_kept` then restricts the layer to a kept set by the OBS refit of
:func:`onnxcomp.numerics.obs.prune_compensated`; :func:`layer_output_error` is the relative output change
``tr(dW H dW^T) / tr(W H W^T)`` that passes report and searches use.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from onnxcomp.calibration.hessian import LayerHessian, pooled
from onnxcomp.numerics.obs import DAMP, Factors, dampened, output_error, prune_compensated

RIDGES = (1.0, 10.0, 100.0, 1000.0)  # retargeting's ridge candidates, in multiples of the caller's dampening


def retarget(h: LayerHessian, W: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """Matrix view ``W`` (groups, rows, d) -> the dense weights that best map x~ to the reference outputs.

    ``argmin ||W' X~ - W X||^2 + tr((W' - W) D (W' - W)^T)`` with ``D`` the dampening: ``W' (H~ + D) = W C^T
    + W D``. The ridge pulls towards ``W``, not towards zero, so a layer whose inputs did not change keeps its
    weights and directions the few calibration inputs do not span are left alone (LeNet-300 W3 GPTQ on 48
    samples: 15.4 points test accuracy drop with a ridge towards zero, -0.2 with this one). With ``parts``
    the dampening is ``damp`` times the ridge of ``RIDGES`` that reproduces held-out runs of feeds best
    (:func:`retarget_ridge`), and ``W`` itself when none beats it.
    """
    if h.C is None:
        return W
    ridge = retarget_ridge(h, W, damp)
    return W if ridge is None else _solve(h, W, damp * ridge)


def retarget_kept(h: LayerHessian, original: np.ndarray, keep: np.ndarray, damp: float = DAMP,
                  towards: Literal["zero", "weights"] = "zero", factors: Factors | None = None) -> np.ndarray:
    """``original`` (ONNX layout) re-targeted (:func:`retarget`; unchanged without ``C``), then restricted to
    ``keep`` by the least-squares refit of :func:`onnxcomp.numerics.obs.prune_compensated` (its ridge pulling
    ``towards`` zero or the re-targeted weights): the layer's weights, zero outside ``keep``, in its dtype."""
    W = retarget(h, h.to_matrix(original.astype(np.float64)), damp)
    K = h.to_matrix(keep)
    out = np.stack([prune_compensated(W[g], h.H[g], K[g], damp, factors=factors, towards=towards)
                    for g in range(h.groups)])
    return np.where(keep, h.from_matrix(out), 0).astype(original.dtype)


def retarget_ridge(h: LayerHessian, W: np.ndarray, damp: float = DAMP) -> float | None:
    """The multiple of ``damp`` in ``RIDGES`` whose retargeted weights, fitted on all parts but one, best
    reproduce the reference outputs on the one left out (summed over the parts); None when ``W`` unchanged
    does better. Without parts: 1.0. The error of ``W'`` on a part is ``tr(W' H~ W'^T) - 2 tr(W' C W^T)``
    plus a term that does not depend on ``W'``."""
    if not h.parts or len(h.parts) < 2:
        return 1.0
    errors = np.zeros(len(RIDGES) + 1)  # the last: W unchanged
    for i, check in enumerate(h.parts):
        fit = pooled([p for j, p in enumerate(h.parts) if j != i])
        if h.is_centered:
            fit, check = fit.centered(), check.centered()
        for r, ridge in enumerate((*RIDGES, None)):
            Wr = W if ridge is None else _solve(fit, W, damp * ridge)
            errors[r] += check.count * float(np.einsum("grd,gde,gre->", Wr, check.H, Wr)
                                             - 2 * np.einsum("grd,gde,gre->", Wr, check.C, W))
    best = int(np.argmin(errors))
    return RIDGES[best] if best < len(RIDGES) else None


def layer_output_error(h: LayerHessian, original: np.ndarray, new: np.ndarray) -> float | None:
    """Relative output change of replacing ``original`` by ``new`` (ONNX layout), over all groups."""
    return output_error(h.to_matrix(original.astype(np.float64)), h.to_matrix(new.astype(np.float64)),
                        h.H)


def _solve(h: LayerHessian, W: np.ndarray, damp: float) -> np.ndarray:
    """``W' (H~ + D) = W C^T + W D`` per group (:func:`retarget`)."""
    out = np.empty_like(W, dtype=np.float64)
    for g in range(h.groups):
        H = dampened(h.H[g], damp)
        ridge = np.diag(H) - np.diag(h.H[g])
        out[g] = np.linalg.solve(H, h.C[g] @ W[g].T + ridge[:, None] * W[g].T).T
    return out
