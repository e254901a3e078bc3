"""Re-targeting (``onnxcomp/numerics/retarget.py``): inputs that did not change give the weights back, an exact
linear change of the inputs is undone, the ridge towards the original weights is cross-validated on held-out runs
of feeds, the kept-set refit stays on the kept set, and the relative output error."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from models.paths import data_path, model_path
from onnxcomp.calibration.data import CalibrationData
from onnxcomp.calibration.hessian import LayerHessian, collect_hessians, pooled
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table
from onnxcomp.numerics.retarget import layer_output_error, retarget, retarget_kept, retarget_ridge

LENET = model_path("mnist_lenet300")
CALIB = data_path("mnist_calib")


def _moments(x_new: np.ndarray, x_ref: np.ndarray) -> LayerHessian:
    n, d = x_new.shape
    return LayerHessian("Gemm", (3, d), 1, (x_new.T @ x_new / n)[None], count=n, C=(x_new.T @ x_ref / n)[None],
                        mean=x_new.mean(0)[None], ref_mean=x_ref.mean(0)[None])


def _with_parts(runs: list[tuple[np.ndarray, np.ndarray]]) -> LayerHessian:
    parts = [_moments(a, b) for a, b in runs]
    return replace(pooled(parts), parts=parts)


def _error(W: np.ndarray, x_new: np.ndarray, x_ref: np.ndarray, target: np.ndarray) -> float:
    return float(((x_new @ W[0].T - x_ref @ target[0].T) ** 2).sum(1).mean())


def test_retarget_ridge_is_cross_validated() -> None:
    """A systematic change of a layer's inputs (many samples) is retargeted with a light ridge; inputs changed by
    noise that new samples do not share, seen on fewer samples than inputs, are not fitted (the fixed light ridge
    learnt the noise and reproduced new samples worse than the original weights)."""
    rng = np.random.default_rng(1)
    d = 24
    W = rng.normal(size=(1, 3, d))
    mix = np.eye(d) + 0.3 * rng.normal(size=(d, d))

    def runs(n: int, change):
        out = []
        for _ in range(4):
            x = rng.normal(size=(n, d))
            out.append((change(x), x))
        return out

    fresh = rng.normal(size=(4000, d))
    systematic = _with_parts(runs(500, lambda x: x @ mix + 1.0))
    assert retarget_ridge(systematic, W) == 1.0
    assert retarget_ridge(systematic.centered(), W) == 1.0  # the parts are centered by the fit, not twice
    fitted = retarget(systematic, W)
    moved = fresh @ mix + 1.0  # affine, and this layer has no bias: not exactly reproducible
    assert _error(fitted, moved, fresh, W) < 0.05 * _error(W, moved, fresh, W)

    noisy = _with_parts(runs(5, lambda x: x + rng.normal(size=x.shape)))
    ridge = retarget_ridge(noisy, W)
    assert ridge is None or ridge >= 100
    noise = fresh + rng.normal(size=fresh.shape)
    light = retarget(replace(noisy, parts=None), W)  # no parts: the caller's dampening, as before
    assert _error(retarget(noisy, W), noise, fresh, W) < _error(light, noise, fresh, W)


def test_unchanged_inputs_give_back_the_weights() -> None:
    """C = H (the layer sees the reference's very inputs): W' (H + D) = W H + W D is solved by W itself, with or
    without parts to cross-validate the ridge on; without cross moments W is returned as it is."""
    rng = np.random.default_rng(2)
    d = 8
    W = rng.normal(size=(1, 3, d))
    x = rng.normal(size=(400, d)) @ rng.normal(size=(d, d))  # correlated inputs
    np.testing.assert_allclose(retarget(_moments(x, x), W), W, rtol=1e-9, atol=1e-12)
    runs = [(x[i::4], x[i::4]) for i in range(4)]
    np.testing.assert_allclose(retarget(_with_parts(runs), W), W, rtol=1e-9, atol=1e-12)
    plain = replace(_moments(x, x), C=None)
    assert retarget(plain, W) is W


def test_an_exact_linear_change_of_the_inputs_is_undone() -> None:
    """x_ref = x~ M: the reference outputs W x_ref are W M^T x~, which a light ridge recovers to 1e-6."""
    rng = np.random.default_rng(3)
    d = 6
    W = rng.normal(size=(1, 3, d))
    M = np.eye(d) + 0.3 * rng.normal(size=(d, d))
    x_new = rng.normal(size=(2000, d))
    x_ref = x_new @ M
    h = _moments(x_new, x_ref)
    assert retarget_ridge(h, W) == 1.0  # no parts: the caller's dampening
    fitted = retarget(h, W, damp=1e-9)
    np.testing.assert_allclose(fitted[0], W[0] @ M.T, rtol=1e-6, atol=1e-6)
    assert _error(fitted, x_new, x_ref, W) < 1e-10 * _error(W, x_new, x_ref, W)


def test_layer_output_error_is_relative_to_the_output() -> None:
    """tr(dW H dW^T) / tr(W H W^T): 0 for the same weights, 1 for zero weights or twice the weights, None when
    the layer's input is always zero."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 5))
    h = _moments(x, x)
    W = rng.normal(size=(3, 5))
    assert layer_output_error(h, W, W) == 0.0
    assert abs(layer_output_error(h, W, np.zeros_like(W)) - 1.0) < 1e-12
    assert abs(layer_output_error(h, W, 2 * W) - 1.0) < 1e-12
    half = layer_output_error(h, W, 0.5 * W)
    assert abs(half - 0.25) < 1e-12
    assert layer_output_error(_moments(np.zeros_like(x), np.zeros_like(x)), W, 0.5 * W) is None


def test_retarget_kept_stays_on_the_kept_set_and_beats_zeroing() -> None:
    """Restricted to ``keep``: exact zeros elsewhere, the weight's dtype, and a lower output error than zeroing the
    same weights; keeping everything with the ridge towards the weights gives the re-targeted weights back."""
    rng = np.random.default_rng(5)
    d = 12
    x = rng.normal(size=(600, d)) @ (np.eye(d) + 0.5 * rng.normal(size=(d, d)))
    h = _moments(x, x)
    W = rng.normal(size=(3, d)).astype(np.float32)
    keep = rng.random(W.shape) > 0.4
    kept = retarget_kept(h, W, keep)
    assert kept.dtype == np.float32 and np.all(kept[~keep] == 0)
    zeroed = np.where(keep, W, 0).astype(np.float32)
    assert layer_output_error(h, W, kept) < layer_output_error(h, W, zeroed)
    everything = retarget_kept(h, W, np.ones(W.shape, bool), towards="weights")
    np.testing.assert_allclose(everything, W, rtol=1e-5, atol=1e-6)


def test_retargeting_keeps_a_layer_whose_inputs_did_not_change() -> None:
    """Against a reference that is the model itself, re-targeting has nothing to correct: the weights share_weights'
    sequential mode clusters (``retarget_kept`` on the layer's nonzeros, its ridge towards the re-targeted weights)
    are the layer's own on every input that varies (the refit onto the nonzeros pulls towards the re-targeted
    weights instead of shrinking them towards zero; weights on constant inputs go, the bias takes them)."""
    model = Model.load(LENET)
    data = CalibrationData.from_source(CALIB, model.to_proto()).take(8)
    w = next(k for k in weight_table(model) if k.name == "fc2.weight")
    h = collect_hessians(model, [w], data, reference=model.copy(), folds=4)["fc2.weight"].centered()
    original = w.array.copy()
    target = retarget_kept(h, original, original != 0, towards="weights")
    live = np.diag(h.H[0]) > 0  # fc2 is a Gemm with transB: columns are inputs
    assert 10 < live.sum() < live.size
    np.testing.assert_allclose(target[:, live], original[:, live], rtol=1e-4, atol=1e-7)
    assert np.all(target[:, ~live] == 0)
