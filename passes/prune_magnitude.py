"""Magnitude pruning of layer kernels, with per-layer thresholds found automatically and one-shot compensation.

Rules:
1. Prunable: weight-table entries with role ``weight`` (Conv/ConvTranspose/Gemm/MatMul kernels, RNN W/R) of at
   least ``min_elements`` values, held as main-graph initializers (run ``fold_constants`` first for Paddle-style
   Constant weights), not excluded by name (``exclude``: glob patterns on the layer or weight name).
2. Within a layer, the weights of smallest magnitude go first (Han et al., "Learning both Weights and
   Connections", 2015). How many:
   - ``global``: one threshold over all prunable layers, at which ``sparsity`` of their weights fall;
   - ``layer``: per layer ``sparsity`` (``layer_sparsity`` globs override it), or ``|w| < quality * std(W)``;
   - ``auto`` (OLMP): per-layer sparsities minimising the number of stored weights subject to the fidelity
     bound (``metric``, ``max_drop``) on the calibration feeds, by negatively correlated search (``search.py``)
     started from a per-layer sensitivity scan (the largest sparsity each layer tolerates alone) scaled down
     until the whole model is feasible;
   - ``uniform``: the largest single sparsity for every layer that keeps the same bound (bisection), the
     baseline that ``auto`` is measured against.
3. ``compensate``: the kept weights of each pruned layer are re-fitted to preserve the layer's output on the
   calibration inputs (``obs.py``: per-row least squares with the input Hessian), layer by layer in graph order,
   each layer seeing the already-compressed layers before it (no retraining). In ``auto`` mode candidates are
   scored with compensation when that is cheap (Hessians of the original model), so the search sees what will
   be applied.
4. The searches fit compensation on one part of the calibration feeds and check the bound on the other
   (``validation`` share): compensation fitted and judged on the same samples looks better than it is.
Pruned weights are exact zeros; storage (CSR, Huffman) is decided later by ``pack_weights``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from onnxcomp.errors import PassError
from onnxcomp.evaluator import FidelityBound, Metric, WeightEvaluator
from onnxcomp.hessian import LayerHessian, collect_hessians, supports
from onnxcomp.model import Model
from onnxcomp.obs import prune_compensated
from onnxcomp.pipeline import Pass, PassContext, PassResult
from onnxcomp.progress import Progress
from onnxcomp.search import ncs_minimize
from onnxcomp.weights import Weight, weight_table

_SCAN = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
_STEP = 0.005  # searched sparsities are rounded to this grid, so that candidates share compensated layers
_CHEAP_FLOPS = 5e9  # compensation cost per candidate below which the search scores compensated weights


@dataclass(frozen=True)
class MagnitudePruneConfig:
    mode: Literal["auto", "uniform", "global", "layer"] = "auto"
    sparsity: float = 0.8
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    quality: float | None = None
    exclude: tuple[str, ...] = ()
    min_elements: int = 256
    compensate: bool = True
    damp: float = 0.01
    metric: Metric = "auto"
    max_drop: float = 0.005
    max_sparsity: float = 0.99
    population: int = 6
    generations: int = 15
    validation: float = 0.5

    def __post_init__(self) -> None:
        for name, s in [("sparsity", self.sparsity), ("max_sparsity", self.max_sparsity),
                        *[(f"layer_sparsity[{k}]", v) for k, v in self.layer_sparsity.items()]]:
            if not 0.0 <= s < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {s}")
        if self.quality is not None and self.quality < 0:
            raise ValueError(f"quality must be >= 0, got {self.quality}")
        if self.max_drop < 0:
            raise ValueError(f"max_drop must be >= 0, got {self.max_drop}")
        if not 0.0 < self.validation < 1.0:
            raise ValueError(f"validation must be in (0, 1), got {self.validation}")
        if self.population < 2 or self.generations < 0:
            raise ValueError("population must be >= 2 and generations >= 0")


class PruneMagnitude(Pass):
    name = "prune_magnitude"
    Config = MagnitudePruneConfig
    description = "magnitude pruning: global, per layer, or per-layer thresholds searched under a fidelity bound"

    def check_requirements(self, ctx: PassContext) -> None:
        searched = self.config.mode in ("auto", "uniform")
        if (searched or self.config.compensate) and ctx.calibration is None:
            why = f"{self.config.mode} thresholds" if searched else "compensation"
            raise PassError(f"pass '{self.name}' needs calibration data for {why}: pass --calib DATA "
                            "(or set mode: layer/global and compensate: false)")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        cfg = self.config
        result = PassResult(modified=False)
        layers = _prunable(model, cfg, result)
        if not layers:
            return result
        pruner = _Pruner(layers)
        if cfg.mode == "global":
            counts = pruner.global_counts(cfg.sparsity)
        elif cfg.mode == "layer":
            counts = [pruner.layer_count(i, cfg) for i in range(len(layers))]
        else:
            counts = self._search(model, pruner, ctx, result, uniform=cfg.mode == "uniform")
        final = pruner.apply(model, counts, ctx.calibration if cfg.compensate else None, cfg.damp, ctx.seed)
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
        fit, check = ctx.calibration.split(cfg.validation)
        evaluator = WeightEvaluator(model, [w.name for w in pruner.layers], check, bound)
        hessians = {}
        if cfg.compensate and pruner.compensation_flops(0.8) < _CHEAP_FLOPS:
            hessians = collect_hessians(model, pruner.layers, fit)
        cache: dict[tuple[int, int], np.ndarray] = {}

        def weights_for(sparsities: np.ndarray) -> dict[str, np.ndarray]:
            feeds = {}
            for i, s in enumerate(sparsities):
                k = pruner.count(i, s, _STEP)
                if (i, k) not in cache:
                    cache[(i, k)] = pruner.pruned(i, k, hessians.get(pruner.layers[i].name), cfg.damp)
                feeds[pruner.layers[i].name] = cache[(i, k)]
            return feeds

        def violation(s: np.ndarray) -> float:
            return evaluator.drop(weights_for(s)) - cfg.max_drop

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
        # Sensitivity: the largest scanned sparsity each layer tolerates alone bounds the search (bisection
        # over the scan grid: the error grows with the sparsity).
        grid = sorted(s for s in _SCAN if s <= cfg.max_sparsity)
        limit = np.zeros(n)
        for i in Progress(range(n), "prune: sensitivity", ctx.progress):
            lo, hi = -1, len(grid)  # grid[lo] feasible (or none), grid[hi] infeasible (or past the end)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                x = np.zeros(n)
                x[i] = grid[mid]
                lo, hi = (mid, hi) if violation(x) <= 0 else (lo, mid)
            limit[i] = grid[lo] if lo >= 0 else 0.0
        # Warm start: the sensitivity profile scaled down until the model as a whole is feasible.
        lo, hi = 0.0, 1.0
        for _ in range(7):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if violation(mid * limit) <= 0 else (lo, mid)
        x0 = lo * limit
        if violation(x0) > 0:  # the sensitivity scan can be optimistic: fall back to no pruning
            x0 = np.zeros(n)
        found = ncs_minimize(
            cost=lambda s: float(np.sum(sizes * (1.0 - s))),
            violation=violation,
            x0=x0,
            low=np.zeros(n),
            high=np.maximum(limit, x0),
            population=cfg.population,
            generations=cfg.generations,
            seed=ctx.seed,
            progress=Progress(None, "prune: search", ctx.progress, total=cfg.generations).update_to,
        )
        result.summary = (f"auto: {evaluator.evaluations} evaluations ({evaluator.metric} drop <= {cfg.max_drop}), "
                          f"compensated search: {'yes' if hessians else 'no'}")
        return [pruner.count(i, s, _STEP) for i, s in enumerate(found.best)]


class _Pruner:
    """Per-layer magnitude order, computed once; ``count`` weights of layer ``i`` are its smallest ones."""

    def __init__(self, layers: list[Weight]):
        self.layers = layers
        self.original = [w.array.copy() for w in layers]
        self.order = [np.argsort(np.abs(a).ravel(), kind="stable") for a in self.original]

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

    def pruned(self, i: int, count: int, hessian: LayerHessian | None, damp: float) -> np.ndarray:
        a = self.original[i]
        keep = self.mask(i, count)
        if hessian is None or count == 0:
            return np.where(keep, a, 0).astype(a.dtype)
        return _compensated(a, keep, hessian, damp)

    def compensation_flops(self, sparsity: float) -> float:
        total = 0.0
        for w in self.layers:
            if supports(w):
                rows = w.shape[w.layout.out_axis]
                d = w.size / rows  # fan-in (per group)
                kept = (1 - sparsity) * d
                total += rows * (kept**3 / 3 + kept * d)
        return total

    def apply(self, model: Model, counts: list[int], calibration, damp: float, seed: int) -> list[float | None]:
        """Prune every layer; with calibration, compensate in graph order on already-compressed inputs,
        re-fitting each layer to the original model's outputs."""
        errors: list[float | None] = []
        reference = model.copy() if calibration is not None else None
        for i, (w, k) in enumerate(zip(self.layers, counts)):
            keep = self.mask(i, k)
            hessian = None
            if calibration is not None and k > 0 and supports(w):
                hessian = collect_hessians(model, [w], calibration, reference=reference).get(w.name)
            if hessian is None:
                w.set(np.where(keep, self.original[i], 0).astype(self.original[i].dtype))
                errors.append(None)
                continue
            new = _compensated(self.original[i], keep, hessian, damp)
            errors.append(hessian.output_error(self.original[i], new))
            w.set(new)
        return errors


def _compensated(a: np.ndarray, keep: np.ndarray, hessian: LayerHessian, damp: float) -> np.ndarray:
    W = hessian.retarget(hessian.to_matrix(a.astype(np.float64)), damp)
    K = hessian.to_matrix(keep)
    out = np.stack([prune_compensated(W[g], hessian.H[g], K[g], damp) for g in range(hessian.groups)])
    return np.where(keep, hessian.from_matrix(out), 0).astype(a.dtype)


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
