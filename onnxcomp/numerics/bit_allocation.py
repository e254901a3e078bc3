"""Per-layer bit allocation: one width per layer, fewest bytes under a fidelity bound or best fidelity in a budget.

Every layer ``l`` offers options ``(bits, bytes_l(b), error_l(b))``; ``error`` is an additive proxy of what the
layer's compression does to the model's outputs (the passes use the layer's relative output error from its
input Hessian, scaled by the layer's measured sensitivity: the model-output distortion when that layer alone is
compressed). Minimising ``sum_l error_l(b_l)`` subject to ``sum_l bytes_l(b_l) <= B`` is a multiple-choice
knapsack; its Lagrangian relaxation ``min sum_l error_l + lambda * bytes_l`` is solved exactly, for every
``lambda`` at once, by walking the lower convex hulls of the layers' (bytes, error) curves (Shoham & Gersho 1988,
the bit allocation of HAWQ-V3 and of rate-distortion codecs):

    start with every layer at its widest option;
    repeat: narrow the layer whose next hull step costs the least error per byte saved.

:func:`allocation_path` returns that walk, from widest to narrowest; bytes fall monotonically along it and the
proxy error rises. :func:`cheapest_feasible` bisects the path with a real check (e.g. a
:class:`onnxcomp.measure.evaluator.WeightEvaluator` bound), assuming that a point beyond an infeasible one is infeasible
too; :func:`within_budget` takes the first point that fits a byte budget. Under a mean-width budget
:func:`best_within_budget` solves the knapsack exactly (dynamic programming over the budget), which matters when
a few layers of very different sizes make the path's steps coarse.

The driver the passes share (pricing every layer at every width, measuring sensitivities, checking the bound on
the model) is :func:`onnxcomp.passes.width_search.search_widths`; this module is the pure combinatorics.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Option:
    bits: int
    nbytes: float
    error: float


def lower_hull(options: Sequence[Option]) -> list[Option]:
    """The options on the lower convex hull of (bytes, error), from most bytes to fewest.

    Options that cost more bytes for no less error are dropped, and so are those above the chord of their
    neighbours: a Lagrangian solution never picks them.
    """
    # Fewest bytes first; for equal bytes the lowest error; then the monotone chain of the lower hull.
    pts = sorted(options, key=lambda o: (o.nbytes, o.error))
    hull: list[Option] = []
    for p in pts:
        if hull and p.error >= hull[-1].error:  # not better than something cheaper
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the chord a-p: drop it (cross product of (b - a) and (p - a)).
            cross = (b.nbytes - a.nbytes) * (p.error - a.error) - (b.error - a.error) * (p.nbytes - a.nbytes)
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull[::-1]


def allocation_path(layers: Sequence[Sequence[Option]]) -> list[list[int]]:
    """Allocations (the chosen bits of every layer) from all-widest to all-narrowest, by least error per byte."""
    hulls = [lower_hull(opts) for opts in layers]
    if any(not h for h in hulls):
        raise ValueError("every layer needs at least one option")
    at = [0] * len(hulls)
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        h = hulls[i]
        if at[i] + 1 < len(h):
            saved = h[at[i]].nbytes - h[at[i] + 1].nbytes
            added = h[at[i] + 1].error - h[at[i]].error
            heapq.heappush(heap, (added / saved if saved > 0 else float("inf"), i))

    for i in range(len(hulls)):
        push(i)
    path = [[h[0].bits for h in hulls]]
    while heap:
        _, i = heapq.heappop(heap)
        at[i] += 1
        path.append([h[a].bits for h, a in zip(hulls, at)])
        push(i)
    return path


def cheapest_feasible(path: Sequence[Sequence[int]], feasible: Callable[[Sequence[int]], bool]) -> int | None:
    """Index of the last feasible point of ``path`` by bisection (``feasible`` is called O(log len) times);
    None when even the first point is infeasible."""
    if not feasible(path[0]):
        return None
    lo, hi = 0, len(path)  # path[lo] feasible; path[hi] infeasible or past the end
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if feasible(path[mid]):
            lo = mid
        else:
            hi = mid
    return lo


def best_within_budget(layers: Sequence[Sequence[Option]], capacity: float,
                       resolution: int = 4096) -> list[int] | None:
    """The allocation of least total error whose bytes (``sum nbytes``) are at most ``capacity``: the
    multiple-choice knapsack solved exactly by dynamic programming over the budget, in ``resolution`` steps (each
    option's bytes rounded up, so the result never exceeds the budget). None when even the cheapest options do
    not fit.

    The Lagrangian path (:func:`allocation_path`) only visits hull points, and with few layers of very different
    sizes its first point under a budget can fall far below it (LeNet-300: 3.12 bits under a 4-bit budget); the
    exact solution spends the whole budget.
    """
    if capacity <= 0:
        return None
    unit = capacity / resolution
    inf = float("inf")
    best = np.zeros(resolution + 1)  # least error of the layers so far within c units
    picks = []
    for opts in layers:
        nxt = np.full(resolution + 1, inf)
        choice = np.full(resolution + 1, -1, dtype=np.int16)
        for k, o in enumerate(opts):
            c = int(np.ceil(o.nbytes / unit - 1e-9))
            if c > resolution:
                continue
            cand = np.full(resolution + 1, inf)
            cand[c:] = best[:resolution + 1 - c] + o.error
            better = cand < nxt
            nxt[better], choice[better] = cand[better], k
        best = nxt
        picks.append(choice)
    if not np.isfinite(best[-1]):
        return None
    alloc, c = [], resolution
    for opts, choice in zip(reversed(layers), reversed(picks)):
        o = opts[int(choice[c])]
        alloc.append(o.bits)
        c -= int(np.ceil(o.nbytes / unit - 1e-9))
    return alloc[::-1]


def budget_bytes(layers: Sequence[Sequence[Option]], budget: float) -> float:
    """The bytes every layer takes at the mean width ``budget``: its option at that width, interpolated between
    the nearest widths it offers (so ``budget: 4`` is "as many bytes as uniform 4 bits")."""
    total = 0.0
    for opts in layers:
        by_bits = sorted((o.bits, o.nbytes) for o in opts)
        bits = [b for b, _ in by_bits]
        total += float(np.interp(budget, bits, [n for _, n in by_bits]))
    return total


def entropy_bytes(symbols: np.ndarray) -> float:
    """Bytes of ``symbols`` (non-negative ints) at their empirical entropy, which Huffman coding approaches."""
    counts = np.bincount(np.asarray(symbols).ravel())
    p = counts[counts > 0] / max(symbols.size, 1)
    return float(-(p * np.log2(p)).sum() * symbols.size / 8)
