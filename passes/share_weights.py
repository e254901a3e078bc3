"""Weight sharing: cluster each layer's weights into 2^bits values (Han et al., Deep Compression, ICLR 2016).

Deep Compression's second stage replaces every weight of a layer by the nearest of ``k = 2^bits`` shared values
(a per-layer codebook), so the layer stores ``bits``-bit indices plus ``k`` floats. The codebook is 1-D k-means
of the layer's weights (:mod:`onnxcomp.numerics.kmeans1d`), initialised linearly between min and max as the paper
recommends (large weights are rare but matter, and density-based or random initialisation leaves few centroids
for them). Pruned weights (exact zeros) are not clustered and stay exactly 0.0: the sparse format stores them as
gaps, not as indices, so they must not spend a centroid.

Without retraining (the paper fine-tunes the centroids by gradient descent), the centroids are refined by least
squares on calibration data instead. For fixed assignments a layer's output is linear in its centroids. With the
weight viewed as a matrix ``W`` (rows = output channels, columns = fan-in in im2col order), the layer input's
second moment ``H = E[x x^T]`` (:mod:`onnxcomp.calibration.hessian`) and ``A_r`` the (fan-in x k) one-hot assignment of
row ``r``, the shared weights are ``w'_r = A_r c`` and the expected squared output change is ::

    L(c) = sum_r (w_r - A_r c)^T H (w_r - A_r c)
    dL/dc = 0   <=>   G c = b,   G = sum_r A_r^T H A_r,   b = sum_r A_r^T H w_r

a k x k system (summed over conv groups, each with its own ``H``). ``G_kl = <E_k H, E_l>`` where ``E_k`` is the
0/1 mask of cluster ``k`` in the matrix view, so one sparse product ``E_k H`` per cluster gives a whole row of
``G`` by a ``bincount`` over the labels and ``b_k = <E_k H, W>``: O(nnz(W) d) in all. The system is solved with a
ridge towards the k-means centroids, ``(G + lambda D) c = b + lambda D c0`` with ``D = diag(G)`` (plus a floor),
which keeps a centroid whose weights only ever see zero inputs (MNIST's border pixels) at its k-means value.
Zeros are not in any cluster, so they stay zero.

Rules:
1. Fires on every weight-table entry with role ``weight`` (Conv/ConvTranspose/Gemm/MatMul kernels, LSTM/GRU/RNN
   W and R), except those whose layer or weight name matches an ``exclude`` glob, those with fewer than
   ``min_elements`` elements, non-float or non-finite tensors, and tensors that already hold at most ``k``
   distinct nonzero values (each skip is recorded with its reason).
2. ``k = 2^bits``; ``bits_per_layer`` maps layer or weight name globs to their own bits (first match wins).
3. A weight used by several nodes is one tensor: it is clustered once (values only, no graph change); its
   centroids are not refined because one input Hessian does not describe all its uses.
4. With ``refine`` and calibration data, centroids of every layer whose input Hessian is defined (Conv with
   explicit pads, Gemm, 2-D MatMul kernels) are refined. Without calibration data the pass still runs and
   records that refinement was skipped. With ``sequential``, layers are shared in graph order and each
   one's Hessian comes from the partly shared model: the layer is first re-targeted to reproduce the ORIGINAL
   model's outputs from its already-shared inputs (``LayerHessian.retarget``, its ridge cross-validated over runs
   of feeds), then clustered, so upstream error is corrected instead of accumulating through deep networks;
   otherwise all Hessians come from the unmodified model. The re-targeted weights are restricted to the layer's
   nonzeros by a least-squares refit whose ridge pulls towards them (``obs.prune_compensated(towards="weights")``),
   so a layer without pruned weights keeps exactly what re-targeting gave. (PP-OCRv4 rec at 6 bits, 24 held-back
   lines: top-1 agreement 0.990 without ``sequential``, 0.994 with it; 0.980 when that refit's ridge pulled
   towards zero, which shrank every layer.)
5. With ``compensate`` and a Hessian, assignments are made GPTQ-style instead of nearest-centroid: columns in
   order, each weight snapped to its nearest centroid and the rounding error pushed onto the not-yet-snapped
   weights of its row through ``H^{-1}`` (:func:`onnxcomp.numerics.obs.compensate`); zeros stay zero. The centroids are
   then refined for the new assignments as in rule 4.
6. Zero is always a level: a weight nearer to 0.0 than to every centroid becomes 0.0 (free in storage, where
   zeros are gaps or codebook entry 0). Without it a channel of ~0 weights (a BN-folded channel whose gamma is
   ~0) would jump to the smallest centroid and feed noise downstream. Values are written back in the weight's
   own dtype; the tensor keeps its name and shape.
7. ``bits: auto`` (needs calibration data) gives each layer not fixed by ``bits_per_layer`` a width from ``choices``
   (:mod:`onnxcomp.numerics.bit_allocation`): every layer is shared at every width as rules 4-5 will share it
   (compensated assignment with ``compensate``, else nearest centroids; refined), its error at each width is its
   relative output error scaled by its sensitivity (the model-output distortion, :meth:`WeightEvaluator.distortion`,
   when that layer alone takes the narrowest width), and its cost is the entropy of its indices plus the codebook. The
   Lagrangian path from all-widest to all-narrowest is then bisected for the fewest bytes whose ``metric`` drop against
   this pass's input model stays within ``max_drop`` on the calibration data, or cut at the first point whose mean width
   is within ``budget``. The chosen widths then go through rules 1-6 like fixed ones. Weights the evaluator cannot
   feed (Constant nodes, subgraphs) get the widest choice, with the reason recorded.
8. ``codebook_dtype: float16`` (default) rounds the final centroids of float32/float64 weights to the nearest
   float16 (a relative change below 2^-11, far under the clustering error), so that ``pack_weights`` stores
   their codebook exactly at 2 bytes per entry; ``weight`` keeps full-precision centroids. Centroids outside
   float16's range are not rounded. ``bias_dtype: float16`` (default) rounds the bias of every shared layer
   (``bias_correction.layer_bias``) the same way, after any correction, so that ``pack_weights`` stores it as
   float16 (its rule 6); ``weight`` keeps it. (The bundled ResCNN packs to ~9 KB, of which its float32 biases
   were 872 B.)
9. With a calibration Hessian and a bias on the layer (``bias_correction.py``), the fit is on centered input
   statistics and the bias absorbs the change of the layer's output mean.

Records, one per layer: bits, distinct nonzero values before and after, ``weight_err`` = ||W - W'|| / ||W||,
and with a Hessian ``output_err_kmeans`` / ``output_err`` = trace((W - W') H (W - W')^T) / trace(W H W^T) for the
k-means centroids and the refined ones.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse

from onnxcomp.calibration.hessian import RETARGET_FOLDS, LayerHessian, collect_hessians
from onnxcomp.errors import RecipeError
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Weight, weight_table
from onnxcomp.measure.evaluator import FidelityBound
from onnxcomp.numerics.bias_correction import LayerBias, centered_where_biased, layer_bias
from onnxcomp.numerics.bit_allocation import entropy_bytes
from onnxcomp.numerics.kmeans1d import INITS, Clustering, kmeans1d
from onnxcomp.numerics.obs import Factors, compensate
from onnxcomp.numerics.retarget import layer_output_error, retarget_kept
from onnxcomp.passes.base import Pass, PassContext, PassResult, Requirement
from onnxcomp.passes.width_search import WidthConfig, matches, search_widths
from onnxcomp.progress import Progress

_MAX_CHUNK = 1 << 24  # float64 entries of E_k H held at once (128 MiB)
_FACTOR_BYTES = 256 << 20  # H^-1 factors the width search keeps for a layer's other widths (least recent go)


@dataclass(frozen=True)
class ShareWeightsConfig(WidthConfig):
    bits: int | Literal["auto"] = 5  # k = 2^bits shared values per layer; auto: allocated per layer (rule 7)
    init: Literal["linear", "random", "density", "exact"] = "linear"
    refine: bool = True  # least-squares centroids on calibration data (skipped with a note without it)
    exclude: tuple[str, ...] = ()  # layer/weight name globs left untouched
    min_elements: int = 256  # smaller kernels are not worth a codebook
    ridge: float = 1e-3  # refinement's pull towards the k-means centroids, relative to diag(G)
    compensate: bool = False  # GPTQ-style assignment with OBS error feedback (needs calibration data)
    sequential: bool = False  # layer by layer on already-shared inputs, re-targeted to the original outputs
    codebook_dtype: Literal["float16", "weight"] = "float16"  # centroids rounded to float16: half-size codebooks
    bias_dtype: Literal["float16", "weight"] = "float16"  # shared layers' biases rounded to float16 (rule 8)

    def __post_init__(self) -> None:
        self.check_widths(" (k = 2^bits shared values)")
        for name in ("codebook_dtype", "bias_dtype"):
            if getattr(self, name) not in ("float16", "weight"):
                raise RecipeError(f"{name} must be 'float16' or 'weight', got {getattr(self, name)!r}")
        if self.init not in INITS:
            raise RecipeError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.min_elements < 0:
            raise RecipeError(f"min_elements must be >= 0, got {self.min_elements}")
        if not self.ridge >= 0:
            raise RecipeError(f"ridge must be >= 0, got {self.ridge}")


@dataclass
class _Plan:
    """One weight to share: what the clustering decided, before anything is written."""

    weight: Weight
    bits: int
    original: np.ndarray
    mask: np.ndarray  # nonzero positions (the clustered ones)
    clustering: Clustering
    distinct_before: int


class ShareWeights(Pass):
    name = "share_weights"
    Config = ShareWeightsConfig
    description = "k-means weight sharing per layer (Deep Compression), centroids refined on calibration data"

    def requirements(self) -> list[Requirement]:
        return self.config.width_requirements()

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        cfg = self.config
        result = PassResult(modified=False)
        eligible = [(w, a) for w in weight_table(model)
                    if w.role == "weight" and (a := self._eligible(w, result)) is not None]
        widths = {w.name: cfg.fixed_bits(w) for w, _ in eligible}
        to_allocate = [(w, a) for w, a in eligible if widths[w.name] is None]
        calibrated = cfg.refine and ctx.calibration is not None
        # Hessians of the unmodified model (collected before any weight is written), for the refinement (unless
        # sequential: then each layer's comes from the partly shared model) and for the width search.
        hessians: dict[str, LayerHessian] = {}
        biases: dict[str, LayerBias] = {}
        if ctx.calibration is not None and (calibrated or to_allocate):
            biases = {w.name: b for w, _ in eligible if (b := layer_bias(model, w))}
        if ctx.calibration is not None and ((calibrated and not cfg.sequential) or to_allocate):
            hessians = centered_where_biased(
                collect_hessians(model, [w for w, _ in eligible if not w.shared], ctx.calibration), biases)
        allocated = ""
        if to_allocate:
            chosen, allocated = self._allocate(model, to_allocate, ctx, result, hessians, biases)
            widths.update(chosen)
        plans = [p for w, a in eligible if (p := self._plan(w, a, widths[w.name], ctx, result)) is not None]
        if cfg.refine and plans and not calibrated:
            result.skipped.append(("refinement", "no calibration data: centroids are the k-means means"))
        reference = model.copy() if calibrated and cfg.sequential and plans else None
        if not calibrated or reference is not None:
            hessians = {}

        for plan in Progress(plans, "share", ctx.progress):
            w = plan.weight
            if reference is not None and not w.shared:
                hessian = collect_hessians(model, [w], ctx.calibration, reference=reference,
                                           folds=RETARGET_FOLDS).get(w.name)
                if hessian is not None and w.name in biases:
                    hessian = hessian.centered()
                if hessian is not None:
                    plan = self._retarget(plan, hessian, ctx)
            else:
                hessian = hessians.get(w.name)
            if hessian is not None and (note := hessian.few_samples(w.layer)) is not None:
                result.notes.append(note)
            before = w.array
            if calibrated and w.shared:
                result.skipped.append((w.name, f"refinement skipped: shared by {len(w.uses)} nodes"))
            elif calibrated and hessian is None:
                result.skipped.append((w.name, f"refinement skipped: no input Hessian for {w.primary.op}"))
            result.records.append(self._apply(plan, hessian, result))
            if hessian is not None and hessian.is_centered:
                biases[w.name].absorb(hessian, before, w.array)
            if cfg.bias_dtype == "float16" and (bias := biases.get(w.name) or layer_bias(model, w)) is not None:
                bias.weight.set(_as_float16(bias.weight.array))
            result.modified = True
        bits = sorted({r["bits"] for r in result.records})
        result.summary = (f"shared {len(result.records)} weights at {'/'.join(map(str, bits))} bits"
                          if result.records else "no weight shared") + (f"; {allocated}" if allocated else "")
        return result

    @property
    def _half(self) -> bool:
        return self.config.codebook_dtype == "float16"

    def _book_bytes(self, array: np.ndarray, k: int) -> int:
        """Bytes of a k-entry codebook as pack_weights stores it (rule 8: float16 entries)."""
        return k * (2 if self._half else array.dtype.itemsize)

    def _eligible(self, w: Weight, result: PassResult) -> np.ndarray | None:
        """The weight's array when rule 1 lets the pass touch it, else None (and the reason recorded)."""
        cfg = self.config
        excluded = next((p for p in cfg.exclude if matches(w, p)), None)
        if excluded is not None:
            result.skipped.append((w.name, f"excluded by name (pattern {excluded!r})"))
            return None
        array = w.array
        if not np.issubdtype(array.dtype, np.floating):
            result.skipped.append((w.name, f"not a float tensor ({array.dtype})"))
            return None
        if w.size < cfg.min_elements:
            result.skipped.append((w.name, f"{w.size} elements < min_elements {cfg.min_elements}"))
            return None
        if not np.all(np.isfinite(array)):
            result.skipped.append((w.name, "holds NaN or infinity"))
            return None
        return array

    def _plan(self, w: Weight, array: np.ndarray, bits: int, ctx: PassContext, result: PassResult) -> _Plan | None:
        k = 1 << bits
        mask = array != 0
        nonzero = array[mask]
        distinct = int(np.unique(nonzero).size)
        if distinct <= k:
            result.skipped.append((w.name, f"already has {distinct} distinct nonzero values <= k={k} ({bits} bits)"))
            return None
        clustering = kmeans1d(nonzero, k, self.config.init, seed=_seed(ctx, w))
        return _Plan(w, bits, array, mask, clustering, distinct)

    def _allocate(self, model: Model, items: list[tuple[Weight, np.ndarray]], ctx: PassContext,
                  result: PassResult, hessians: dict[str, LayerHessian],
                  biases: dict[str, LayerBias]) -> tuple[dict[str, int], str]:
        """Rule 7: a width per weight from ``choices``, and a summary of the choice."""
        cfg = self.config
        factors = Factors(max_bytes=_FACTOR_BYTES)  # a layer's widths are priced one after another
        return search_widths(model, items, ctx, result, cfg.choices,
                             lambda w, a, bits, h, c: self._candidate(w, a, bits, h, c, factors),
                             FidelityBound(cfg.metric, cfg.max_drop), cfg.budget, hessians, biases)

    def _candidate(self, w: Weight, array: np.ndarray, bits: int, h: LayerHessian | None,
                   ctx: PassContext, factors: Factors | None = None) -> tuple[np.ndarray, float]:
        """The weight shared at ``bits`` as rules 4-5 will share it (with ``compensate`` and a Hessian the GPTQ-style
        assignment, else nearest centroids; refined centroids) and its index bytes (the entropy of its labels, which
        Huffman coding approaches, plus the codebook). Scoring nearest-centroid candidates while compensated ones
        are applied made the search refuse every narrower width on PP-OCRv4 rec (all 8 bits, 4.46x)."""
        k = 1 << bits
        mask = array != 0
        nonzero = array[mask]
        if np.unique(nonzero).size <= k:
            labels = np.unique(nonzero, return_inverse=True)[1]
            return array, entropy_bytes(labels) + self._book_bytes(array, k)
        clustering = kmeans1d(nonzero, k, self.config.init, seed=_seed(ctx, w))
        centroids = clustering.centroids
        if h is not None and self.config.compensate:
            assign = _compensated_assignment(h, array, mask, centroids, factors)
        else:
            assign = _snap(nonzero, centroids)
        if h is not None and self.config.refine:
            labels = np.full(array.shape, centroids.size, dtype=np.int64)
            labels[mask] = assign
            centroids = _refine(h, array, labels, centroids, self.config.ridge)
        values = _values(array, mask, centroids, assign, array.dtype, self._half)
        return values, entropy_bytes(assign) + self._book_bytes(array, k)

    def _retarget(self, plan: _Plan, hessian: LayerHessian, ctx: PassContext) -> _Plan:
        """Re-fit the layer's nonzero weights to the original outputs from its current inputs (least squares on
        the kept positions, so pruned weights stay zero), then re-cluster those values."""
        target = retarget_kept(hessian, plan.original, plan.mask, towards="weights")
        clustering = kmeans1d(target[plan.mask], 1 << plan.bits, self.config.init, seed=_seed(ctx, plan.weight))
        return _Plan(plan.weight, plan.bits, target, plan.mask, clustering, plan.distinct_before)

    def _apply(self, plan: _Plan, hessian: LayerHessian | None, result: PassResult) -> dict[str, Any]:
        w, original, mask = plan.weight, plan.original, plan.mask
        dtype = original.dtype
        centroids = plan.clustering.centroids
        record: dict[str, Any] = {"layer": w.layer, "weight": w.name, "bits": plan.bits,
                                  "method": plan.clustering.method, "distinct_before": plan.distinct_before}
        err_kmeans = err_refined = None
        assign = _snap(original[mask], centroids)
        if hessian is not None and self.config.compensate:
            assign = _compensated_assignment(hessian, original, mask, centroids)
            record["compensated"] = True
        if hessian is not None:
            labels = np.full(original.shape, centroids.size, dtype=np.int64)  # zeros: a dummy cluster
            labels[mask] = assign
            kmeans_values = _values(original, mask, centroids, assign, dtype, self._half)
            err_kmeans = layer_output_error(hessian, original, kmeans_values)
            if err_kmeans is None:
                result.skipped.append((w.name, "refinement skipped: the layer's input is zero on the calibration data"))
            else:
                centroids = _refine(hessian, original, labels, centroids, self.config.ridge)

        shared = _values(original, mask, centroids, assign, dtype, self._half)
        w.set(shared)
        if err_kmeans is not None:
            err_refined = layer_output_error(hessian, original, shared)
        norm = float(np.linalg.norm(original.astype(np.float64)))
        diff = float(np.linalg.norm(original.astype(np.float64) - shared.astype(np.float64)))
        record.update({
            "distinct_after": int(np.unique(shared[shared != 0]).size),
            "weight_err": diff / norm if norm > 0 else 0.0,
            "output_err_kmeans": err_kmeans,
            "output_err": err_refined,
        })
        return record


