"""The relative-index sparse format: the functions the stack encodes and decodes with (zero runs, fillers, entry
placement, gap statistics, decoding), its boundaries, and gaps that run past the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.codecs.csr import csr_decode, fillers, gap_counts, place_entries, zero_runs
from onnxcomp.errors import CodecError
from tests.codecs.helpers import clustered, same_bits


def _encode(x: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """What the stack does for float values: entries of the nonzeros' bit patterns."""
    bits = x.reshape(-1).view(f"u{x.dtype.itemsize}")
    positions, runs = zero_runs(bits)
    return place_entries(bits[positions], runs, gap_bits)


def _decode(values: np.ndarray, gaps: np.ndarray, x: np.ndarray) -> np.ndarray:
    return csr_decode(values, gaps, x.size).view(x.dtype)


def test_zero_runs_are_about_bit_patterns():
    x = np.array([0.0, -0.0, 0.0, 0.0, np.nan, 1.0, 0.0], np.float32)
    positions, runs = zero_runs(x)  # floats are read as their bit patterns: -0.0 and NaN are not zero
    assert positions.tolist() == [1, 4, 5] and runs.tolist() == [1, 2, 0]
    assert zero_runs(np.zeros(5, np.float32))[0].size == 0


@pytest.mark.parametrize("gap_bits", [1, 2, 3])
def test_csr_gap_boundaries(gap_bits):
    top = (1 << gap_bits) - 1
    for run, nfill in ((0, 0), (top, 0), (top + 1, 1), (2 * top + 1, 1), (2 * top + 2, 2)):
        x = np.zeros(run + 2, np.float32)
        x[run] = 1.5
        values, gaps = _encode(x, gap_bits)
        assert values.size == nfill + 1 and (gaps[:nfill] == top).all() and (values[:nfill] == 0).all()
        assert gaps.max() <= top and gaps.dtype == np.uint16
        assert fillers(zero_runs(x)[1], gap_bits) == nfill
        assert same_bits(_decode(values, gaps, x), x)


def test_csr_roundtrip_and_gap_counts():
    for seed in range(5):
        x = clustered(5000, 8, sparsity=0.3 + 0.15 * seed, seed=seed)
        runs = zero_runs(x)[1]
        for b in (1, 4, 9, 16):
            values, gaps = _encode(x, b)
            assert values.size == np.count_nonzero(x) + fillers(runs, b)
            assert np.array_equal(gap_counts(runs, b), np.bincount(gaps, minlength=1 << b))  # pricing == encoding
            assert same_bits(_decode(values, gaps, x), x)


def test_codebook_indices_take_the_same_entries():
    x = np.array([0, 0, 3, 0, 0, 0, 0, 0, 1, 2], np.uint8)
    positions, runs = zero_runs(x)
    symbols, gaps = place_entries(x[positions].astype(np.uint16), runs, 2)
    assert symbols.tolist() == [3, 0, 1, 2] and gaps.tolist() == [2, 3, 1, 0]  # one filler bridges 5 zeros
    assert np.array_equal(csr_decode(symbols, gaps, x.size), x)


def test_csr_refuses_gaps_past_the_end_and_mismatched_entries():
    with pytest.raises(CodecError, match="reach position 7 of a tensor of 6"):
        csr_decode(np.ones(2, np.float32), np.array([3, 3], np.uint16), 6)
    with pytest.raises(CodecError, match="2 values but 1 gaps"):
        csr_decode(np.ones(2, np.float32), np.array([0], np.uint16), 6)
    assert csr_decode(np.zeros(0, np.float32), np.zeros(0, np.uint16), 4).tolist() == [0, 0, 0, 0]
