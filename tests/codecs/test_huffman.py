"""Canonical length-limited Huffman: round trips, exact sizes, the code construction, and garbage (including
crafted tables and streams) that must fail with a CodecError, never another exception."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from onnxcomp.codecs import huffman
from onnxcomp.codecs.bitpack import pack_bits
from onnxcomp.errors import CodecError

RNG = np.random.default_rng(0)


def _table(alphabet: int, count: int, longest: int, chunk_log2: int, lengths: list[int],
           extra: list[int]) -> np.ndarray:
    """A table written field by field: header, code lengths, chunk lengths beyond one bit a symbol."""
    off_width = max(1, (1 << chunk_log2) * (max(1, longest) - 1)).bit_length()
    body = pack_bits(np.array(lengths), max(1, longest).bit_length()).tobytes() + pack_bits(np.array(extra),
                                                                                          off_width).tobytes()
    return np.frombuffer(struct.pack("<IQBBH", alphabet, count, longest, chunk_log2, 0) + body, np.uint8)


def test_huffman_million_symbols_roundtrip():
    symbols = np.minimum(RNG.geometric(0.3, 1_000_000) - 1, 40).astype(np.uint8)
    table, stream = huffman.encode(symbols)
    assert np.array_equal(huffman.decode(table, stream), symbols)
    counts = np.bincount(symbols)
    lengths = huffman.code_lengths(counts)
    assert huffman.encoded_size(counts, lengths) == (table.size, stream.size)
    entropy = -(counts / counts.sum() * np.log2(np.maximum(counts, 1) / counts.sum())).sum()
    assert 8 * stream.size / symbols.size < entropy + 0.05  # Huffman is within a fraction of a bit of entropy


def test_huffman_lengths_are_limited_and_complete():
    fib = np.array([1, 1], dtype=np.int64)
    while fib.size < 30:
        fib = np.append(fib, fib[-1] + fib[-2])  # Fibonacci counts: an unlimited code would be 29 bits deep
    lengths = huffman.code_lengths(fib)
    assert lengths.max() == 16
    assert np.sum(2.0 ** -lengths.astype(float)) == 1.0  # Kraft equality: a complete prefix code
    symbols = RNG.permutation(np.repeat(np.arange(fib.size), fib))
    table, stream = huffman.encode(symbols)
    assert np.array_equal(huffman.decode(table, stream), symbols)


@pytest.mark.parametrize("symbols", [np.zeros(0, np.uint16), np.zeros(1, np.uint16), np.full(5000, 7, np.uint16),
                                     np.arange(65536, dtype=np.uint16), np.array([0, 1] * 3000, np.uint16)])
def test_huffman_edge_cases(symbols):
    table, stream = huffman.encode(symbols)
    out = huffman.decode(table, stream)
    assert out.size == symbols.size and np.array_equal(out, symbols)


@pytest.mark.parametrize("chunk", [1, 2, 256, 4096])
def test_any_power_of_two_chunk_decodes(chunk):
    symbols = np.minimum(RNG.geometric(0.4, 5000) - 1, 12).astype(np.uint8)
    table, stream = huffman.encode(symbols, chunk=chunk)
    assert huffman.parse_table(table)[3] == chunk
    assert np.array_equal(huffman.decode(table, stream), symbols)


def test_default_chunk_is_about_the_square_root():
    assert [huffman.default_chunk(n) for n in (0, 1000, 70000, 300000, 10**8)] == [256, 256, 512, 1024, 2048]


def test_huffman_canonical_codes_are_prefix_free():
    lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4, 0], dtype=np.uint8)
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths) if n]
    assert words == ["010", "011", "100", "101", "110", "00", "1110", "1111"]  # RFC 1951 3.2.2 example


def test_stream_is_msb_first():
    table, stream = huffman.encode(np.array([0, 1, 1, 2] * 64, np.uint8))  # lengths 2, 1, 2: codes 10, 0, 11
    assert huffman.parse_table(table)[4].tolist() == [2, 1, 2]
    assert stream[0] == 0b10001110  # "10" "0" "0" "11", then the first bit of the next "10": MSB first


def test_huffman_garbage_fails_cleanly():
    symbols = np.minimum(RNG.geometric(0.3, 20000) - 1, 40).astype(np.uint8)
    table, stream = huffman.encode(symbols)
    for _ in range(300):
        t, s = table.copy(), stream.copy()
        t[RNG.integers(t.size)] ^= np.uint8(1 << RNG.integers(8))
        try:
            huffman.decode(t, s)
        except CodecError:
            pass
    for _ in range(100):
        s = stream.copy()
        s[RNG.integers(s.size)] ^= np.uint8(1 << RNG.integers(8))
        try:
            huffman.decode(table, s)
        except CodecError:
            pass
    with pytest.raises(CodecError):
        huffman.decode(table[:10], stream)
    with pytest.raises(CodecError):
        huffman.decode(table, stream[:-1])


def test_patterns_that_are_no_code_never_read_past_the_stream():
    """An incomplete code ('0' only) over a stream of ones: every step hits a pattern that starts no code. The
    decoder used to advance 31 bits on such a pattern and index past its padding (IndexError)."""
    table = _table(1, 280, 1, 9, [1], [0])
    with pytest.raises(CodecError, match="no code of its table"):
        huffman.decode(table, np.full(35, 0xFF, np.uint8))
    for count, chunk_log2 in ((256, 8), (4096, 12), (3 * 4096, 12), (300, 8)):
        nchunks = -(-count // (1 << chunk_log2))
        with pytest.raises(CodecError):
            huffman.decode(_table(1, count, 1, chunk_log2, [1], [0] * nchunks), np.full(-(-count // 8), 0xFF, np.uint8))


def test_padding_bits_are_ignored():
    """Bits after the last code (padding of the last byte) are not part of any symbol, whatever their value."""
    symbols = np.zeros(300, np.uint8)  # one symbol: code '0', the pattern '1' is no code; 2 chunks of 256 and 44
    table, stream = huffman.encode(symbols, chunk=256)
    assert stream.size == 38  # 300 bits: the last byte holds 4 bits of padding
    dirty = stream.copy()
    dirty[-1] |= 0x0F
    assert np.array_equal(huffman.decode(table, dirty), symbols)


def test_crafted_tables_are_refused():
    bad = {
        "header is invalid": _table(2, 8, 17, 8, [1, 1], [0]),
        "has symbols but no codes": _table(2, 8, 0, 8, [0, 0], [0]),
        "disagree with its longest code": _table(2, 8, 2, 8, [1, 1], [0]),
        "oversubscribed": _table(3, 8, 1, 8, [1, 1, 1], [0]),
        "inconsistent with the symbol count": _table(2, 8, 2, 8, [1, 2], [15]),
    }
    for message, table in bad.items():
        with pytest.raises(CodecError, match=message):
            huffman.decode(table, np.full(2, 0x55, np.uint8))
    with pytest.raises(CodecError, match="expected 18"):
        huffman.parse_table(np.concatenate([_table(2, 8, 1, 8, [1, 1], [0]), [0]]).astype(np.uint8))
    with pytest.raises(CodecError, match="0 symbols"):
        huffman.decode(_table(0, 0, 0, 8, [], []), np.zeros(1, np.uint8))


def test_encoder_refuses_bad_input():
    with pytest.raises(CodecError, match="power of two"):
        huffman.encode(np.zeros(4, np.uint8), chunk=3)
    with pytest.raises(CodecError, match="non-negative"):
        huffman.encode(np.array([-1, 2]))
    with pytest.raises(CodecError, match="cover every symbol"):
        huffman.encode(np.array([0, 1, 2], np.uint8), lengths=np.array([1, 1, 0], np.uint8))
    with pytest.raises(CodecError, match="alphabet"):
        huffman.code_lengths(np.ones(65537))
