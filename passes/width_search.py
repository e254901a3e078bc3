"""The per-layer width search that weight sharing and quantization share (``bits: auto``).

:func:`search_widths` prices every layer at every width with a pass-given ``candidate`` function, measures each
layer's sensitivity with one :class:`~onnxcomp.measure.evaluator.WeightEvaluator` (the model-output distortion
when that layer alone takes the narrowest width), and picks a point of the Lagrangian path of
:mod:`onnxcomp.numerics.bit_allocation`: the fewest bytes whose fidelity bound holds on the calibration data, or
the least error within a mean-width budget (the exact knapsack, then checked on the model against the uniform
width and single swaps). :class:`WidthConfig` holds the config fields the two passes share.

This module is not a pass: it is the search the width-choosing passes of this package run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

import numpy as np

from onnxcomp.calibration.hessian import LayerHessian, collect_hessians
from onnxcomp.errors import RecipeError
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Weight
from onnxcomp.measure.evaluator import FidelityBound, Metric, WeightEvaluator
from onnxcomp.numerics.bias_correction import LayerBias
from onnxcomp.numerics.bit_allocation import (
    Option,
    allocation_path,
    best_within_budget,
    budget_bytes,
    cheapest_feasible,
)
from onnxcomp.numerics.retarget import layer_output_error
from onnxcomp.passes.base import PassContext, PassResult, Requirement
from onnxcomp.progress import Progress

# (weight, its array, bits, its input Hessian or None, context) -> (the weight at that width, its stored bytes)
Candidate = Callable[["Weight", np.ndarray, int, "LayerHessian | None", "PassContext"], tuple[np.ndarray, float]]


@dataclass(frozen=True)
class WidthConfig:
    """Config fields of a pass that gives each layer a width (weight sharing, quantization); passes extend it."""

    bits: int | Literal["auto"] = 8  # auto: a width per layer by search_widths
    bits_per_layer: dict[str, int] = field(default_factory=dict)  # layer/weight name glob -> bits (first match)
    choices: tuple[int, ...] = (2, 3, 4, 5, 6, 8)  # bits: auto: the widths a layer may get
    metric: Metric = "auto"  # bits: auto: the fidelity bound's metric (onnxcomp.measure.evaluator)
    max_drop: float = 0.005  # bits: auto: the largest drop of the metric the pass may cause
    budget: float | None = None  # bits: auto: instead of the bound, the bytes uniform storage at this width takes

    def check_widths(self, unit: str = "") -> None:
        """Raise RecipeError naming the first invalid width option (``unit`` explains what a width means)."""
        if self.bits != "auto":
            check_bits("bits", self.bits, unit)
        for pattern, bits in self.bits_per_layer.items():
            check_bits(f"bits_per_layer[{pattern!r}]", bits, unit)
        if not self.choices:
            raise RecipeError("choices must list at least one width")
        for bits in self.choices:
            check_bits("choices", bits, unit)
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) or self.max_drop < 0:
            raise RecipeError(f"max_drop must be a number >= 0, got {self.max_drop!r}")
        if self.budget is not None and not 1 <= self.budget <= 8:
            raise RecipeError(f"budget must be an average width from 1 to 8 bits, got {self.budget}")

    def width_requirements(self) -> list[Requirement]:
        """``bits: auto`` measures fidelity: without calibration data the pass fails before any work."""
        return [Requirement("calibration", "bits: auto", "give fixed bits")] if self.bits == "auto" else []

    def fixed_bits(self, w: Weight) -> int | None:
        """The width ``bits_per_layer`` or an integer ``bits`` gives ``w``; None when it is to be allocated."""
        for pattern, bits in self.bits_per_layer.items():
            if matches(w, pattern):
                return bits
        return None if self.bits == "auto" else self.bits


def check_bits(what: str, bits: Any, unit: str = "") -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise RecipeError(f"{what} must be an integer from 1 to 8{unit}, got {bits!r}")


def matches(w: Weight, pattern: str) -> bool:
    """Whether a layer or weight name glob matches the weight."""
    return fnmatchcase(w.layer, pattern) or fnmatchcase(w.name, pattern)


def search_widths(
    model: Model,
    items: Sequence[tuple[Weight, np.ndarray]],
    ctx: PassContext,
    result: PassResult,
    choices: Sequence[int],
    candidate: Candidate,
    bound: FidelityBound,
    budget: float | None = None,
    hessians: dict[str, LayerHessian] | None = None,
    biases: dict[str, LayerBias] | None = None,
) -> tuple[dict[str, int], str]:
    """A width from ``choices`` for each weight of ``items``, and a one-line summary.

    Each layer is priced at every width by ``candidate``; its error there is its relative output error (input
    Hessian, else relative squared weight error) times its sensitivity, the model-output distortion
    (:meth:`WeightEvaluator.distortion`) when that layer alone takes the narrowest width. Then either the least
    total error within the bytes that the mean width ``budget`` takes (:func:`budget_bytes`,
    :func:`best_within_budget`) or the path of :func:`allocation_path` bisected for the fewest bytes whose
    ``bound`` holds on the calibration data.
    Weights the evaluator cannot feed (held in Constant nodes or subgraphs) get the widest choice, recorded in
    ``result.skipped``. ``hessians`` (the unmodified model's, keyed by weight name) saves collecting them again
    when the pass already has them. ``biases`` (weight name -> its layer's bias, with a centered Hessian) are fed
    corrected for each candidate, as the pass will apply them.
    """
    choices = sorted(set(choices))
    main = {id(n) for n in model.graph.nodes}
    chosen: dict[str, int] = {}
    searchable = []
    for w, a in items:
        if w.source == "initializer" and all(id(u.node) in main for u in w.uses):
            searchable.append((w, a))
        else:
            chosen[w.name] = choices[-1]
            result.skipped.append((w.name, f"widths: cannot evaluate a weight held in a Constant node or a subgraph; "
                                           f"it gets the widest choice, {choices[-1]} bits"))
    if not searchable:
        return chosen, ""
    if hessians is None:
        hessians = collect_hessians(model, [w for w, _ in searchable if not w.shared], ctx.calibration)
    biases = {name: b for name, b in (biases or {}).items()
              if hessians.get(name) is not None and hessians[name].is_centered}
    evaluator = WeightEvaluator(model, [w.name for w, _ in searchable] + [b.name for b in biases.values()],
                                ctx.calibration, bound)
    candidates: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    options = []
    for w, a in Progress(searchable, "widths", ctx.progress):
        h = hessians.get(w.name)
        costs = []
        for bits in choices:
            values, nbytes = candidate(w, a, bits, h, ctx)
            candidates[(w.name, bits)] = {w.name: values}
            if w.name in biases:
                candidates[(w.name, bits)][biases[w.name].name] = biases[w.name].corrected(h, a, values)
            costs.append((bits, nbytes, output_error(h, a, values)))
        narrowest = costs[0][2]
        scale = (evaluator.distortion(candidates[(w.name, choices[0])]) / narrowest
                 if narrowest > 0 else 0.0)
        options.append([Option(b, n, scale * e) for b, n, e in costs])
    counts = np.array([np.count_nonzero(a) for _, a in searchable], dtype=np.float64)

    def mean_bits(alloc: Sequence[int]) -> float:
        return float(counts @ np.asarray(alloc, dtype=np.float64) / max(counts.sum(), 1.0))

    def feeds(alloc: Sequence[int]) -> dict[str, np.ndarray]:
        return {k: v for (w, _), b in zip(searchable, alloc) for k, v in candidates[(w.name, b)].items()}

    def feasible(alloc: Sequence[int]) -> bool:
        return evaluator.drop(feeds(alloc)) <= bound.max_drop

    def measured(alloc: Sequence[int]) -> float:
        return evaluator.distortion(feeds(alloc))

    def stored(alloc: Sequence[int]) -> float:
        return sum(next(o.nbytes for o in opts if o.bits == b) for opts, b in zip(options, alloc))

    if budget is not None:
        capacity = budget_bytes(options, budget)
        alloc = best_within_budget(options, capacity)
        if alloc is None:
            alloc = [choices[0]] * len(searchable)
            result.skipped.append(("widths", f"budget {budget:g} bits is below the narrowest choice"))
        else:
            alloc = _refine_measured(alloc, options, stored, capacity, measured, choices)
        goal = f"budget: the bytes of {budget:g} bits"
    else:
        path = allocation_path(options)
        at = cheapest_feasible(path, feasible)
        if at is None:
            at = 0
            result.skipped.append(("widths", f"{evaluator.metric} drop > {bound.max_drop:g} even at the widest "
                                             f"choice ({choices[-1]} bits); every layer keeps it"))
        goal = f"{evaluator.metric} drop <= {bound.max_drop:g}"
        alloc = path[at]
    chosen.update({w.name: b for (w, _), b in zip(searchable, alloc)})
    return chosen, (f"bits: auto ({goal}): {mean_bits(alloc):.2f} bits per weight on average, "
                    f"{evaluator.evaluations} evaluations")


def _refine_measured(alloc: list[int], options: Sequence[Sequence[Option]], cost: Callable[[Sequence[int]], float],
                     budget: float, measured: Callable[[Sequence[int]], float], choices: Sequence[int],
                     max_evals: int = 12) -> list[int]:
    """Check the proxy's choice on the model itself: the widest uniform width within the budget (``cost`` of an
    allocation <= ``budget``), and single swaps
    (one layer a step wider, another a step narrower) in order of proxy error, are measured on calibration data
    (model-output distortion); the best measured allocation wins. The per-layer proxy errors are additive only
    approximately (LeNet-300: the proxy prefers 3 bits on the 88%-of-weights layer; measured, the swap is worse)."""
    def proxy(a: Sequence[int]) -> float:
        return sum(next(o.error for o in opts if o.bits == b) for opts, b in zip(options, a))

    fits = [c for c in choices if cost([c] * len(alloc)) <= budget + 1e-9]
    trials = [[fits[-1]] * len(alloc)] if fits else []
    steps = {i: sorted(o.bits for o in opts) for i, opts in enumerate(options)}
    swaps = []
    for i in range(len(alloc)):
        wider = [b for b in steps[i] if b > alloc[i]]
        for j in range(len(alloc)):
            narrower = [b for b in steps[j] if b < alloc[j]]
            if i == j or not wider or not narrower:
                continue
            trial = list(alloc)
            trial[i], trial[j] = wider[0], narrower[-1]
            if cost(trial) <= budget + 1e-9:
                swaps.append((proxy(trial), trial))
    trials += [t for _, t in sorted(swaps)[:max_evals]]
    best, best_err = alloc, measured(alloc)
    for trial in trials:
        if trial != alloc and (err := measured(trial)) < best_err:
            best, best_err = trial, err
    return best


def output_error(h: LayerHessian | None, original: np.ndarray, new: np.ndarray) -> float:
    """The layer's relative output error from its Hessian, else the relative squared weight error."""
    err = layer_output_error(h, original, new) if h is not None else None
    if err is not None:
        return err
    den = float(np.sum(original.astype(np.float64) ** 2))
    return float(np.sum((original.astype(np.float64) - new) ** 2)) / den if den > 0 else 0.0
