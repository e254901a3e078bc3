"""Deep Compression's relative-index sparse format for a flattened weight (Han et al., ICLR 2016, section 2).

Each stored entry is a value and a *gap*: the number of positions skipped since the previous entry (or since
the start), so that the entry lands at ``previous + gap + 1``; this is the paper's relative index minus one,
which puts all ``2**b`` codes of a ``b``-bit gap to use. A run of zeros longer than ``2**b - 1`` is bridged by
*filler* entries of value 0 and gap ``2**b - 1``, each covering ``2**b`` positions. For a nonzero preceded by
``r`` zeros there are ``r >> b`` fillers and its own gap is ``r & (2**b - 1)``. Zeros after the last nonzero
take no entry (the decoder knows the size).

Cost with ``v``-bit values: ``(nnz + fillers(b)) * (v + b)`` bits; :func:`best_gap_bits` minimises it over
b in 1..16. Everything is exact: decoding puts every stored value back at its position, the rest is zero.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.errors import CodecError

MAX_GAP_BITS = 16


def zero_runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the nonzeros, zeros skipped before each). "Zero" is the all-zero bit pattern (+0.0)."""
    positions = np.flatnonzero(_bits(flat))
    runs = np.diff(positions, prepend=-1) - 1
    return positions, runs


def fillers(runs: np.ndarray, gap_bits: int) -> int:
    """How many filler entries ``gap_bits``-bit gaps need for these zero runs."""
    return int((runs >> gap_bits).sum())


def csr_encode(flat: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(values with fillers, gaps) of a 1-D array; gaps are below ``2**gap_bits`` (uint16)."""
    _check_gap_bits(gap_bits)
    flat = np.asarray(flat).reshape(-1)
    positions, runs = zero_runs(flat)
    return place_entries(flat[positions], runs, gap_bits)


def place_entries(values: np.ndarray, runs: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Interleave filler entries (value 0, gap ``2**b - 1``) before nonzeros whose zero run overflows b bits."""
    fill = runs >> gap_bits
    slot = np.arange(values.size) + np.cumsum(fill)  # where each nonzero lands among all entries
    total = values.size + int(fill.sum())
    out_values = np.zeros(total, dtype=values.dtype)
    out_gaps = np.full(total, (1 << gap_bits) - 1, dtype=np.uint16)
    out_values[slot] = values
    out_gaps[slot] = runs & ((1 << gap_bits) - 1)
    return out_values, out_gaps


def csr_positions(gaps: np.ndarray, size: int) -> np.ndarray:
    """Positions of the entries; raises :class:`CodecError` when they run past ``size``."""
    positions = np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1
    if positions.size and positions[-1] >= size:
        raise CodecError(f"sparse gaps reach position {int(positions[-1])} of a tensor of {size} elements")
    return positions


def csr_decode(values: np.ndarray, gaps: np.ndarray, size: int) -> np.ndarray:
    """The dense 1-D array of ``size`` elements (zeros where no entry is stored)."""
    values = np.asarray(values).reshape(-1)
    if values.size != np.asarray(gaps).size:
        raise CodecError(f"sparse entries disagree: {values.size} values but {np.asarray(gaps).size} gaps")
    out = np.zeros(size, dtype=values.dtype)
    out[csr_positions(gaps, size)] = values
    return out


def best_gap_bits(flat: np.ndarray, value_bits: int) -> int:
    """The gap width in 1..16 that minimises ``(nnz + fillers) * (value_bits + b)``."""
    return best_gap_bits_for_runs(zero_runs(np.asarray(flat).reshape(-1))[1], value_bits)


def best_gap_bits_for_runs(runs: np.ndarray, value_bits: int) -> int:
    costs = [gap_cost_bits(runs, b, value_bits) for b in range(1, MAX_GAP_BITS + 1)]
    return int(np.argmin(costs)) + 1  # the narrowest width among equals


def gap_cost_bits(runs: np.ndarray, gap_bits: int, value_bits: int) -> int:
    return (runs.size + fillers(runs, gap_bits)) * (value_bits + gap_bits)


def _bits(flat: np.ndarray) -> np.ndarray:
    """The array's bit patterns as unsigned integers: +0.0 is zero, -0.0 and NaNs are not."""
    if flat.dtype.kind == "f":
        return flat.view(f"u{flat.dtype.itemsize}")
    return flat


def _check_gap_bits(gap_bits: int) -> None:
    if not isinstance(gap_bits, (int, np.integer)) or not 1 <= gap_bits <= MAX_GAP_BITS:
        raise CodecError(f"gap width {gap_bits!r} is not supported: use 1..{MAX_GAP_BITS}")
