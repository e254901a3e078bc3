"""Deep Compression's relative-index sparse format for a flattened weight (Han et al., ICLR 2016, section 2).

Each stored entry is a value and a *gap*: the number of positions skipped since the previous entry (or since
the start), so that the entry lands at ``previous + gap + 1``; this is the paper's relative index minus one,
which puts all ``2**b`` codes of a ``b``-bit gap to use. A run of zeros longer than ``2**b - 1`` is bridged by
*filler* entries of value 0 and gap ``2**b - 1``, each covering ``2**b`` positions. For a nonzero preceded by
``r`` zeros there are ``r >> b`` fillers and its own gap is ``r & (2**b - 1)``. Zeros after the last nonzero
take no entry (the decoder knows the size).

Cost with ``v``-bit values: ``(nnz + fillers(b)) * (v + b)`` bits; :mod:`onnxcomp.codecs.stack` prices every
``b`` in 1..16 in exact blob bytes (with the gaps bit-packed or Huffman coded from :func:`gap_counts`) and keeps
the cheapest. Everything is exact: decoding puts every stored value back at its position, the rest is zero.

The encoder is :func:`zero_runs` then :func:`place_entries` (the values may be raw bit patterns or codebook
indices), the decoder :func:`csr_decode`; ``kernels/FORMAT.md`` is the byte-level contract.
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


def gap_counts(runs: np.ndarray, gap_bits: int, nfill: int | None = None) -> np.ndarray:
    """How often each gap symbol ``0 .. 2**b - 1`` occurs among all entries, fillers included (for pricing);
    ``nfill`` is :func:`fillers` when the caller already has it."""
    counts = np.bincount(runs & ((1 << gap_bits) - 1), minlength=1 << gap_bits)
    counts[-1] += fillers(runs, gap_bits) if nfill is None else nfill  # every filler's gap is the top symbol
    return counts


def place_entries(values: np.ndarray, runs: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(entry values, entry gaps): the nonzeros' ``values`` (one per run) with filler entries (value 0, gap
    ``2**b - 1``) before each nonzero whose zero run overflows b bits; gaps are uint16."""
    fill = runs >> gap_bits
    slot = np.arange(values.size) + np.cumsum(fill)  # where each nonzero lands among all entries
    total = values.size + int(fill.sum())
    out_values = np.zeros(total, dtype=values.dtype)
    out_gaps = np.full(total, (1 << gap_bits) - 1, dtype=np.uint16)
    out_values[slot] = values
    out_gaps[slot] = runs & ((1 << gap_bits) - 1)
    return out_values, out_gaps


def csr_decode(values: np.ndarray, gaps: np.ndarray, size: int) -> np.ndarray:
    """The dense 1-D array of ``size`` elements (zeros where no entry is stored); raises :class:`CodecError`
    when the entries run past ``size``."""
    values = np.asarray(values).reshape(-1)
    if values.size != np.asarray(gaps).size:
        raise CodecError(f"sparse entries disagree: {values.size} values but {np.asarray(gaps).size} gaps")
    # Entry i lands at sum(gaps[:i + 1] + 1) - 1: strictly increasing, so only the last can be out of range.
    positions = np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1
    if positions.size and positions[-1] >= size:
        raise CodecError(f"sparse gaps reach position {int(positions[-1])} of a tensor of {size} elements")
    out = np.zeros(size, dtype=values.dtype)
    out[positions] = values
    return out


def _bits(flat: np.ndarray) -> np.ndarray:
    """The array's bit patterns as unsigned integers: +0.0 is zero, -0.0 and NaNs are not."""
    if flat.dtype.kind == "f":
        return flat.view(f"u{flat.dtype.itemsize}")
    return flat
