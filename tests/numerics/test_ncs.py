"""Negatively correlated search: a constrained problem whose optimum is known."""

from __future__ import annotations

import numpy as np

from onnxcomp.numerics.ncs import ncs_minimize


def _knapsack(seed: int):
    """Per-"layer" sparsities x in [0, 0.95]: minimise the kept weights sum(n (1 - x)) subject to a linear
    "damage" sum(a x) <= budget. The optimum is the fractional knapsack: fill layers by n / a, greedily."""
    rng = np.random.default_rng(seed)
    n = rng.integers(500, 10000, size=8).astype(float)
    a = rng.uniform(0.5, 3.0, size=8)
    budget = 3.0
    high = np.full(8, 0.95)
    x, left = np.zeros(8), budget
    for i in np.argsort(-n / a):
        x[i] = min(high[i], left / a[i])
        left -= a[i] * x[i]
    return n, a, budget, high, float(np.sum(n * (1 - x)))


def test_search_stays_feasible_and_nears_the_optimum() -> None:
    """From a feasible but poor start (the uniform point), the search must make progress towards the optimum and
    return a feasible point whose cost it reports truly. (It leaves 44-77% of the gap on this 8-d problem in 186
    evaluations: the searchers move along the bound, see the module docstring.)"""
    gaps = []
    for seed in range(3):
        n, a, budget, high, optimum = _knapsack(seed)
        start = np.full(8, 0.9 * budget / a.sum())
        found = ncs_minimize(cost=lambda x, n=n: float(np.sum(n * (1 - x))),
                             violation=lambda x, a=a, budget=budget: float(a @ x - budget), x0=start,
                             low=np.zeros(8), high=high, population=6, generations=30, seed=seed)
        assert a @ found.best <= budget + 1e-12
        assert found.best_cost == float(np.sum(n * (1 - found.best)))
        initial = float(np.sum(n * (1 - start)))
        gaps.append((found.best_cost - optimum) / (initial - optimum))
    assert max(gaps) < 0.8, gaps


def test_search_keeps_an_infeasible_problem_at_its_start() -> None:
    """Nothing is feasible beyond the start: the start comes back, the cost is not made up."""
    found = ncs_minimize(cost=lambda x: float(np.sum(1 - x)), violation=lambda x: float(np.sum(x)) - 1e-9,
                         x0=np.zeros(4), low=np.zeros(4), high=np.ones(4), generations=10)
    np.testing.assert_array_equal(found.best, np.zeros(4))
    assert found.best_cost == 4.0
