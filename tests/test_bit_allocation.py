"""Bit allocation: lower convex hulls, the greedy Lagrangian path, and bisection along it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxcomp.bit_allocation import Option, allocation_path, cheapest_feasible, lower_hull, within_budget


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


def test_within_budget() -> None:
    path = [[8, 8], [6, 8], [6, 6], [4, 6]]
    assert within_budget(path, lambda p: sum(p) / 2, 6.5) == 2
    assert within_budget(path, lambda p: sum(p) / 2, 2.0) is None


def test_a_layer_without_options_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one option"):
        allocation_path([[Option(4, 10, 0.1)], []])
