"""The storage codecs: exact round trips, the cheapest-encoding choice, and garbage that must fail cleanly.

Every decoded tensor is compared bit for bit (as unsigned integers), so -0.0 and NaN payloads count.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from onnxcomp.codecs import huffman
from onnxcomp.codecs.bitpack import pack_bits, unpack_bits
from onnxcomp.codecs.csr import best_gap_bits, csr_decode, csr_encode, gap_cost_bits, zero_runs
from onnxcomp.codecs.stack import (
    SECTION_KINDS,
    EncodedWeight,
    decode_weight,
    dense_codebook,
    encode_weight,
    from_blob,
    to_blob,
)
from onnxcomp.errors import CodecError, OnnxcompError

RNG = np.random.default_rng(0)
OPTIONS = [{}, {"allow_huffman": False}, {"allow_sparse": False}, {"allow_codebook": False},
           {"allow_sparse": False, "allow_codebook": False}]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def _clustered(shape, levels: int, sparsity: float, dtype=np.float32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    book = rng.standard_normal(levels).astype(dtype)
    book[book == 0] = 1
    w = book[rng.integers(0, levels, shape)]
    w[rng.random(shape) < sparsity] = 0
    return w


def _roundtrip(x: np.ndarray, **options) -> EncodedWeight:
    enc = encode_weight(x, name="W", **options)
    blob = to_blob(enc)
    assert blob.dtype == np.uint8 and blob.ndim == 1
    sizes = enc.bytes_by_section()
    assert tuple(sizes) == SECTION_KINDS and sum(sizes.values()) == blob.size == enc.nbytes
    back = from_blob(blob, "W")
    assert back == enc
    assert _same_bits(decode_weight(back), np.asarray(x))
    return enc


# -- bitpack ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(1, 17))
def test_bitpack_roundtrip_and_layout(bits):
    for n in (0, 1, 7, 8, 9, 1001):
        values = RNG.integers(0, 1 << bits, n)
        packed = pack_bits(values, bits)
        reference = np.packbits(((values[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1),
                                bitorder="little")
        assert np.array_equal(packed, reference)  # LSB-first, value i at bits [i*bits, (i+1)*bits)
        assert np.array_equal(unpack_bits(packed, bits, n), values)


def test_bitpack_refuses_bad_input():
    with pytest.raises(CodecError):
        pack_bits(np.array([4]), 2)
    with pytest.raises(CodecError):
        pack_bits(np.array([1]), 17)
    with pytest.raises(CodecError):
        unpack_bits(np.zeros(1, np.uint8), 3, 5)  # 15 bits need 2 bytes


# -- huffman ----------------------------------------------------------------------------------------------
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


def test_huffman_canonical_codes_are_prefix_free():
    lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4, 0], dtype=np.uint8)
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths) if n]
    assert words == ["010", "011", "100", "101", "110", "00", "1110", "1111"]  # RFC 1951 3.2.2 example


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
    with pytest.raises(CodecError):
        huffman.decode(table[:10], stream)
    with pytest.raises(CodecError):
        huffman.decode(table, stream[:-1])


# -- csr --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gap_bits", [2, 3])
def test_csr_gap_boundaries(gap_bits):
    top = (1 << gap_bits) - 1
    for run, fillers in ((top, 0), (top + 1, 1), (2 * top + 1, 1), (2 * top + 2, 2)):
        x = np.zeros(run + 2, np.float32)
        x[run] = 1.5
        values, gaps = csr_encode(x, gap_bits)
        assert values.size == fillers + 1 and (gaps[:fillers] == top).all() and (values[:fillers] == 0).all()
        assert gaps.max() <= top
        assert _same_bits(csr_decode(values, gaps, x.size), x)


def test_csr_roundtrip_and_best_gap_bits():
    for seed in range(5):
        x = _clustered(5000, 8, sparsity=0.3 + 0.15 * seed, seed=seed)
        runs = zero_runs(x)[1]
        for b in (1, 4, 16):
            values, gaps = csr_encode(x, b)
            assert _same_bits(csr_decode(values, gaps, x.size), x)
        best = best_gap_bits(x, 4)
        assert gap_cost_bits(runs, best, 4) == min(gap_cost_bits(runs, b, 4) for b in range(1, 17))


def test_csr_refuses_gaps_past_the_end():
    with pytest.raises(CodecError):
        csr_decode(np.ones(2, np.float32), np.array([3, 3], np.uint16), 6)


# -- stack ------------------------------------------------------------------------------------------------
CASES = {
    "all zeros": np.zeros((300, 7), np.float32),
    "no zeros": RNG.standard_normal((64, 64)).astype(np.float32),
    "one element": np.array([3.5], np.float32),
    "one zero": np.zeros(1, np.float32),
    "empty": np.zeros((0, 3), np.float32),
    "1 distinct value": np.full((100, 100), 0.25, np.float32),
    "256 distinct values": RNG.permutation(np.repeat(np.arange(1, 257, dtype=np.float32), 10)).reshape(64, 40),
    "257 distinct values": np.repeat(np.arange(257, dtype=np.float32), 9),
    "float16 clustered": _clustered((128, 64), 16, 0.8, np.float16),
    "float16 dense": RNG.standard_normal(5000).astype(np.float16),
    "float64 clustered": _clustered((50, 60), 5, 0.5, np.float64),
    "-0.0 and NaN": np.array([0.0, -0.0, 1.0, np.nan, np.inf] * 400, np.float32),
    "90% sparse 16 levels": _clustered((300, 784), 16, 0.9),
    "99% sparse float": np.where(RNG.random(50000) < 0.99, 0, RNG.standard_normal(50000)).astype(np.float32),
    "runs of 2^b-1 and 2^b": np.tile(np.r_[np.zeros(15), 1.0, np.zeros(16), 2.0], 100).astype(np.float32),
    "non-contiguous": _clustered((80, 90), 4, 0.5).T,
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "all")
def test_stack_roundtrip_exact(name, options):
    _roundtrip(CASES[name], **options)


def test_stack_picks_the_cheapest():
    x = CASES["90% sparse 16 levels"]
    best = _roundtrip(x)
    # 16 levels, plus 0.0 when the chosen gap width needs filler entries
    assert best.scheme == "sparse" and best.meta["k"] in (16, 17) and best.meta["gap_coding"] == "huffman"
    assert best.nbytes * 15 < x.nbytes  # 4-bit gaps and indices, Huffman coded, ~2 bytes per nonzero
    for options in OPTIONS[1:]:  # the full search is never worse than any restricted one
        assert best.nbytes <= encode_weight(x, **options).nbytes
    assert encode_weight(x, allow_huffman=False).scheme == "sparse"
    assert encode_weight(CASES["no zeros"]).scheme == "plain"
    assert encode_weight(CASES["1 distinct value"]).nbytes < 200
    dense = encode_weight(CASES["256 distinct values"])
    assert dense.scheme == "codebook" and dense.meta["index_bits"] == 8


def test_dense_codebook_puts_zero_first():
    x = np.array([[0.5, 0.0], [-1.0, 0.5]], np.float32)
    book, index = dense_codebook(x)
    assert book[0] == 0 and index.dtype == np.uint8 and index.shape == x.shape
    assert _same_bits(book[index], x)
    assert dense_codebook(np.arange(300, dtype=np.float32)) is None


def test_stack_is_deterministic():
    x = CASES["90% sparse 16 levels"]
    assert np.array_equal(to_blob(encode_weight(x)), to_blob(encode_weight(x.copy())))


def test_stack_refuses_other_dtypes():
    with pytest.raises(CodecError, match="dtype"):
        encode_weight(np.arange(10, dtype=np.int32))


# -- corrupted blobs: CodecError with one line naming the weight, never another exception ---------------------
BLOBS = [to_blob(encode_weight(CASES["90% sparse 16 levels"][:50])),
         to_blob(encode_weight(CASES["90% sparse 16 levels"][:50], allow_huffman=False)),
         to_blob(encode_weight(CASES["float16 clustered"], allow_sparse=False)),
         to_blob(encode_weight(CASES["no zeros"][:8]))]


def _assert_codec_error(blob) -> str:
    with pytest.raises(CodecError) as info:
        decode_weight(from_blob(blob, "W"))
    message = str(info.value)
    assert message.startswith("malformed packed weight 'W': ") and "\n" not in message
    assert isinstance(info.value, OnnxcompError)
    return message


@pytest.mark.parametrize("blob", BLOBS, ids=["huffman", "packed", "codebook", "plain"])
def test_corrupt_blobs_raise_codec_error(blob):
    for i in np.linspace(0, blob.size - 1, 60).astype(int):
        bad = blob.copy()
        bad[i] ^= 0x10
        message = _assert_codec_error(bad)
        assert "CRC" in message or i < 16
    for n in np.linspace(0, blob.size - 1, 40).astype(int):
        _assert_codec_error(blob[:n])
    wrong = blob.copy()
    wrong[:4] = np.frombuffer(b"ABCD", np.uint8)
    assert "magic" in _assert_codec_error(wrong)
    newer = blob.copy()
    newer[4] = 9
    assert "version" in _assert_codec_error(newer)
    for n in (0, 3, 16, 100, 5000):
        _assert_codec_error(RNG.integers(0, 256, n).astype(np.uint8))
    _assert_codec_error(np.concatenate([blob, np.zeros(3, np.uint8)]))


def _reseal(meta: dict, payload: bytes) -> np.ndarray:
    """A blob with a valid CRC around edited meta: checks past the CRC must still catch it."""
    body = json.dumps(meta).encode() + payload
    head = struct.pack("<4sHHII", b"OCPW", 1, 0, len(body) - len(payload), zlib.crc32(body))
    return np.frombuffer(head + body, np.uint8)


def test_valid_crc_but_inconsistent_meta_raises_codec_error():
    enc = encode_weight(CASES["90% sparse 16 levels"][:50])
    meta = json.loads(enc.header_json())
    payload = b"".join(enc.sections.values())
    edits = [("shape", [10**12]), ("shape", [-1]), ("shape", "x"), ("dtype", "int8"), ("scheme", "zip"),
             ("scheme", {}), ("k", 0), ("k", 300), ("count", 10**9), ("gap_bits", 0), ("gap_bits", 17),
             ("gap_coding", "lz4"), ("index_bits", 9), ("sections", [["values", 1]]), ("sections", "x"),
             ("index_coding", None), ("extra", 1)]
    for key, value in edits:
        edited = dict(meta, **{key: value})
        _assert_codec_error(_reseal(edited, payload))
    _assert_codec_error(_reseal(meta, payload[:-1]))
    _assert_codec_error(_reseal(meta, payload[:-2] + b"\xff\xff"))  # gaps past the end, or a broken code
    _assert_codec_error(np.frombuffer(struct.pack("<4sHHII", b"OCPW", 1, 0, 2, zlib.crc32(b"[]")) + b"[]", np.uint8))


def _reseal_binary(meta: bytes, payload: bytes) -> np.ndarray:
    body = meta + payload
    head = struct.pack("<4sHHII", b"OCPW", 2, 0, len(meta), zlib.crc32(body))
    return np.frombuffer(head + body, np.uint8)


def test_binary_meta_is_small_and_checked():
    array = CASES["90% sparse 16 levels"][:50]
    enc = encode_weight(array)
    meta, payload = enc.header_binary(), b"".join(enc.sections.values())
    assert len(meta) < 25 < len(enc.header_json())
    np.testing.assert_array_equal(decode_weight(from_blob(_reseal_binary(meta, payload))), array)
    _assert_codec_error(_reseal_binary(meta[:-1], payload))  # truncated meta
    _assert_codec_error(_reseal_binary(meta + b"\x00", payload))  # trailing bytes
    _assert_codec_error(_reseal_binary(bytes([9]) + meta[1:], payload))  # unknown dtype code
    _assert_codec_error(_reseal_binary(meta[:1] + bytes([7]) + meta[2:], payload))  # unknown scheme code
    _assert_codec_error(_reseal_binary(meta[:2] + b"\xff" * 12 + meta[3:], payload))  # runaway varint


def test_version_1_json_blobs_still_decode():
    array = CASES["90% sparse 16 levels"]
    enc = encode_weight(array)
    body = enc.header_json() + b"".join(enc.sections.values())
    old = struct.pack("<4sHHII", b"OCPW", 1, 0, len(enc.header_json()), zlib.crc32(body)) + body
    np.testing.assert_array_equal(decode_weight(from_blob(np.frombuffer(old, np.uint8))), array)


def test_encoded_nbytes_is_the_blob_size() -> None:
    """Passes price widths with encoded_nbytes: it must equal the bytes encode_weight writes, for every stack."""
    from onnxcomp.codecs.stack import encode_weight, encoded_nbytes, to_blob

    rng = np.random.default_rng(0)
    arrays = [rng.integers(-7, 8, 5000).astype(np.int8), np.round(rng.standard_normal(3000) * 2).astype(np.int8),
              rng.standard_normal(2000).astype(np.float32),
              np.where(rng.random(4000) < 0.8, 0, rng.standard_normal(4000)).astype(np.float32),
              rng.integers(0, 4, 3000).astype(np.uint8)]
    for a in arrays:
        assert encoded_nbytes(a) == len(to_blob(encode_weight(a)))


@pytest.mark.parametrize("sparse", [False, True])
def test_float16_exact_codebook_is_stored_at_half_size(sparse: bool) -> None:
    rng = np.random.default_rng(3)
    levels = rng.standard_normal(16).astype(np.float16).astype(np.float32)  # every level is a float16
    array = levels[rng.integers(0, 16, 4000)]
    if sparse:
        array[rng.random(4000) < 0.8] = 0.0
    enc = encode_weight(array)
    assert enc.meta.get("book_dtype") == "float16" and enc.meta["k"] >= 16
    assert len(enc.sections["codebook"]) == 2 * enc.meta["k"]
    blob = to_blob(enc)
    assert struct.unpack_from("<4sHH", blob.tobytes())[2] == 1  # the header flag
    np.testing.assert_array_equal(decode_weight(from_blob(blob)), array)  # bit-exact, float32 out
    # Must not fire: one level that is not a float16 keeps the whole codebook in float32.
    array[np.flatnonzero(array)[0]] = np.float32(0.1)
    enc = encode_weight(array)
    assert "book_dtype" not in enc.meta
    np.testing.assert_array_equal(decode_weight(from_blob(to_blob(enc))), array)


def test_float16_codebook_flag_is_checked() -> None:
    enc = encode_weight(np.float32([0.5, 0.25, 0.5, -1.0] * 100))
    assert enc.meta["book_dtype"] == "float16"
    meta, payload = enc.header_binary(), b"".join(enc.sections.values())
    body = meta + payload

    def blob(flags: int, version: int = 2, body: bytes = body, meta_len: int = len(meta)) -> np.ndarray:
        return np.frombuffer(struct.pack("<4sHHII", b"OCPW", version, flags, meta_len, zlib.crc32(body)) + body,
                             np.uint8)

    np.testing.assert_array_equal(decode_weight(from_blob(blob(1))), np.float32([0.5, 0.25, 0.5, -1.0] * 100))
    _assert_codec_error(blob(0))  # without the flag the codebook section is the wrong size
    _assert_codec_error(blob(2))  # unknown flag bit
    ints = encode_weight(np.int8([1, -3, 2, 1] * 100))
    imeta = ints.header_binary()
    ibody = imeta + b"".join(ints.sections.values())
    _assert_codec_error(blob(1, body=ibody, meta_len=len(imeta)))  # a float16 codebook for int8 codes


def test_exactly_float16_is_bit_exact() -> None:
    from onnxcomp.codecs.stack import exactly_float16

    halves = np.float16([0.5, -0.0, 65504.0, 6e-8]).astype(np.float32)
    assert exactly_float16(halves) and exactly_float16(halves.astype(np.float64))
    assert not exactly_float16(np.float32([0.5, 0.1]))  # 0.1 is not a float16
    assert not exactly_float16(np.float32([1e5]))  # beyond float16's range
    assert not exactly_float16(np.array([0x7FC00001], np.uint32).view(np.float32))  # a NaN payload float16 loses
    assert not exactly_float16(np.int8([1, 2])) and not exactly_float16(halves.astype(np.float16))
