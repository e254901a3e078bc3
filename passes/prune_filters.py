"""Filter (channel) pruning: remove whole channels, so the graph is physically smaller and faster everywhere.

Rules:
1. Channel groups come from :mod:`onnxcomp.analysis.channel_groups` (the analysis): a removal takes out an *atom*, every
   channel tied to it across convs, BatchNorms, residual Adds, Concat/Split offsets, reshapes and consumers.
   Locked atoms (graph inputs/outputs, unknown ops, excluded layers) stay.
2. Importance per atom (:mod:`onnxcomp.analysis.channel_importance`): ``l1``, ``l2``, ``fpgm``, ``bn`` (BN gamma) or
   ``activation`` (calibration), normalised per slot and averaged over the group's members.
3. How many: ``ratio`` of each group's channels (``scope: layer``; ``layer_ratio`` globs on a group's layers
   override it) or of all channels ranked together (``scope: global``, each group keeping at least
   ``1 - max_ratio``); or the ratio is searched (bisection) until the MACs drop by ``flops`` (``target: flops``)
   or the onnxruntime latency improves ``speedup`` times (``target: latency``, measured at batch 1 on the
   calibration feed or seeded random inputs). Kept channel counts are rounded up to a multiple of ``round_to``.
4. The rewrite slices every slot (weights, biases, BN parameters, broadcast constants), sets depthwise
   ``group``, Split sizes, Slice bounds, Reshape shapes and Resize sizes, and drops the stale intermediate
   shapes; the result runs in stock onnxruntime.
5. ``align: independent`` leaves identity shortcuts with their own channels; each mismatched Add input gets a
   1x1 map (a Conv, or MatMul + Add for channels-last tensors) that starts as the plain channel selection.
6. ``repair`` (needs calibration data): layer by layer in graph order, every consumer whose input lost channels
   (and every inserted map) is re-fitted by least squares to reproduce the original model's output on the
   calibration inputs (:mod:`onnxcomp.numerics.repair`, ThiNet / channel-pruning style, no retraining); each sees the
   already repaired layers before it.
"""

from __future__ import annotations

import fnmatch
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.analysis.channel_graph import ChannelGraph
from onnxcomp.analysis.channel_groups import analyze
from onnxcomp.analysis.channel_importance import CRITERIA, importance
from onnxcomp.analysis.cost import HEAVY_OPS, costs_and_shapes
from onnxcomp.errors import RecipeError
from onnxcomp.ir.graph_edit import node_label, tensor_names, unique_name
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import constant_value
from onnxcomp.measure.latency import benchmark
from onnxcomp.numerics.obs import DAMP
from onnxcomp.numerics.repair import fit_channel_map, refit_layer
from onnxcomp.passes.base import Pass, PassContext, PassResult, Requirement, check_number
from onnxcomp.progress import Progress

_BISECT_STEPS = 12


@dataclass(frozen=True)
class FilterPruneConfig:
    criterion: Literal["l1", "l2", "fpgm", "bn", "activation"] = "l1"
    target: Literal["ratio", "flops", "latency"] = "ratio"
    ratio: float = 0.5
    flops: float = 0.5
    speedup: float = 1.5
    scope: Literal["layer", "global"] = "layer"
    layer_ratio: dict[str, float] = field(default_factory=dict)
    max_ratio: float = 0.9
    round_to: int = 1
    exclude: tuple[str, ...] = ()
    align: Literal["strict", "independent"] = "strict"
    repair: bool = True
    damp: float = DAMP

    def __post_init__(self) -> None:
        check_number("damp", self.damp, minimum=0, maximum=1, open_min=True, open_max=True)
        if self.criterion not in CRITERIA:
            raise RecipeError(f"criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        for name, v in [("ratio", self.ratio), ("flops", self.flops), ("max_ratio", self.max_ratio),
                        *[(f"layer_ratio[{k}]", v) for k, v in self.layer_ratio.items()]]:
            if not 0.0 <= v < 1.0:
                raise RecipeError(f"{name} must be in [0, 1), got {v}")
        if self.speedup < 1.0:
            raise RecipeError(f"speedup must be >= 1, got {self.speedup}")
        if self.round_to < 1:
            raise RecipeError(f"round_to must be >= 1, got {self.round_to}")


