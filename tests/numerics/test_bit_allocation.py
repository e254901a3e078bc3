"""Bit allocation: lower convex hulls, the greedy Lagrangian path, and bisection along it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxcomp.numerics.bit_allocation import (
    Option,
    allocation_path,
    best_within_budget,
    budget_bytes,
    cheapest_feasible,
    lower_hull,
)


def test_lower_hull_drops_dominated_and_concave_points() -> None:
    opts = [Option(8, 800, 0.0), Option(6, 600, 0.1), Option(5, 500, 0.9), Option(4, 400, 1.0),
            Option(3, 300, 5.0), Option(7, 900, 0.5)]  # 7 bits costs more than 8 for more error
    hull = lower_hull(opts)
    assert [o.bits for o in hull] == [8, 6, 4, 3]  # 5 lies above the chord 6-4; 7 is dominated


def test_path_is_monotone_and_matches_brute_force_lagrangian() -> None:
    rng = np.random.default_rng(0)
    layers = []
    for _ in range(4):
        n = rng.integers(100, 1000)
        err = np.sort(rng.random(5))[::-1] * rng.random() * 10  # narrower widths, more error
        layers.append([Option(b, n * b / 8, float(e)) for b, e in zip([2, 3, 4, 6, 8], err)])
    path = allocation_path(layers)
    assert path[0] == [8, 8, 8, 8]
    nbytes = [sum(next(o.nbytes for o in opts if o.bits == b) for opts, b in zip(layers, p)) for p in path]
    errors = [sum(next(o.error for o in opts if o.bits == b) for opts, b in zip(layers, p)) for p in path]
    assert all(a > b for a, b in zip(nbytes, nbytes[1:]))
    assert all(a <= b + 1e-12 for a, b in zip(errors, errors[1:]))
    # Every point of the path is optimal for its byte count among all allocations (brute force).
    combos = list(itertools.product(*layers))
    for nb, er in zip(nbytes, errors):
        best = min(sum(o.error for o in c) for c in combos if sum(o.nbytes for o in c) <= nb + 1e-9)
        assert er <= best + 1e-9 or er == pytest.approx(best)


def test_cheapest_feasible_bisects() -> None:
    path = [[i] for i in range(100)]
    calls = []

    def feasible(p):
        calls.append(p[0])
        return p[0] <= 41

    assert cheapest_feasible(path, feasible) == 41
    assert len(calls) <= 9
    assert cheapest_feasible(path, lambda p: False) is None
    assert cheapest_feasible(path, lambda p: True) == 99


def _brute_force(layers, capacity):
    best = None
    for alloc in itertools.product(*layers):
        err = sum(o.error for o in alloc)
        if sum(o.nbytes for o in alloc) <= capacity + 1e-9 and (best is None or err < best[0] - 1e-12):
            best = (err, [o.bits for o in alloc])
    return best


def test_best_within_budget_is_the_exact_knapsack() -> None:
    """LeNet-300-like sizes (one layer 88% of the weights): the exact solution spends the budget that cutting the
    Lagrangian path leaves unused, and matches brute force."""
    rng = np.random.default_rng(0)
    sizes = [235200.0, 30000.0, 1000.0]
    layers = []
    for n, scale in zip(sizes, (1.0, 3.0, 10.0)):
        errs = np.sort(rng.uniform(0.1, 1.0, 6))[::-1] * scale * 2.0 ** -np.arange(6)
        layers.append([Option(b, n * b / 8 + 64, float(e)) for b, e in zip((2, 3, 4, 5, 6, 8), errs)])
    for budget in (2.5, 3.3, 4.0, 5.7):
        capacity = budget_bytes(layers, budget)
        assert capacity == pytest.approx(sum(n * budget / 8 + 64 for n in sizes))
        alloc = best_within_budget(layers, capacity)
        err, _ = _brute_force(layers, capacity)
        chosen = [next(o for o in opts if o.bits == b) for opts, b in zip(layers, alloc)]
        assert sum(o.error for o in chosen) <= err * (1 + 1e-9)
        assert sum(o.nbytes for o in chosen) <= capacity
    assert best_within_budget(layers, 1000.0) is None


def test_a_layer_without_options_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one option"):
        allocation_path([[Option(4, 10, 0.1)], []])
