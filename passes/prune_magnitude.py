"""Magnitude pruning of layer kernels, with per-layer thresholds found automatically and one-shot compensation.

Rules:
1. Prunable: weight-table entries with role ``weight`` (Conv/ConvTranspose/Gemm/MatMul kernels, RNN W/R) of at
   least ``min_elements`` values, held as main-graph initializers (run ``fold_constants`` first for Paddle-style
   Constant weights), not excluded by name (``exclude``: glob patterns on the layer or weight name).
2. Within a layer, the weights of smallest score go first. ``criterion: magnitude`` scores ``|w|`` (Han et al.,
   "Learning both Weights and Connections", 2015); ``activation`` scores ``|w| * sqrt(E[x^2])`` with ``x`` the
   input the weight multiplies on the calibration data (Wanda, Sun et al. 2023: a weight on an input that is
   always small changes the output little, however large it is). Weights whose layer has no input statistics
   fall back to ``|w|``. In the ``deep-compression`` chain magnitude gives the smaller files (15 generations:
   ResCNN 14.9x vs 13.4x, LeNet-300 22.7x vs 15.9x at similar accuracy): the kept large weights cluster into
   fewer levels.
   How many:
   - ``global``: one threshold over all prunable layers, at which ``sparsity`` of their weights fall;
   - ``layer``: per layer ``sparsity`` (``layer_sparsity`` globs override it), or ``|w| < quality * std(W)``;
   - ``auto`` (OLMP): per-layer sparsities minimising the number of stored weights subject to the fidelity
     bound (``metric``, ``max_drop``) on the calibration feeds, by negatively correlated search (``search.py``)
     warm-started from a per-layer sensitivity scan. ``start: scaled`` (default): the largest sparsity each
     layer tolerates alone, scaled down until the whole model is feasible. ``start: allocation``: a
     rate-distortion allocation over the layers' (kept weights, model-output distortion) curves, bisected
     against the bound (``_allocated_start``); it prunes more under the same bound on some models and not on
     others (benchmark docstring), so it is not the default;
   - ``uniform``: the largest single sparsity for every layer that keeps the same bound (bisection), the
     baseline that ``auto`` is measured against.
3. ``compensate``: the kept weights of each pruned layer are re-fitted to preserve the layer's output on the
   calibration inputs (``obs.py``: per-row least squares with the input Hessian), layer by layer in graph order,
   each layer seeing the already-compressed layers before it (no retraining). In ``auto`` mode candidates are
   scored with compensation when that is cheap (Hessians of the original model), so the search sees what will
   be applied. A compensated layer with a bias (one is added to a Conv or Gemm without) is fitted on the
   centered input statistics and its bias absorbs the change of its output mean (``bias_correction.py``);
   weights on inputs that are constant on the calibration data then cost nothing to remove. With
   ``criterion: activation`` such layers score weights by the input's standard deviation instead of its RMS.
4. The compensated searches check the bound on samples the compensation was not fitted on (fitted and judged on
   the same samples it looks better than it is), cross-fitted over ``round(1 / validation)`` folds so that
   every calibration sample counts towards the bound (see ``_folds``).
Pruned weights are exact zeros; storage (CSR, Huffman) is decided later by ``pack_weights``.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from onnxcomp.calibration.hessian import RETARGET_FOLDS, LayerHessian, collect_hessians, pooled, supports
from onnxcomp.errors import RecipeError
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Weight, weight_table
from onnxcomp.measure.evaluator import FidelityBound, Metric, WeightEvaluator
from onnxcomp.numerics.bias_correction import LayerBias, centered_where_biased, discard_unused, layer_bias
from onnxcomp.numerics.bit_allocation import Option, allocation_path, cheapest_feasible
from onnxcomp.numerics.ncs import ncs_minimize
from onnxcomp.numerics.obs import DAMP, Factors, pruning_flops
from onnxcomp.numerics.retarget import layer_output_error, retarget_kept
from onnxcomp.passes.base import Pass, PassContext, PassResult, Requirement, check_number
from onnxcomp.progress import Progress

_SCAN = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
_FINE_SCAN = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)  # start: allocation
_STEP = 0.005  # searched sparsities are rounded to this grid, so that candidates share compensated layers
_CACHE_BYTES = 256 << 20  # pruned layers the search keeps for reuse by later candidates (least recently used go)
_CHEAP_FLOPS = 5e9  # compensation cost per candidate below which the search scores compensated weights
# (with the factors of the sequential form computed once per layer and fold: obs.Factors)


@dataclass(frozen=True)
class MagnitudePruneConfig:
    mode: Literal["auto", "uniform", "global", "layer"] = "auto"
    criterion: Literal["magnitude", "activation"] = "magnitude"
    sparsity: float = 0.8
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    quality: float | None = None
    exclude: tuple[str, ...] = ()
    min_elements: int = 256
    compensate: bool = True
    damp: float = DAMP
    metric: Metric = "auto"
    max_drop: float = 0.005
    max_sparsity: float = 0.99
    population: int = 6
    generations: int = 30  # LeNet-300 in deep-compression: 15 -> 22.7x, 30 -> 28.9x, 60 -> 28.1x
    validation: float = 0.5
    start: Literal["scaled", "allocation"] = "scaled"  # auto: the search's warm start (module docstring, rule 2)

    def __post_init__(self) -> None:
        check_number("damp", self.damp, minimum=0, maximum=1, open_min=True, open_max=True)
        check_number("min_elements", self.min_elements, minimum=0, integer=True)
        for name, s in [("sparsity", self.sparsity), ("max_sparsity", self.max_sparsity),
                        *[(f"layer_sparsity[{k}]", v) for k, v in self.layer_sparsity.items()]]:
            if not 0.0 <= s < 1.0:
                raise RecipeError(f"{name} must be in [0, 1), got {s}")
        if self.quality is not None and self.quality < 0:
            raise RecipeError(f"quality must be >= 0, got {self.quality}")
        if self.max_drop < 0:
            raise RecipeError(f"max_drop must be >= 0, got {self.max_drop}")
        if self.start not in ("scaled", "allocation"):
            raise RecipeError(f"start must be 'scaled' or 'allocation', got {self.start!r}")
        if not 0.0 < self.validation < 1.0:
            raise RecipeError(f"validation must be in (0, 1), got {self.validation}")
        if self.population < 2 or self.generations < 0:
            raise RecipeError("population must be >= 2 and generations >= 0")


class PruneMagnitude(Pass):
    name = "prune_magnitude"
    Config = MagnitudePruneConfig
    description = "magnitude pruning: global, per layer, or per-layer thresholds searched under a fidelity bound"

    def requirements(self) -> list[Requirement]:
        cfg = self.config
        searched = cfg.mode in ("auto", "uniform")
        if not (searched or cfg.compensate or cfg.criterion == "activation"):
            return []
        why = f"{cfg.mode} thresholds" if searched else "compensation" if cfg.compensate else "criterion: activation"
        return [Requirement("calibration", why, "set mode: layer/global, compensate: false and criterion: magnitude")]

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        cfg = self.config
        result = PassResult(modified=False)
        layers = _prunable(model, cfg, result)
        if not layers:
            return result
        biases: dict[str, LayerBias] = {}
        if cfg.compensate:
            biases = {w.name: b for w in layers if supports(w) and (b := layer_bias(model, w, create=True))}
        inputs = {}
        if cfg.criterion == "activation":
            inputs = centered_where_biased(collect_hessians(model, layers, ctx.calibration), biases)
        pruner = _Pruner(layers, inputs, biases)
        del inputs
        if cfg.mode == "global":
            counts = pruner.global_counts(cfg.sparsity)
        elif cfg.mode == "layer":
            counts = [pruner.layer_count(i, cfg) for i in range(len(layers))]
        else:
            counts = self._search(model, pruner, ctx, result, uniform=cfg.mode == "uniform")
        final = pruner.apply(model, counts, ctx.calibration if cfg.compensate else None, cfg.damp, result.notes)
        discard_unused(model, list(biases.values()))
        result.modified = any(c > 0 for c in counts)
        total = sum(w.size for w in layers)
        zeros = sum(counts)
        result.summary = (f"{len(layers)} layers, {zeros}/{total} weights pruned ({zeros / total:.1%})"
                          + (f"; {result.summary}" if result.summary else ""))
        for w, k, err in zip(layers, counts, final):
            result.records.append({"layer": w.layer, "weight": w.name, "params": w.size,
                                   "sparsity": k / w.size, "output_error": err})
        return result

    def _search(self, model: Model, pruner: _Pruner, ctx: PassContext, result: PassResult,
                uniform: bool) -> list[int]:
        cfg = self.config
        bound = FidelityBound(cfg.metric, cfg.max_drop)
        folds = self._folds(model, pruner, ctx.calibration, bound)
        cache = _LayerCache(_CACHE_BYTES)
        factors = Factors()  # the sequential form's factor of each fold's Hessians, shared by all candidates

        def weights_for(fold: int, hessians: dict[str, LayerHessian], sparsities: np.ndarray
                        ) -> dict[str, np.ndarray]:
            feeds = {}
            for i, s in enumerate(sparsities):
                k = pruner.count(i, s, _STEP)
                layer = cache.get((fold, i, k))
                if layer is None:
                    layer = pruner.pruned(i, k, hessians.get(pruner.layers[i].name), cfg.damp, factors)
                    cache.put((fold, i, k), layer)
                feeds.update(layer)
            return feeds

        def over_folds(s: np.ndarray, score) -> np.ndarray:
            """``score(evaluator, weights)`` (a number or a tuple) averaged over every fold's check samples."""
            runs = [(np.asarray(score(ev, weights_for(f, hs, s))), ev.data.num_samples)
                    for f, (hs, ev) in enumerate(folds)]
            return sum(v * n for v, n in runs) / sum(n for _, n in runs)

        def violation(s: np.ndarray) -> float:
            return float(over_folds(s, WeightEvaluator.drop)) - cfg.max_drop

        def measure(s: np.ndarray) -> tuple[float, float]:
            """(violation of the bound, model-output distortion) from one run per fold: ``start: allocation``."""
            drop, distortion = over_folds(s, WeightEvaluator.measure)
            return float(drop) - cfg.max_drop, float(distortion)

        evaluator = folds[0][1]  # its count of evaluations is the number of candidates tried
        n = len(pruner.layers)
        sizes = np.array([w.size for w in pruner.layers], dtype=np.float64)
        if uniform:
            lo, hi = 0.0, cfg.max_sparsity
            for _ in range(10):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if violation(np.full(n, mid)) <= 0 else (lo, mid)
            result.summary = (f"uniform: sparsity {lo:.3f} in {evaluator.evaluations} evaluations "
                              f"({evaluator.metric} drop <= {cfg.max_drop})")
            return [pruner.count(i, lo, _STEP) for i in range(n)]
        progress = Progress(range(n), "prune: sensitivity", ctx.progress)
        if cfg.start == "allocation":
            x0, high = _allocated_start(sizes, cfg.max_sparsity, measure, violation, progress)
        else:
            x0, high = _scaled_start(n, cfg.max_sparsity, violation, progress)
        found = ncs_minimize(
            cost=lambda s: float(np.sum(sizes * (1.0 - s))),
            violation=violation,
            x0=x0,
            low=np.zeros(n),
            high=high,
            population=cfg.population,
            generations=cfg.generations,
            seed=ctx.seed,
            progress=Progress(None, "prune: search", ctx.progress, total=cfg.generations).update_to,
        )
        result.summary = (f"auto: {evaluator.evaluations} evaluations ({evaluator.metric} drop <= {cfg.max_drop}), "
                          f"{cfg.start} start, "
                          f"compensated search: {f'{len(folds)}-fold cross-fitted' if len(folds) > 1 else 'no'}")
        return [pruner.count(i, s, _STEP) for i, s in enumerate(found.best)]

    def _folds(self, model: Model, pruner: _Pruner, data, bound: FidelityBound
               ) -> list[tuple[dict[str, LayerHessian], WeightEvaluator]]:
        """(Hessians, evaluator) pairs: the bound is checked on samples the compensation was not fitted on.

        With compensation the calibration feeds are cross-fitted: ``round(1 / validation)`` folds, each checked
        on its ``validation`` share with compensation fitted on the rest, so that every sample counts towards
        the bound. On a few hundred samples one changed prediction is a sizeable part of a ``max_drop`` like
        0.01, and a search against a single small check set tunes itself to that set (LeNet-300: -0.9 points
        on the test set under a bound of 0.01 with one half-split, -0.2 cross-fitted). Without compensation all
        feeds check the bound.
        """
        cfg = self.config
        names = [w.name for w in pruner.layers]
        if not (cfg.compensate and pruner.compensation_flops(0.8) < _CHEAP_FLOPS):
            return [({}, WeightEvaluator(model, names, data, bound))]
        splits = data.folds(round(1 / cfg.validation))
        # One pass over the data: each fold's own statistics, pooled into every other fold's fit set.
        parts = [collect_hessians(model, pruner.layers, check) for _, check in splits]
        folds = []
        for i, (_, check) in enumerate(splits):
            # with one fold only (fewer feeds than folds), the fit is the check set itself
            fitted = {name: pooled([p[name] for j, p in enumerate(parts) if j != i] or [parts[i][name]])
                      for name in parts[i]}
            hessians = centered_where_biased(fitted, pruner.biases)
            biases = [pruner.biases[name].name for name in hessians if name in pruner.biases]
            folds.append((hessians, WeightEvaluator(model, names + biases, check, bound)))
        return folds


