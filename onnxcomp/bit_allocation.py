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
:class:`onnxcomp.evaluator.WeightEvaluator` bound), assuming that a point beyond an infeasible one is infeasible
too; :func:`within_budget` takes the first point that fits a byte budget.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass


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


def within_budget(path: Sequence[Sequence[int]], cost: Callable[[Sequence[int]], float], budget: float) -> int | None:
    """Index of the first point of ``path`` whose ``cost`` is at most ``budget``; None when none is."""
    for i, alloc in enumerate(path):
        if cost(alloc) <= budget:
            return i
    return None