def _seed(ctx: PassContext, w: Weight) -> list[int]:
    """Seeded per weight name, so a weight's codebook does not depend on which other weights the model has."""
    return [ctx.seed, zlib.crc32(w.name.encode("utf-8"))]


def _compensated_assignment(h: LayerHessian, original: np.ndarray, mask: np.ndarray,
                            centroids: np.ndarray, factors: Factors | None = None) -> np.ndarray:
    """Cluster labels of the nonzero weights chosen with OBS error feedback (rule 5)."""
    levels = np.append(centroids, 0.0)
    W = h.to_matrix(original.astype(np.float64))
    M = h.to_matrix(mask)
    out = np.empty_like(W)
    for g in range(h.groups):
        out[g] = compensate(W[g], h.H[g],
                            lambda col, j, keep=M[g]: np.where(keep[:, j], levels[_snap(col, centroids)], 0.0),
                            factors=factors)
    return _snap(h.from_matrix(out)[mask], centroids)


def _snap(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Label of the nearest level of each value: a centroid ``0..k-1``, or ``k`` for 0.0 (rule 6)."""
    order = np.argsort(centroids)
    sorted_c = centroids[order]
    labels = order[np.searchsorted((sorted_c[1:] + sorted_c[:-1]) / 2, values)]
    return np.where(np.abs(values) < np.abs(values - centroids[labels]), centroids.size, labels)


def _values(original: np.ndarray, mask: np.ndarray, centroids: np.ndarray, labels: np.ndarray,
            dtype: np.dtype, half: bool) -> np.ndarray:
    """The shared tensor: centroids (in the weight's dtype; rounded to float16 first with ``half`` when they fit
    its range, rule 8) at the clustered positions (label k: 0.0), exact zeros elsewhere."""
    levels = np.append(centroids, 0.0)
    if half:
        levels = _as_float16(levels)
    out = np.zeros(original.shape, dtype=dtype)
    out[mask] = levels.astype(dtype)[labels]
    return out


def _as_float16(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to the nearest float16s, in their own dtype; unchanged when one is beyond its range."""
    if not np.all(np.abs(values) <= np.finfo(np.float16).max):
        return values
    return values.astype(np.float16).astype(values.dtype)


def _refine(h: LayerHessian, original: np.ndarray, labels: np.ndarray, c0: np.ndarray, ridge: float) -> np.ndarray:
    """Least-squares centroids for fixed assignments: solve (G + ridge D) c = b + ridge D c0 (module docstring)."""
    k = c0.size
    w_mat = h.to_matrix(original.astype(np.float64))  # (groups, rows, d)
    l_mat = h.to_matrix(labels)
    g_sys = np.zeros((k, k))
    b_sys = np.zeros(k)
    for g in range(h.groups):
        lab = np.ascontiguousarray(l_mat[g])
        rows, d = lab.shape
        flat = lab.ravel()
        live = flat < k  # zeros (label k) belong to no cluster
        # E stacks the cluster masks: row (k * rows + r) of E is the 0/1 mask of cluster k in row r.
        pos = np.flatnonzero(live)
        e = scipy.sparse.csr_matrix(
            (np.ones(pos.size), (flat[pos] * rows + pos // d, pos % d)), shape=(k * rows, d))
        step = max(1, _MAX_CHUNK // max(rows * d, 1))
        for k0 in range(0, k, step):
            k1 = min(k, k0 + step)
            f = np.asarray(e[k0 * rows:k1 * rows] @ h.H[g]).reshape(k1 - k0, rows * d)  # E_k H, flattened
            # G[k, l] = sum of (E_k H) over the positions labelled l; the dummy label k collects the zeros.
            idx = (np.arange(k1 - k0)[:, None] * (k + 1) + flat[None, :]).ravel()
            g_sys[k0:k1] += np.bincount(idx, weights=f.ravel(), minlength=(k1 - k0) * (k + 1)).reshape(
                k1 - k0, k + 1)[:, :k]
            b_sys[k0:k1] += f @ w_mat[g].ravel()
    diag = np.diag(g_sys).copy()
    # The floor keeps a centroid whose inputs are always zero (diag 0, so no information) at its k-means value.
    damp = ridge * (diag + 1e-9 * max(float(diag.mean()), 1e-300))
    lhs = g_sys + np.diag(damp)
    rhs = b_sys + damp * c0
    try:
        return np.linalg.solve(lhs, rhs)
    except np.linalg.LinAlgError:  # ridge = 0 and a singular G
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]