class _LayerCache:
    """Pruned layers by (fold, layer, count), least recently used dropped beyond ``limit`` bytes: candidates of a
    search share most of their layers, but keeping every one grows with the number of candidates (VGG's
    400k-weight classifier: 1.6 MB per candidate sparsity and fold)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.nbytes = 0
        self._items: OrderedDict[tuple[int, int, int], dict[str, np.ndarray]] = OrderedDict()

    def get(self, key: tuple[int, int, int]) -> dict[str, np.ndarray] | None:
        if key in self._items:
            self._items.move_to_end(key)
        return self._items.get(key)

    def put(self, key: tuple[int, int, int], value: dict[str, np.ndarray]) -> None:
        self._items[key] = value
        self.nbytes += sum(a.nbytes for a in value.values())
        while self.nbytes > self.limit and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.nbytes -= sum(a.nbytes for a in old.values())


class _Pruner:
    """Per-layer score order, computed once; ``count`` weights of layer ``i`` are its lowest-scored ones.

    ``inputs`` (weight name -> its layer-input Hessian) switches the score from ``|w|`` to ``|w| * sqrt(E[x^2])``.
    """

    def __init__(self, layers: list[Weight], inputs: dict[str, LayerHessian] | None = None,
                 biases: dict[str, LayerBias] | None = None):
        self.layers = layers
        self.biases = biases or {}
        self.original = [w.array.copy() for w in layers]
        self.order = [np.argsort(_score(a, (inputs or {}).get(w.name)).ravel(), kind="stable")
                      for w, a in zip(layers, self.original)]

    def count(self, i: int, sparsity: float, step: float = 0.0) -> int:
        s = float(np.clip(sparsity, 0.0, 1.0))
        if step:
            s = np.floor(s / step) * step
        return int(np.floor(s * self.layers[i].size))

    def layer_count(self, i: int, cfg: MagnitudePruneConfig) -> int:
        w = self.layers[i]
        for pattern, s in cfg.layer_sparsity.items():
            if fnmatch.fnmatchcase(w.layer, pattern) or fnmatch.fnmatchcase(w.name, pattern):
                return self.count(i, s)
        if cfg.quality is not None:  # Han et al.: threshold = quality x std of the layer's weights
            a = self.original[i]
            return int(np.count_nonzero(np.abs(a) < cfg.quality * float(np.std(a))))
        return self.count(i, cfg.sparsity)

    def global_counts(self, sparsity: float) -> list[int]:
        mags = np.concatenate([np.abs(a).ravel() for a in self.original])
        k = int(np.floor(sparsity * mags.size))
        if k == 0:
            return [0] * len(self.layers)
        threshold = np.partition(mags, k - 1)[k - 1]
        return [int(np.count_nonzero(np.abs(a) <= threshold)) for a in self.original]

    def mask(self, i: int, count: int) -> np.ndarray:
        keep = np.ones(self.layers[i].size, dtype=bool)
        keep[self.order[i][:count]] = False
        return keep.reshape(self.original[i].shape)

    def pruned(self, i: int, count: int, hessian: LayerHessian | None, damp: float,
               factors: Factors | None = None) -> dict[str, np.ndarray]:
        """Layer ``i`` with its ``count`` lowest-scored weights pruned (and compensated with ``hessian``), and its
        corrected bias when the Hessian is centered: tensor name -> values."""
        a = self.original[i]
        name = self.layers[i].name
        keep = self.mask(i, count)
        if hessian is None:
            return {name: np.where(keep, a, 0).astype(a.dtype)}
        new = retarget_kept(hessian, a, keep, damp, factors=factors) if count else a
        out = {name: new}
        if hessian.is_centered:
            bias = self.biases[name]
            out[bias.name] = bias.corrected(hessian, a, new)
        return out

    def compensation_flops(self, sparsity: float) -> float:
        """Flops of compensating every layer at ``sparsity`` once more in a search (factors already memoised)."""
        total = 0.0
        for w in self.layers:
            if supports(w):
                rows = w.shape[w.layout.out_axis]
                d = w.size // rows  # fan-in (per group; the sequential form costs rows * d^2 over all groups)
                total += pruning_flops(np.full(rows, (1 - sparsity) * d), d, factored=True)
        return total

    def apply(self, model: Model, counts: list[int], calibration, damp: float,
              notes: list[str]) -> list[float | None]:
        """Prune every layer; with calibration, compensate in graph order on already-compressed inputs,
        re-fitting each layer to the original model's outputs. Layers fitted on few samples are noted."""
        errors: list[float | None] = []
        reference = model.copy() if calibration is not None else None
        for i, (w, k) in enumerate(zip(self.layers, counts)):
            keep = self.mask(i, k)
            hessian = None
            if calibration is not None and k > 0 and supports(w):
                hessian = collect_hessians(model, [w], calibration, reference=reference,
                                           folds=RETARGET_FOLDS).get(w.name)
            if hessian is None:
                w.set(np.where(keep, self.original[i], 0).astype(self.original[i].dtype))
                errors.append(None)
                continue
            if (note := hessian.few_samples(w.layer)) is not None:
                notes.append(note)
            bias = self.biases.get(w.name)
            if bias is not None:
                hessian = hessian.centered()
            new = retarget_kept(hessian, self.original[i], keep, damp)
            errors.append(layer_output_error(hessian, self.original[i], new))
            w.set(new)
            if bias is not None:
                bias.absorb(hessian, self.original[i], new)
        return errors