class PruneFilters(Pass):
    name = "prune_filters"
    Config = FilterPruneConfig
    description = "filter pruning over channel groups (residual/concat/split aware), with least-squares repair"

    def requirements(self) -> list[Requirement]:
        cfg = self.config
        needs = [Requirement("shapes", "MACs and channel shapes")]
        if cfg.repair or cfg.criterion == "activation":
            why = "least-squares repair" if cfg.repair else "the activation criterion"
            needs.append(Requirement("calibration", why, "set repair: false and a weight criterion"))
        return needs

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        cfg = self.config
        result = PassResult(modified=False)
        node_macs, shapes = _costs_and_shapes(model, ctx)
        cg = analyze(model, cfg.align, shapes, cfg.exclude)
        free = [g for g in cg.groups if g.locked is None]
        for g in cg.groups:
            if g.locked is not None and g.sources:
                result.skipped.append((", ".join(g.sources[:3]) + ("..." if len(g.sources) > 3 else ""), g.locked))
        if not free:
            result.summary = "no prunable channel group"
            return result
        scores = importance(cg, cfg.criterion, ctx.calibration)
        planner = _Planner(cg, scores, cfg)
        # keyed by node, not by name: repair names unnamed layers before the MACs after are counted
        costs = {id(n): c.macs for n, c in zip(model.graph.nodes, node_macs) if c.op in HEAVY_OPS}
        if cfg.target == "ratio":
            removed = planner.removed(cfg.ratio)
        elif cfg.target == "flops":
            removed = planner.search(lambda r: 1.0 - _macs_after(cg, r, costs) / max(sum(costs.values()), 1),
                                     cfg.flops, refine=True)
        else:
            with _LatencyProbe(model, ctx, cfg, shapes) as probe:
                removed = planner.search(probe.speedup, cfg.speedup)
        if not removed:
            result.summary = "nothing to remove at this ratio"
            return result
        macs_before = sum(costs.values())
        if cfg.repair:
            _name_unnamed_layers(model)
        reference = model.copy() if cfg.repair else None
        before = {g.index: g.size for g in cg.groups}
        maps = apply_removal(model, cg, removed)
        errors = {}
        if cfg.repair:
            errors = _repair(model, reference, cg, removed, maps, ctx, cfg.damp)
        result.modified = True
        macs_after = _macs_after(cg, removed, costs)  # exact for the heavy ops, maps included
        if not planner.reached:
            goal = f"{cfg.flops:.0%} fewer MACs" if cfg.target == "flops" else f"a {cfg.speedup:g}x speedup"
            result.skipped.append(("target", f"{goal} not reachable: every prunable group is at max_ratio "
                                             f"{cfg.max_ratio:g} (the rest is locked, see the other skipped entries)"))
        for g in free:
            gone = sum(1 for a in g.atoms if a in removed)
            result.records.append({"layer": ", ".join(g.sources), "channels": before[g.index],
                                   "kept": before[g.index] - gone, "criterion": cfg.criterion})
        for layer, (err_before, err_after) in errors.items():
            result.records.append({"layer": layer, "repaired": True, "output_error_before": err_before,
                                   "output_error": err_after})
        result.summary = (f"{len(removed)} of {sum(g.size for g in free)} prunable channels removed in "
                          f"{sum(1 for g in free if any(a in removed for a in g.atoms))} groups; MACs "
                          f"{macs_before:,} -> {macs_after:,} ({1 - macs_after / max(macs_before, 1):.1%} fewer)"
                          + (f"; {len(maps)} shortcut maps" if maps else ""))
        return result


def _name_unnamed_layers(model: Model) -> None:
    """Repair finds a layer in the original model by its node name: give unnamed weighted nodes unique ones."""
    names = {n.name for n in model.graph.nodes if n.name}
    for node in model.graph.nodes:
        if not node.name and node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            node.name = unique_name(f"{node.op}_{node.outputs[0].name}", names)


