"""Channel importance for filter pruning, aggregated over a channel group (analysis only).

Every criterion scores the positions of the slots a group's channels touch, normalises each slot's scores by
their mean (layers of different scale become comparable, as Torch-Pruning's ``normalizer='mean'``), and averages
the normalised scores of every slot an atom appears in:

- ``l1`` / ``l2``: norm of a layer's filter (its output row) and of its consumers' input columns (Li et al.,
  "Pruning Filters for Efficient ConvNets", 2017);
- ``fpgm``: distance of each filter to the others' geometric median, approximated by the sum of distances to all
  filters of the layer; filters near the median are replaceable (He et al., "Filter Pruning via Geometric
  Median", 2019);
- ``bn``: ``|gamma|`` of the BatchNormalization after the conv (Liu et al., "Network Slimming", 2017);
- ``activation``: the output energy a channel feeds into its consumers, ``E[x_c^2] * ||W[:, c]||^2`` from
  calibration data (streamed; a channel that is always ~0 feeds nothing).

Atoms a criterion cannot score (no BatchNorm after them, no consumer with columns to weigh) are ranked by
``l1`` rather than counted as unimportant.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from onnxcomp.analysis.channel_graph import ChannelGraph, Slot
from onnxcomp.calibration.data import CalibrationData, iter_captures
from onnxcomp.ir.weights import constant_value

CRITERIA = ("l1", "l2", "fpgm", "bn", "activation")
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def importance(cg: ChannelGraph, criterion: str, data: CalibrationData | None = None) -> dict[int, float]:
    """Importance of every atom that some slot scores (higher = keep)."""
    slots = [s for s in cg.slots if s.node.op in _WEIGHTED and s.input == 1 and s.kind in ("out", "in")]
    if criterion in ("l1", "l2"):
        return _aggregate(cg, [(s, _norms(s, criterion)) for s in slots])
    if criterion == "fpgm":
        scored = [(s, _fpgm(s)) for s in slots if s.kind == "out"]
    elif criterion == "bn":
        bn = [s for s in cg.slots if s.node.op == "BatchNormalization" and s.input == 1]
        scored = [(s, np.abs(constant_value(s.node.inputs[1]).astype(np.float64))) for s in bn]
    elif criterion == "activation":
        if data is None:
            raise ValueError("the activation criterion needs calibration data")
        scored = _activation(cg, [s for s in slots if s.kind == "in"], data)
    else:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
    # atoms the criterion cannot see (no BatchNorm, no consumer it can score) are ranked by l1, not taken as 0
    return {**importance(cg, "l1"), **_aggregate(cg, scored)}


def _aggregate(cg: ChannelGraph, scored: list[tuple[Slot, np.ndarray]]) -> dict[int, float]:
    total: dict[int, float] = defaultdict(float)
    count: dict[int, int] = defaultdict(int)
    for slot, score in scored:
        atoms = cg.atoms(slot.ids)
        per_atom: dict[int, float] = defaultdict(float)
        for a, v in zip(atoms.tolist(), score.tolist()):
            per_atom[a] += v
        mean = np.mean(list(per_atom.values())) if per_atom else 0.0
        if mean <= 0:
            continue
        for a, v in per_atom.items():
            total[a] += v / mean
            count[a] += 1
    return {a: total[a] / count[a] for a in total}


def _positions(slot: Slot, dtype=np.float64) -> np.ndarray:
    """The slot's constant as (positions, rest)."""
    w = constant_value(slot.node.inputs[slot.input]).astype(dtype, copy=False)
    return np.moveaxis(w, slot.axis, 0).reshape(w.shape[slot.axis], -1)


def _norms(slot: Slot, kind: str) -> np.ndarray:
    rows = _positions(slot, np.float32)  # float64 sums without a float64 copy of a VGG-sized Gemm
    if kind == "l1":
        return np.abs(rows).sum(axis=1, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))


def _fpgm(slot: Slot) -> np.ndarray:
    rows = _positions(slot)
    sq = (rows ** 2).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * rows @ rows.T, 0.0)
    return np.sqrt(d2).sum(axis=1)


def _activation(cg: ChannelGraph, slots: list[Slot], data: CalibrationData) -> list[tuple[Slot, np.ndarray]]:
    """E[x_c^2] of each consumer's input channel times the squared norm of the columns it feeds."""
    inputs = {id(s): s.node.inputs[0].name for s in slots}
    names = sorted(set(inputs.values()))
    sums = {n: None for n in names}
    count = 0
    for values in iter_captures(cg.model, names, data):
        count += 1
        for n in names:
            x = values[n].astype(np.float64)
            axis = cg.spaces[n].axes[0] if n in cg.spaces and len(cg.spaces[n].axes) == 1 else 1
            moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
            ms = (moved ** 2).mean(axis=1)
            sums[n] = ms if sums[n] is None else sums[n] + ms
    out = []
    for s in slots:
        energy = sums[inputs[id(s)]] / max(count, 1)
        cols = (_positions(s) ** 2).sum(axis=1)
        if energy.shape != cols.shape:
            continue  # a consumer whose channels map to blocks (Flatten -> Gemm) is scored by the others
        out.append((s, energy * cols))
    return out