def _scaled_start(n: int, max_sparsity: float, violation: Callable[[np.ndarray], float],
                  layers: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """``start: scaled``: (warm start, upper box of the search).

    Sensitivity: the largest scanned sparsity each layer tolerates alone, scanned from the top down. (Not a
    bisection: on a few hundred samples the metric is not monotonic in the sparsity, and one unlucky midpoint
    would cap the layer far too low.) The search may go one grid step beyond it. The start is that profile
    scaled down until the model as a whole is feasible.
    """
    grid = sorted((s for s in _SCAN if s <= max_sparsity), reverse=True)
    limit = np.zeros(n)
    high = np.zeros(n)
    for i in layers:
        for j, s in enumerate(grid):
            x = np.zeros(n)
            x[i] = s
            if violation(x) <= 0:
                limit[i], high[i] = s, grid[max(j - 1, 0)]
                break
        else:
            high[i] = grid[-1]
    x0 = _scaled_to_feasible(limit, violation)
    return x0, np.maximum(high, x0)


def _allocated_start(sizes: np.ndarray, max_sparsity: float,
                     measure: Callable[[np.ndarray], tuple[float, float]],
                     violation: Callable[[np.ndarray], float],
                     layers: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """``start: allocation``: (warm start, upper box of the search).

    Each layer is pruned alone at every sparsity of a finer grid, which gives its limit (as for ``scaled``) and
    its rate-distortion curve (kept weights, model-output distortion). The curves are walked by least
    distortion per weight removed (``bit_allocation.allocation_path``, the distortions taken as additive) and
    the walk is bisected for its last point that keeps the bound; where that prunes nothing, the scaled limits
    start the search. The allocation spends the bound where it buys the most on the calibration data (ResCNN:
    8,198 weights kept against 11,927 for the scaled limits), which does not always carry over to the test data
    or to the search's end point: see the benchmark's docstring.
    """
    n = len(sizes)
    grid = np.array([s for s in _FINE_SCAN if s <= max_sparsity])
    limit = np.zeros(n)
    high = np.full(n, grid[0])
    curves = []
    for i in layers:
        curve = [Option(0, sizes[i], 0.0)]  # Option.bits holds 1 + the grid index; 0 is "not pruned"
        for j, s in enumerate(grid):
            x = np.zeros(n)
            x[i] = s
            v, d = measure(x)
            curve.append(Option(j + 1, sizes[i] * (1 - s), d))
            if v <= 0:
                limit[i], high[i] = s, grid[min(j + 1, len(grid) - 1)]
        curves.append(curve)
    values = np.concatenate([[0.0], grid])
    path = allocation_path(curves)
    at = cheapest_feasible(path, lambda alloc: violation(values[np.asarray(alloc)]) <= 0)
    x0 = values[np.asarray(path[at])] if at else _scaled_to_feasible(limit, violation)
    return x0, np.maximum(high, x0)


def _scaled_to_feasible(limit: np.ndarray, violation: Callable[[np.ndarray], float]) -> np.ndarray:
    """``limit`` scaled down (bisection) until the model as a whole is feasible; no pruning when nothing is (the
    sensitivity scan can be optimistic)."""
    lo, hi = 0.0, 1.0
    for _ in range(7):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if violation(mid * limit) <= 0 else (lo, mid)
    x0 = lo * limit
    return x0 if violation(x0) <= 0 else np.zeros(len(limit))


def _score(a: np.ndarray, hessian: LayerHessian | None) -> np.ndarray:
    """``|w|``, or ``|w| * sqrt(E[x^2])`` of the input it multiplies (the diagonal of ``hessian``)."""
    score = np.abs(a).astype(np.float64)
    if hessian is None:
        return score
    energy = np.sqrt(np.maximum(np.diagonal(hessian.H, axis1=1, axis2=2), 0.0))  # (groups, d)
    return hessian.from_matrix(hessian.to_matrix(score) * energy[:, None, :])


def _prunable(model: Model, cfg: MagnitudePruneConfig, result: PassResult) -> list[Weight]:
    layers = []
    main_nodes = {id(n) for n in model.graph.nodes}
    for w in weight_table(model):
        if w.role != "weight":
            continue
        if any(fnmatch.fnmatchcase(w.layer, p) or fnmatch.fnmatchcase(w.name, p) for p in cfg.exclude):
            result.skipped.append((w.layer, "excluded by name"))
        elif w.size < cfg.min_elements:
            result.skipped.append((w.layer, f"fewer than {cfg.min_elements} weights"))
        elif w.source != "initializer":
            result.skipped.append((w.layer, "weight held in a Constant node (run fold_constants first)"))
        elif any(id(u.node) not in main_nodes for u in w.uses):
            result.skipped.append((w.layer, "weight used inside a subgraph"))
        elif w.shared and len({u.node.op for u in w.uses}) > 1:
            result.skipped.append((w.layer, "weight shared by different kinds of layers"))
        else:
            layers.append(w)
    return layers