def _costs_and_shapes(model: Model, ctx: PassContext):
    """Per-node MACs and concrete tensor shapes at batch 1, from one export of the model; free input dims come
    from the first calibration feed."""
    given = None
    if ctx.calibration is not None and len(ctx.calibration):
        first = next(iter(ctx.calibration))
        given = {}
        for t in model.graph.inputs:
            if t.name in first:
                declared = list(t.shape or [])
                if not declared:  # a scalar (a sample rate, a threshold): no batch axis to set
                    given[t.name] = tuple(np.shape(first[t.name]))
                    continue
                fixed = isinstance(declared[0], int) and declared[0] > 0
                given[t.name] = (declared[0] if fixed else 1, *np.shape(first[t.name])[1:])
    return costs_and_shapes(model, shapes=given)


class _Planner:
    """Which atoms go at a given ratio, by group (``scope: layer``) or ranked globally."""

    def __init__(self, cg: ChannelGraph, scores: dict[int, float], cfg: FilterPruneConfig):
        self.cfg = cfg
        self.scores = scores
        self.reached = True  # whether the last search met its goal
        self.groups = []  # (group, its free atoms least important first, its layer_ratio override)
        for g in cg.groups:
            if g.locked is not None:
                continue
            ranked = sorted((a for a in g.atoms if a not in cg.locked), key=lambda a: (scores.get(a, 0.0), a))
            override = next((v for p, v in cfg.layer_ratio.items()
                             if any(fnmatch.fnmatchcase(s, p) for s in g.sources)), None)
            self.groups.append((g, ranked, override))

    def _count(self, g, ranked: list[int], ratio: float) -> int:
        """Atoms of ``g`` to remove at ``ratio``: the kept count rounded up to a multiple of ``round_to``, and at
        least one channel kept."""
        step = self.cfg.round_to
        keep = max(g.size - int(np.floor(ratio * g.size + 1e-9)), 1)
        keep = min(-(-keep // step) * step, g.size)
        return max(0, min(g.size - keep, len(ranked)))

    def removed(self, ratio: float) -> set[int]:
        out: set[int] = set()
        pooled = []
        for g, ranked, override in self.groups:
            if override is not None or self.cfg.scope == "layer":
                out.update(ranked[:self._count(g, ranked, ratio if override is None else override)])
            else:
                pooled.append((g, ranked))
        if pooled:  # global: the least important atoms of all groups, each group capped at max_ratio
            pool = sorted((self.scores.get(a, 0.0), a, i) for i, (_, ranked) in enumerate(pooled) for a in ranked)
            budget = int(np.floor(ratio * len(pool) + 1e-9))
            caps = [self._count(g, ranked, self.cfg.max_ratio) for g, ranked in pooled]
            taken = [0] * len(pooled)
            for _, _, i in pool:
                if budget == 0:
                    break
                if taken[i] < caps[i]:
                    taken[i] += 1
                    budget -= 1
            for (g, ranked), n in zip(pooled, taken):
                out.update(ranked[:self._count(g, ranked, n / g.size)])
        return out

    def search(self, measure, goal: float, refine: bool = False) -> set[int]:
        """The smallest ratio whose removal reaches ``measure >= goal`` (bisection; the largest tried if none).

        With ``refine`` (a cheap ``measure``), channels are then given back, ``round_to`` at a time and the most
        important first, while the goal still holds: with coarse rounding (16 channels in steps of 8) one common
        ratio overshoots the target, and the give-back spends the slack on the channels that matter most."""
        lo, hi = 0.0, self.cfg.max_ratio
        best = self.removed(hi)
        self.reached = measure(best) >= goal
        if not self.reached:
            return best
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2
            cand = self.removed(mid)
            if measure(cand) >= goal:
                hi, best = mid, cand
            else:
                lo = mid
        return self._give_back(best, measure, goal) if refine else best

    def _give_back(self, removed: set[int], measure, goal: float) -> set[int]:
        step = self.cfg.round_to
        chunks = []  # (importance, atoms): the removed atoms of each group, most important first, step at a time
        for g, ranked, override in self.groups:
            if override is not None:
                continue
            gone = [a for a in reversed(ranked) if a in removed]
            for i in range(0, len(gone) - len(gone) % step, step):
                chunk = gone[i:i + step]
                chunks.append((float(np.mean([self.scores.get(a, 0.0) for a in chunk])), g.index, chunk))
        skip: set[int] = set()  # groups whose next chunk did not fit: later chunks of theirs are less important
        for _, gi, chunk in sorted(chunks, key=lambda c: -c[0]):
            if gi in skip:
                continue
            trial = removed - set(chunk)
            if measure(trial) >= goal:
                removed = trial
            else:
                skip.add(gi)
        return removed


def _macs_after(cg: ChannelGraph, removed: set[int], costs: dict[int, int]) -> int:
    """MACs of the weighted layers (``costs``: id(node) -> MACs) after removing ``removed``: each scales with its
    kept input and output positions (exact for Conv/Gemm/MatMul; depthwise convs scale with their channels)."""
    keep = cg.keep_mask(removed)
    frac: dict[int, float] = {}
    for s in cg.slots:
        if s.input != 1 or s.kind not in ("in", "out"):
            continue
        frac[id(s.node)] = frac.get(id(s.node), 1.0) * float(keep[s.ids].mean())
    maps = 0  # the 1x1 maps independent alignment inserts: positions x kept source x kept destination channels
    for al in cg.alignments:
        src, dst = cg.spaces[al.source].ids, cg.spaces[al.node.outputs[0].name].ids
        if not np.array_equal(np.flatnonzero(keep[src]), np.flatnonzero(keep[dst])):
            positions = int(np.prod(cg.shapes[al.source])) // src.size
            maps += positions * int(keep[src].sum()) * int(keep[dst].sum())
    return int(sum(m * frac.get(key, 1.0) for key, m in costs.items())) + maps


class _LatencyProbe:
    """Measured onnxruntime speedups (batch 1, interleaved medians) of candidate removals against the model as it
    is; the baseline file and the feed are made once for the whole search."""

    def __init__(self, model: Model, ctx: PassContext, cfg: FilterPruneConfig, shapes: dict[str, tuple[int, ...]]):
        self.model, self.cfg, self.shapes = model, cfg, shapes
        if ctx.calibration is not None:
            self.feed = {k: v[:1] for k, v in next(iter(ctx.calibration)).items()}
        else:
            rng = np.random.default_rng(ctx.seed)
            self.feed = {t.name: rng.standard_normal(shapes[t.name]).astype(np.float32) for t in model.graph.inputs}

    def __enter__(self) -> _LatencyProbe:
        self._tmp = tempfile.TemporaryDirectory()
        self.baseline = Path(self._tmp.name, "baseline.onnx")
        self.model.save(self.baseline)
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    def speedup(self, removed: set[int]) -> float:
        """The copy is analysed again; the analysis is deterministic, so atoms are numbered as in the original."""
        candidate = self.model.copy()
        apply_removal(candidate, analyze(candidate, self.cfg.align, self.shapes, self.cfg.exclude), removed)
        path = Path(self._tmp.name, "candidate.onnx")
        candidate.save(path)
        return benchmark([str(self.baseline), str(path)], self.feed, rounds=15, warmup=2)[1].speedup


def apply_removal(model: Model, cg: ChannelGraph, removed: set[int]) -> list:
    """Remove the atoms ``removed`` from ``model`` (the model ``cg`` was computed on). Returns the inserted
    shortcut maps as (node, source tensor, kept source channels, kept destination channels)."""
    keep = cg.keep_mask(removed)
    names = tensor_names(model.graphs())
    by_input: dict[tuple[int, int], list] = {}
    for s in cg.slots:
        by_input.setdefault((id(s.node), s.input), []).append(s)
    for slots in by_input.values():
        node, index = slots[0].node, slots[0].input
        value = constant_value(node.inputs[index])
        new = value
        for s in slots:
            mask = keep[s.ids]
            if not mask.all():
                new = np.compress(mask, new, axis=s.axis)
        if new is not value:
            _set_input(node, index, new.astype(value.dtype), names)
    for f in cg.fixups:
        _FIXUPS[f.kind](f, cg, keep, names)
    maps = _insert_maps(model, cg, keep, names)
    for t in model.graph.tensors().values():
        if isinstance(t, gs.Variable) and not any(t is o for o in model.graph.outputs) \
                and not any(t is i for i in model.graph.inputs):
            t.shape = None
    return maps


def zero_removal(model: Model, cg: ChannelGraph, removed: set[int]) -> None:
    """What :func:`apply_removal` must equal: ``model`` (the one ``cg`` was computed on) with the removed channels
    zeroed instead of cut out, at every slot: consumer columns, producer rows and biases, per-channel constants
    (divisors and exponents excepted). A removed channel is then exactly 0 wherever it is made and ignored wherever
    it is read, which also covers channels no weight reads (attention's q and k, contracted with each other).
    Used to prove the index bookkeeping (tests, benchmarks/filter_pruning.py)."""
    keep = cg.keep_mask(removed)
    names = tensor_names(model.graphs())
    for s in cg.slots:
        gone = ~keep[s.ids]
        if not gone.any() or s.node.op in ("Div", "Pow"):
            continue
        value = constant_value(s.node.inputs[s.input]).copy()
        index = [slice(None)] * value.ndim
        index[s.axis] = gone
        value[tuple(index)] = 0
        _set_input(s.node, s.input, value, names)


def _set_input(node: gs.Node, index: int, value: np.ndarray, names: set[str]) -> None:
    """Give ``node`` its own constant for input ``index`` (shared constants are never edited in place)."""
    old = node.inputs[index]
    node.inputs[index] = gs.Constant(unique_name(f"{old.name}_pruned", names), np.ascontiguousarray(value))


def _fix_depthwise(f, cg, keep, names) -> None:
    f.node.attrs["group"] = int(keep[cg.spaces[f.tensor].ids].sum())


def _fix_split(f, cg, keep, names) -> None:
    node = f.node
    sizes = np.asarray([int(keep[cg.spaces[o.name].ids].sum()) for o in node.outputs], np.int64)
    if "split" in node.attrs:
        node.attrs["split"] = sizes.tolist()
    else:
        node.attrs.pop("num_outputs", None)
        if len(node.inputs) > 1 and node.inputs[1].name:
            _set_input(node, 1, sizes, names)
        else:
            node.inputs.append(gs.Constant(unique_name(f"{node_label(node)}_split", names), sizes))


def _fix_slice(f, cg, keep, names) -> None:
    node, axis, rank = f.node, f.data["axis"], f.data["rank"]
    kept = keep[cg.spaces[f.tensor].ids]
    start, stop = int(kept[:f.data["start"]].sum()), int(kept[:f.data["stop"]].sum())
    starts = constant_value(node.inputs[1])
    axes = constant_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    axes = np.arange(len(starts)) if axes is None else axes
    position = next(i for i, a in enumerate(axes.tolist()) if (a + rank if a < 0 else a) == axis)
    for slot, value in ((1, start), (2, stop)):
        arr = constant_value(node.inputs[slot]).copy()
        arr[position] = value
        _set_input(node, slot, arr, names)


def _fix_reshape(f, cg, keep, names) -> None:
    node = f.node
    out = cg.spaces[node.outputs[0].name]
    shape = list(f.data["out_shape"])
    kept = keep[out.ids]
    for k, ax in enumerate(out.axes):
        other = tuple(i for i in range(kept.ndim) if i != k)
        shape[ax] = int(kept.any(axis=other).sum()) if other else int(kept.sum())
    old = constant_value(node.inputs[1]).astype(np.int64)
    new = old.copy()
    for i, dim in enumerate(shape):
        if i < len(old) and old[i] == -1:
            continue
        if i in out.axes or old[i] != 0:
            new[i] = dim if i in out.axes else old[i]
    if not np.array_equal(new, old):
        _set_input(node, 1, new, names)


def _fix_shape_part(f, cg, keep, names) -> None:
    """A constant entry of a Reshape shape built by a Concat at run time: the new count along the pruned axis."""
    out = cg.spaces[f.node.outputs[0].name]
    kept = keep[out.ids]
    k = f.data["axis_index"]
    other = tuple(i for i in range(kept.ndim) if i != k)
    count = int(kept.any(axis=other).sum()) if other else int(kept.sum())
    part = f.data["part"]
    concat = part.outputs[0]
    value = constant_value(part).copy()
    value.reshape(-1)[f.data["offset"]] = count
    index = next(i for i, t in enumerate(concat.inputs) if t is part)
    _set_input(concat, index, value, names)


def _fix_resize(f, cg, keep, names) -> None:
    node = f.node
    sizes = constant_value(node.inputs[3]).astype(np.int64).copy()
    space = cg.spaces[f.tensor]
    sizes[space.axes[0]] = int(keep[space.ids].sum())
    _set_input(node, 3, sizes, names)


_FIXUPS = {"depthwise": _fix_depthwise, "split": _fix_split, "slice": _fix_slice, "reshape": _fix_reshape,
           "shape_part": _fix_shape_part, "resize": _fix_resize}


def _insert_maps(model: Model, cg: ChannelGraph, keep: np.ndarray, names: set[str]) -> list:
    """A selection map in front of every Add input whose kept channels differ from the Add's."""
    maps = []
    for al in cg.alignments:
        src_space = cg.spaces[al.source]
        dst_space = cg.spaces[al.node.outputs[0].name]
        src = np.flatnonzero(keep[src_space.ids])
        dst = np.flatnonzero(keep[dst_space.ids])
        if np.array_equal(src, dst):
            continue
        P = (dst[:, None] == src[None, :]).astype(np.float32)  # the plain selection; zero where dst lacks src
        axis = src_space.axes[0]
        x = al.node.inputs[al.input]
        y = gs.Variable(unique_name(f"{al.source}_aligned", names), dtype=x.dtype)
        base = unique_name(f"{node_label(al.node)}_align{al.input}", names)
        if axis == 1:
            w = gs.Constant(f"{base}.weight", P.reshape(P.shape + (1, 1)))
            b = gs.Constant(f"{base}.bias", np.zeros(len(dst), np.float32))
            node = gs.Node("Conv", base, inputs=[x, w, b], outputs=[y], attrs={"kernel_shape": [1, 1]})
        else:
            mm = gs.Variable(unique_name(f"{base}_mm", names), dtype=x.dtype)
            w = gs.Constant(f"{base}.weight", np.ascontiguousarray(P.T))
            b = gs.Constant(f"{base}.bias", np.zeros(len(dst), np.float32))
            node = gs.Node("MatMul", base, inputs=[x, w], outputs=[mm])
            model.graph.nodes.append(gs.Node("Add", f"{base}_bias", inputs=[mm, b], outputs=[y]))
        names.update({w.name, b.name})
        model.graph.nodes.append(node)
        al.node.inputs[al.input] = y
        maps.append((node, al.source, src, dst))
    if maps:
        model.graph.toposort()
    return maps


def _repair(model: Model, reference: Model, cg: ChannelGraph, removed: set[int], maps: list,
            ctx: PassContext, damp: float) -> dict[str, tuple[float, float]]:
    """Least-squares repair in graph order: inserted maps and every consumer whose input lost channels."""
    keep = cg.keep_mask(removed)
    changed_in = {id(s.node) for s in cg.slots if s.kind == "in" and s.input == 1 and not keep[s.ids].all()}
    rows_cols: dict[int, dict] = {}
    for s in cg.slots:
        if s.input != 1 or s.kind not in ("in", "out"):
            continue
        ids = s.ids
        idx = np.flatnonzero(keep[ids])
        if s.node.op == "Conv" and int(s.node.attrs.get("group", 1)) != 1:
            continue
        entry = rows_cols.setdefault(id(s.node), {})
        entry["cols" if s.kind == "in" else "rows"] = idx
    map_nodes = {id(m[0]): m for m in maps}
    order = [n for n in model.graph.nodes if id(n) in map_nodes or id(n) in changed_in]
    errors: dict[str, tuple[float, float]] = {}  # layer -> relative output error before / after its repair
    progress = Progress(None, "repair", ctx.progress, total=len(order))
    for node in order:
        if id(node) in map_nodes:
            _, source, src, dst = map_nodes[id(node)]
            P, b = fit_channel_map(model, reference, source, src, dst, ctx.calibration, damp)
            w = node.inputs[1]
            shape = w.values.shape
            w.values = (P.reshape(shape) if node.op == "Conv" else P.T).astype(np.float32)
            bias = node.inputs[2] if node.op == "Conv" else node.outputs[0].outputs[0].inputs[1]
            bias.values = b.astype(np.float32)
        else:
            rc = rows_cols.get(id(node), {})
            out = refit_layer(model, reference, node.name, rc.get("rows"), rc.get("cols"), ctx.calibration, damp)
            if out is not None:
                errors[node_label(node)] = out
        progress.update()
    progress.close()
    return errors


__all__ = ["FilterPruneConfig", "PruneFilters", "apply_removal", "zero_removal"]
