"""OBS compensation: exact against the closed-form least-squares solution, and better than plain pruning."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.numerics.obs import EXACT_BUDGET, Factors, compensate, output_error, prune_compensated, pruning_flops

RNG = np.random.default_rng(0)


def _problem(rows=6, d=20, n=400):
    X = RNG.standard_normal((n, d)) @ RNG.standard_normal((d, d))  # correlated inputs
    X[:, 3] = 0.0  # a dead input
    H = X.T @ X / n
    W = RNG.standard_normal((rows, d))
    return W, H


def test_fixed_mask_update_is_the_least_squares_optimum() -> None:
    """With one row and a fixed mask, OBS equals min ||(w' - w) X|| over w' with w'[pruned] = 0."""
    W, H = _problem(rows=3)
    keep = RNG.random(W.shape) > 0.5
    new = prune_compensated(W, H, keep, damp=0.0)
    assert np.all(new[~keep] == 0)
    for r in range(W.shape[0]):
        k = np.flatnonzero(keep[r] & (np.diag(H) > 0))
        # optimum: H_kk w'_k = H_k: w   (gradient of (w'-w) H (w'-w)^T restricted to kept coordinates)
        expected = np.linalg.solve(H[np.ix_(k, k)], H[k] @ W[r])
        np.testing.assert_allclose(new[r, k], expected, rtol=1e-6, atol=1e-8)


def test_sequential_update_is_exact_for_a_leading_column() -> None:
    """Pruning only column 0, the sequential (SparseGPT) form may move every other weight: it is the optimum."""
    W, H = _problem(rows=4, d=16)
    keep = np.ones(W.shape, bool)
    keep[:, 0] = False
    seq = prune_compensated(W, H, keep, damp=0.0, exact_budget=0)
    exact = prune_compensated(W, H, keep, damp=0.0)
    np.testing.assert_allclose(seq, exact, rtol=1e-7, atol=1e-9)


def test_dampening_pulls_towards_the_kept_weights_not_towards_zero() -> None:
    """towards="weights": a row that loses nothing keeps its weights (but those on the dead input), exact or
    sequential; a row that loses weights is moved only to make up for them: with a huge dampening it stays put.
    By default the exact solve's ridge is towards zero."""
    W, H = _problem(rows=4, d=16)
    H[5, 5] *= 1e-4  # a weak input, which a ridge towards zero would shrink the weight of
    keep = np.ones(W.shape, bool)
    keep[0, :4] = False  # row 0 loses weights, rows 1-3 do not
    live = np.diag(H) > 0
    for budget in (EXACT_BUDGET, 0):
        new = prune_compensated(W, H, keep, damp=0.01, exact_budget=budget, towards="weights")
        np.testing.assert_allclose(new[1:, live], W[1:, live], rtol=1e-9, atol=1e-12)
        assert np.all(new[:, ~live] == 0)
    stiff = prune_compensated(W, H, keep, damp=1e9, towards="weights")
    np.testing.assert_allclose(stiff[0, 4:][live[4:]], W[0, 4:][live[4:]], rtol=1e-6, atol=1e-9)
    shrunk = prune_compensated(W, H, keep, damp=0.01)  # the default, towards zero: rows that lose nothing move too
    assert np.linalg.norm(shrunk[1:, live]) < 0.999 * np.linalg.norm(W[1:, live])
    with pytest.raises(ValueError, match="towards"):
        prune_compensated(W, H, keep, towards="weight")


def test_compensation_beats_plain_pruning_and_blocks_agree() -> None:
    W, H = _problem(rows=16, d=64)
    keep = np.abs(W) > np.quantile(np.abs(W), 0.6)
    plain = np.where(keep, W, 0.0)
    exact = prune_compensated(W, H, keep)
    seq = prune_compensated(W, H, keep, exact_budget=0)
    assert output_error(W, exact, H) < 0.7 * output_error(W, plain, H)
    assert output_error(W, exact, H) <= output_error(W, seq, H) <= output_error(W, plain, H)
    np.testing.assert_allclose(prune_compensated(W, H, keep, block=5, exact_budget=0), seq, rtol=1e-8, atol=1e-10)


def test_quantization_target() -> None:
    W, H = _problem(rows=8, d=32)
    grid = lambda col, j: np.round(col * 4) / 4  # noqa: E731
    q = compensate(W, H, grid)
    assert np.allclose(q * 4, np.round(q * 4))
    assert output_error(W, q, H) < output_error(W, grid(W, 0), H)


def test_memoised_factors_give_the_same_pruning_and_are_keyed_by_hessian() -> None:
    """A search prunes one layer at many sparsities: the sequential form's factor is computed once per Hessian."""
    W, H = _problem(rows=8, d=24)
    stacked = np.stack([H, 2 * H])  # a LayerHessian's (groups, d, d): each H[g] is a new view object
    factors = Factors()
    for q in (0.5, 0.7, 0.9):
        keep = np.abs(W) > np.quantile(np.abs(W), q)
        np.testing.assert_array_equal(prune_compensated(W, stacked[0], keep, exact_budget=0, factors=factors),
                                      prune_compensated(W, H, keep, exact_budget=0))
    assert len(factors._memo) == 1
    prune_compensated(W, stacked[1], keep, exact_budget=0, factors=factors)
    assert len(factors._memo) == 2
    _, H2 = _problem(rows=8, d=24)  # another Hessian (same shape) gets its own factor, not the first one's
    keep = np.abs(W) > np.quantile(np.abs(W), 0.5)
    np.testing.assert_array_equal(prune_compensated(W, H2, keep, exact_budget=0, factors=factors),
                                  prune_compensated(W, H2, keep, exact_budget=0))
    assert len(factors._memo) == 3


def test_memoised_factors_are_bounded_by_bytes() -> None:
    """With max_bytes the least recently used factors go; the one in use always stays, and results do not change."""
    _, H = _problem(rows=8, d=24)
    stacked = np.stack([H, 2 * H, 3 * H])
    factors = Factors(max_bytes=2 * 24 * 24 * 8)  # room for two factors
    for g in (0, 1, 0, 2):  # 1 is now the least recently used
        np.testing.assert_array_equal(factors.get(stacked[g], 0.01), Factors().get(stacked[g], 0.01))
    assert [k[0] for k in factors._memo] == [stacked[g].__array_interface__["data"][0] for g in (0, 2)]
    tiny = Factors(max_bytes=1)
    tiny.get(stacked[0], 0.01)
    assert len(tiny._memo) == 1


def test_pruning_flops_prices_the_path_prune_compensated_takes() -> None:
    d = 3136
    few = np.full(128, 100)  # cheap exact solves
    many = np.full(128, 2000)  # exact solves over the budget: the sequential form
    assert pruning_flops(few, d) == 128 * (100**3 / 3 + 100 * d) <= EXACT_BUDGET
    assert pruning_flops(many, d) == 128 * d * d + 2.0 * d**3
    assert pruning_flops(many, d, factored=True) == 128 * d * d
