"""Writes the golden packed-weight blobs of ``kernels/testdata`` (the conformance set of ``kernels/FORMAT.md``).

Every *valid* case is a seeded array encoded by the real encoder (``encode_weight`` + ``to_blob``), crafted so
that one particular codec stack is the cheapest; the generator checks that this stack was chosen (and fails
otherwise), so that the set keeps covering every stack the encoder can produce. A few valid cases are built by
hand from encoder output (the legacy JSON meta of version 1, Huffman streams with chunk sizes the encoder does
not pick): a decoder must read them, but re-encoding their arrays gives other bytes (``reencode: false``).
Each valid case is ``NAME.blob`` (the raw bytes) and ``NAME.npy`` (the decoded array, exact).

Every *invalid* case is a blob that a decoder must refuse, with the substring of the reference decoder's
message (``onnxcomp.errors.CodecError``) and the stage that raises it (``parse``: ``from_blob``, ``decode``:
``decode_weight``). Crafted blobs carry a valid CRC unless the CRC is what they break, so that the checks behind
it are reached. They are written with this file's own little writer, not the encoder's.

``manifest.json`` lists all of them with the sha256 of every file and of the decoded bytes (``data_sha256``:
the array's little-endian bytes in C order, for decoders that do not read ``.npy``).

Run: ``python kernels/testdata/make_golden.py`` (writes next to this file), ``--check`` (compares instead of
writing; exit 1 on any difference). Deterministic: the same numpy gives the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcomp.codecs import huffman
from onnxcomp.codecs.bitpack import pack_bits
from onnxcomp.codecs.stack import EncodedWeight, decode_weight, encode_weight, from_blob, to_blob
from onnxcomp.errors import CodecError

HERE = Path(__file__).resolve().parent


# -- valid cases ---------------------------------------------------------------------------------------------
@dataclass
class Valid:
    name: str
    covers: str
    make: Callable[[np.random.Generator], np.ndarray]
    expect: dict[str, Any]  # meta fields the chosen stack must have (None: the field must be absent)
    options: dict[str, bool] = field(default_factory=dict)
    checks: tuple[str, ...] = ()  # extra properties, see _check_choice
    seed: int = 0


def _levels(rng: np.random.Generator, k: int, dtype=np.float32, half: bool = False) -> np.ndarray:
    """k distinct nonzero levels; with ``half`` every one is exactly a float16 (random normals are not, which the
    cases' ``book_dtype`` expectations check)."""
    while True:
        book = rng.standard_normal(k)
        book = book.astype(np.float16).astype(dtype) if half else book.astype(dtype)
        if np.unique(book).size == k and np.all(book != 0):
            return book


def _skewed(rng: np.random.Generator, k: int, n: int, ratio: float = 0.6) -> np.ndarray:
    p = ratio ** np.arange(k)
    return rng.choice(k, n, p=p / p.sum())


def _sparse(rng: np.random.Generator, values: np.ndarray, density: float) -> np.ndarray:
    out = values.copy()
    out[rng.random(values.shape) >= density] = 0
    return out


def _specials() -> np.ndarray:
    bits = np.array([0x80000000, 0x7FC00001, 0x7F800000, 0xFF800000, 0x00000001, 0xFFFFFFFF, 0x7F7FFFFF],
                    dtype=np.uint32)
    return bits.view(np.float32)  # -0.0, a NaN payload, +inf, -inf, the smallest denormal, a negative NaN, max


def _fibonacci(n: int) -> np.ndarray:
    fib = [1, 1]
    while len(fib) < n:
        fib.append(fib[-1] + fib[-2])
    return np.array(fib, dtype=np.int64)


PLAIN = {"scheme": "plain"}
VALID = [
    Valid("plain_float32", "plain float32 with -0.0, NaN payloads, infinities, a denormal",
          lambda r: np.concatenate([_specials(), r.standard_normal(57).astype(np.float32)]).reshape(8, 8), PLAIN),
    Valid("plain_float16", "plain float16 (more than 256 distinct values)",
          lambda r: r.standard_normal((20, 30)).astype(np.float16) * np.float16(8), PLAIN),
    Valid("plain_float64", "plain float64", lambda r: r.standard_normal((5, 8)), PLAIN),
    Valid("plain_int8", "plain int8 codes (all 256 values)",
          lambda r: r.permutation(np.tile(np.arange(-128, 128), 2)).astype(np.int8).reshape(2, 16, 16), PLAIN),
    Valid("plain_uint8", "plain uint8 codes", lambda r: r.integers(0, 256, (300,)).astype(np.uint8), PLAIN),
    Valid("plain_scalar", "rank 0 (one element)", lambda r: np.array(3.25, np.float32), PLAIN),
    Valid("plain_empty", "an empty tensor (0 elements, 0-byte values section)",
          lambda r: np.zeros((0, 3), np.float32), PLAIN),
    Valid("plain_empty_int8", "an empty int8 tensor of rank 3", lambda r: np.zeros((2, 0, 5), np.int8), PLAIN),
    Valid("plain_one_zero", "a single +0.0 (plain is cheapest)", lambda r: np.zeros(1, np.float32), PLAIN),
    Valid("codebook_float32_packed", "codebook, float32 entries, bit-packed 4-bit indices",
          lambda r: _levels(r, 16)[r.integers(0, 16, (40, 25))],
          {"scheme": "codebook", "k": 16, "index_coding": "packed", "index_bits": 4, "book_dtype": None}),
    Valid("codebook_float32_huffman", "codebook, 0.0 as entry 0, Huffman indices in 4 chunks (the last partial)",
          lambda r: _sparse(r, _levels(r, 12)[_skewed(r, 12, 1000)], 0.7).reshape(10, 100),
          {"scheme": "codebook", "index_coding": "huffman", "book_dtype": None}, checks=("multichunk", "zero_first")),
    Valid("codebook_half_book_packed", "float32 weight, float16 codebook (flag bit 0), packed indices",
          lambda r: _levels(r, 16, half=True)[r.integers(0, 16, (1000,))],
          {"scheme": "codebook", "k": 16, "index_coding": "packed", "book_dtype": "float16"}),
    Valid("codebook_half_book_float64_huffman", "float64 weight, float16 codebook, Huffman indices",
          lambda r: _levels(r, 10, np.float64, half=True)[_skewed(r, 10, 400, 0.5)].reshape(20, 20),
          {"scheme": "codebook", "index_coding": "huffman", "book_dtype": "float16"}),
    Valid("codebook_float16", "float16 weight (its codebook is float16 without the flag), 3-bit indices",
          lambda r: _levels(r, 8, np.float16)[r.integers(0, 8, (25, 40))],
          {"scheme": "codebook", "k": 8, "index_coding": "packed", "index_bits": 3, "book_dtype": None}),
    Valid("codebook_int8_3bit", "int8 codes of a 3-bit quantized weight, packed 3-bit indices",
          lambda r: r.integers(-4, 4, (50, 40)).astype(np.int8),
          {"scheme": "codebook", "k": 8, "index_coding": "packed", "index_bits": 3}),
    Valid("codebook_uint8_huffman", "uint8 codes, Huffman indices",
          lambda r: np.minimum(r.geometric(0.4, 3000) - 1, 20).astype(np.uint8),
          {"scheme": "codebook", "index_coding": "huffman"}, checks=("multichunk",)),
    Valid("codebook_int8_huffman_len16", "Fibonacci counts: Huffman code lengths limited to 16 bits",
          lambda r: r.permutation(np.repeat(np.arange(18, dtype=np.int8), _fibonacci(18))),
          {"scheme": "codebook", "k": 18, "index_coding": "huffman"}, checks=("longest16", "multichunk")),
    Valid("codebook_k1_constant", "one distinct value: a 1-entry codebook, no index section",
          lambda r: np.full((20, 10), -1.1, np.float32),
          {"scheme": "codebook", "k": 1, "index_coding": "none", "index_bits": 0, "book_dtype": None}),
    Valid("codebook_all_zeros", "all +0.0: a 1-entry float16 codebook of a float32 weight",
          lambda r: np.zeros((30, 7), np.float32),
          {"scheme": "codebook", "k": 1, "index_coding": "none", "book_dtype": "float16"}),
    Valid("codebook_all_zeros_int8", "all-zero int8 codes: a 1-entry codebook", lambda r: np.zeros(210, np.int8),
          {"scheme": "codebook", "k": 1, "index_coding": "none"}),
    Valid("codebook_k256", "256 distinct float32 values: 8-bit packed indices",
          lambda r: r.permutation(np.repeat(_levels(r, 256), 4)).reshape(32, 32),
          {"scheme": "codebook", "k": 256, "index_coding": "packed", "index_bits": 8, "book_dtype": None}),
    Valid("sparse_float32_packed", "sparse, raw float32 values, packed gaps",
          lambda r: _sparse(r, r.standard_normal(1000).astype(np.float32), 0.05),
          {"scheme": "sparse", "k": 0, "gap_coding": "packed"}),
    Valid("sparse_float32_huffman", "sparse, raw float32 values (incl. -0.0 and NaN), Huffman gaps",
          lambda r: np.concatenate([_specials(), _sparse(r, r.standard_normal(1493).astype(np.float32), 0.25)]),
          {"scheme": "sparse", "k": 0, "gap_coding": "huffman"}),
    Valid("sparse_float16_huffman", "sparse, raw float16 values, Huffman gaps",
          lambda r: _sparse(r, r.standard_normal((20, 100)).astype(np.float16), 0.2),
          {"scheme": "sparse", "k": 0, "gap_coding": "huffman"}),
    Valid("sparse_float64_packed", "sparse, raw float64 values, packed gaps",
          lambda r: _sparse(r, r.standard_normal(500), 0.05), {"scheme": "sparse", "k": 0, "gap_coding": "packed"}),
    Valid("sparse_float_fillers", "sparse float values (codebook off) with filler entries (value 0, gap 2^b-1)",
          lambda r: np.concatenate([np.zeros(500), r.standard_normal(30), np.zeros(600),
                                    _sparse(r, r.standard_normal(300), 0.3)]).astype(np.float32),
          {"scheme": "sparse", "k": 0}, options={"allow_codebook": False}, checks=("fillers",)),
    Valid("sparse_all_zeros", "all zeros, codebook off: sparse with 0 entries (empty sections)",
          lambda r: np.zeros((20, 10), np.float64), {"scheme": "sparse", "k": 0, "count": 0},
          options={"allow_codebook": False}),
    Valid("sparse_codebook_packed_packed", "sparse -> codebook, packed indices, packed gaps",
          lambda r: _sparse(r, _levels(r, 6)[r.integers(0, 6, 1000)], 0.1),
          {"scheme": "sparse", "index_coding": "packed", "gap_coding": "packed"}, options={"allow_huffman": False}),
    Valid("sparse_codebook_packed_huffman", "sparse -> codebook, packed indices, Huffman gaps",
          lambda r: _sparse(r, _levels(r, 16)[r.integers(0, 16, 1500)], 0.2),
          {"scheme": "sparse", "index_coding": "packed", "gap_coding": "huffman", "book_dtype": None}),
    Valid("sparse_codebook_huffman_packed", "sparse -> codebook, Huffman indices, packed gaps, with fillers",
          lambda r: _sparse(r, _levels(r, 16)[_skewed(r, 16, 1500)], 0.1),
          {"scheme": "sparse", "index_coding": "huffman", "gap_coding": "packed", "book_dtype": None},
          checks=("fillers",)),
    Valid("sparse_codebook_huffman_huffman", "sparse -> codebook, Huffman indices, Huffman gaps",
          lambda r: _sparse(r, _levels(r, 16)[_skewed(r, 16, 1500, 0.5)], 0.25).reshape(15, 100),
          {"scheme": "sparse", "index_coding": "huffman", "gap_coding": "huffman"}, options={}, seed=3),
    Valid("sparse_codebook_k1", "sparse -> a 1-entry codebook (no index section): only gaps are stored",
          lambda r: _sparse(r, np.full(1000, 0.3, np.float32), 0.1),
          {"scheme": "sparse", "k": 1, "index_coding": "none", "book_dtype": None}),
    Valid("sparse_codebook_fillers", "sparse -> codebook whose entry 0 is the fillers' 0.0 (a long zero run)",
          lambda r: np.concatenate([_sparse(r, _levels(r, 8)[r.integers(0, 8, 500)], 0.3), np.zeros(400),
                                    _sparse(r, _levels(r, 8)[r.integers(0, 8, 500)], 0.3)]).astype(np.float32),
          {"scheme": "sparse", "book_dtype": None}, checks=("fillers", "zero_first")),
    Valid("sparse_codebook_wide_gaps", "3 nonzeros in 1200: gaps wider than 8 bits (unpacked as 16-bit symbols)",
          lambda r: np.bincount([5, 600, 1199], weights=[1.5, -2.0, 3.5], minlength=1200).astype(np.float32),
          {"scheme": "sparse", "gap_coding": "packed", "book_dtype": "float16"}, checks=("widegaps",)),
    Valid("sparse_codebook_half_book", "sparse -> float16 codebook of a float32 weight (flag bit 0)",
          lambda r: _sparse(r, _levels(r, 16, half=True)[r.integers(0, 16, 1500)], 0.1).reshape(3, 500),
          {"scheme": "sparse", "book_dtype": "float16"}),
    Valid("sparse_int8", "sparse -> codebook of int8 codes", lambda r: _sparse(r, r.integers(-3, 4, 3000), 0.1)
          .astype(np.int8), {"scheme": "sparse"}),
]


def _check_choice(case: Valid, enc: EncodedWeight, array: np.ndarray) -> None:
    def fail(why: str) -> None:
        raise SystemExit(f"{case.name}: {why} (the encoder chose {enc.describe()}, meta {enc.meta})")

    for key, want in case.expect.items():
        if want is None and key in enc.meta:
            fail(f"{key} must be absent")
        if want is not None and enc.meta.get(key) != want:
            fail(f"{key} must be {want!r}")
    bits = np.ascontiguousarray(array).reshape(-1).view(f"u{array.dtype.itemsize}")
    nnz = int(np.count_nonzero(bits))
    tables = _tables(enc)
    for check in case.checks:
        if check == "fillers" and not enc.meta["count"] > nnz:
            fail("must hold filler entries")
        if check == "zero_first" and any(enc.sections["codebook"][:array.dtype.itemsize]):
            fail("codebook entry 0 must be 0.0")
        if check == "widegaps" and not enc.meta["gap_bits"] > 8:
            fail("gaps must be wider than 8 bits")
        if check == "multichunk" and not any(t["chunks"] > 1 for t in tables.values()):
            fail("a Huffman stream must have several chunks")
        if check == "longest16" and not any(t["longest"] == 16 for t in tables.values()):
            fail("a Huffman code must be 16 bits long")


def _tables(enc: EncodedWeight) -> dict[str, dict[str, int]]:
    out = {}
    for name, data in enc.sections.items():
        if name.endswith(".huffman"):
            alphabet, count, longest, chunk, _, chunk_bits = huffman.parse_table(np.frombuffer(data, np.uint8))
            out[name] = {"alphabet": alphabet, "count": count, "longest": longest, "chunk": chunk,
                         "chunks": int(chunk_bits.size)}
    return out


# -- hand-built valid cases ------------------------------------------------------------------------------------
def _seal(meta: bytes, sections: bytes, version: int = 2, flags: int = 0) -> bytes:
    body = meta + sections
    return struct.pack("<4sHHII", b"OCPW", version, flags, len(meta), zlib.crc32(body)) + body


def _legacy(enc: EncodedWeight) -> bytes:
    """The same weight with version 1's JSON meta."""
    return _seal(enc.header_json(), b"".join(enc.sections.values()), version=1)


def _rechunk(enc: EncodedWeight, chunk: int) -> bytes:
    """The same weight with its Huffman streams re-cut into chunks of ``chunk`` symbols."""
    sections = dict(enc.sections)
    for name in [n[:-len(".huffman")] for n in enc.sections if n.endswith(".huffman")]:
        table = np.frombuffer(sections[f"{name}.huffman"], np.uint8)
        symbols = huffman.decode(table, np.frombuffer(sections[name], np.uint8))
        lengths = huffman.parse_table(table)[4]
        new_table, stream = huffman.encode(symbols, lengths=lengths, chunk=chunk)
        sections[name], sections[f"{name}.huffman"] = stream.tobytes(), new_table.tobytes()
    return bytes(to_blob(EncodedWeight(enc.shape, enc.dtype, enc.meta, sections)))


def _require(ok: bool, name: str, enc: EncodedWeight) -> None:
    if not ok:
        raise SystemExit(f"{name}: the encoder chose {enc.describe()}, meta {enc.meta}")


def _hand_built() -> list[tuple[str, str, np.ndarray, bytes]]:
    rng = np.random.default_rng(100)
    sparse = _sparse(rng, _levels(rng, 16)[_skewed(rng, 16, 1000)], 0.15)
    halves = _levels(rng, 6, half=True)[_skewed(rng, 6, 800)]
    fib = rng.permutation(np.repeat(np.arange(18, dtype=np.uint8), _fibonacci(18)))
    few = _levels(rng, 5)[_skewed(rng, 5, 300)]
    out = []
    enc = encode_weight(sparse)
    _require(enc.scheme == "sparse" and enc.meta["index_coding"] == "huffman", "legacy_v1_sparse", enc)
    out.append(("legacy_v1_sparse", "version 1 (JSON meta): sparse -> codebook with Huffman indices",
                sparse, _legacy(enc)))
    enc = encode_weight(halves)
    _require(enc.meta.get("book_dtype") == "float16", "legacy_v1_half_book", enc)
    out.append(("legacy_v1_half_book", "version 1 (JSON meta) with \"book_dtype\": \"float16\" (flags 0)",
                halves, _legacy(enc)))
    enc = encode_weight(fib)
    _require(enc.meta["index_coding"] == "huffman" and len(fib) > 4096, "huffman_chunk_4096", enc)
    out.append(("huffman_chunk_4096", "Huffman indices in chunks of 4096 symbols (the largest; 2 chunks)",
                fib, _rechunk(enc, 4096)))
    enc = encode_weight(few)
    _require(enc.meta["index_coding"] == "huffman", "huffman_chunk_1", enc)
    out.append(("huffman_chunk_1", "Huffman indices in chunks of 1 symbol (the smallest)", few, _rechunk(enc, 1)))
    return out


# -- invalid cases -----------------------------------------------------------------------------------------
def _v(*values: int) -> bytes:
    """Unsigned LEB128, written here independently of the encoder's."""
    out = bytearray()
    for value in values:
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)


F32 = 1  # the dtype code of float32 (FORMAT.md 3.1)
PLAIN_CODE, CODEBOOK, SPARSE = range(3)  # scheme codes
VALUES, BOOK, INDICES, INDICES_H, GAPS, GAPS_H = range(6)  # section name codes


def _table(alphabet: int, count: int, longest: int, chunk_log2: int, lengths: list[int], extra: list[int],
           zero: int = 0) -> bytes:
    """A Huffman table written field by field (FORMAT.md): ``extra`` are the stored chunk lengths."""
    len_width = max(1, longest).bit_length()
    off_width = max(1, (1 << chunk_log2) * (max(1, longest) - 1)).bit_length()
    body = pack_bits(np.array(lengths, np.uint16), len_width).tobytes() if alphabet else b""
    body += pack_bits(np.array(extra, np.uint16), off_width).tobytes() if extra else b""
    return struct.pack("<IQBBH", alphabet, count, longest, chunk_log2, zero) + body


def _huffman_codebook(table: bytes, stream: bytes, n: int, k: int = 2) -> bytes:
    """A float32 codebook weight of ``n`` elements with Huffman indices (this table and stream)."""
    book = np.arange(1, k + 1, dtype="<f4").tobytes()
    meta = bytes([F32, CODEBOOK]) + _v(1, n, k) + bytes([1]) + _v(3, BOOK, len(book), INDICES, len(stream),
                                                                  INDICES_H, len(table))
    return _seal(meta, book + stream + table)


def _invalid() -> list[tuple[str, str, str, str, bytes]]:
    """(name, what is wrong, stage, expected message substring, blob)."""
    rng = np.random.default_rng(200)
    good = bytes(to_blob(encode_weight(_sparse(rng, _levels(rng, 16)[_skewed(rng, 16, 600)], 0.2))))
    meta_len = struct.unpack_from("<I", good, 8)[0]
    good_meta, good_sections = good[16:16 + meta_len], good[16 + meta_len:]
    plain_meta = bytes([F32, PLAIN_CODE]) + _v(1, 100) + _v(1, VALUES, 400)
    plain_values = np.arange(100, dtype="<f4").tobytes()
    book2 = np.array([1.0, 2.0], "<f4").tobytes()

    def codebook_meta(k: int, coding: int, *sections: int, dims: tuple[int, ...] = (8,), dtype: int = F32) -> bytes:
        return bytes([dtype, CODEBOOK]) + _v(len(dims), *dims, k) + bytes([coding]) + _v(len(sections) // 2,
                                                                                          *sections)

    def sparse_meta(count: int, k: int, gap_bits: int, gap_coding: int, *sections: int, size: int = 16) -> bytes:
        return bytes([F32, SPARSE]) + _v(1, size, count, k) + bytes([gap_bits, gap_coding]) + _v(len(sections) // 2,
                                                                                                  *sections)

    def json_blob(doc: Any, payload: bytes = b"") -> bytes:
        return _seal(doc if isinstance(doc, bytes) else json.dumps(doc).encode(), payload, version=1)

    flipped = bytearray(good)
    flipped[-3] ^= 0x40
    cases = [
        ("truncated_header", "10 bytes: shorter than the fixed header", "parse", "truncated (10 bytes", good[:10]),
        ("truncated_empty", "0 bytes", "parse", "truncated (0 bytes", b""),
        ("truncated_meta", "the meta length runs past the end", "parse", "the meta block needs",
         good[:16 + meta_len - 2]),
        ("truncated_tail", "the last byte cut off (the CRC catches it)", "parse", "CRC mismatch", good[:-1]),
        ("truncated_tail_resealed", "the last byte cut off, CRC recomputed", "parse", "sections add up to",
         _seal(good_meta, good_sections[:-1])),
        ("trailing_bytes", "3 bytes after the last section, CRC recomputed", "parse", "sections add up to",
         _seal(good_meta, good_sections + b"\0\0\0")),
        ("bad_crc", "one flipped bit in a section", "parse", "CRC mismatch", bytes(flipped)),
        ("bad_magic", "magic ABCD", "parse", "wrong magic", b"ABCD" + good[4:]),
        ("bad_version", "version 3", "parse", "format version 3 is not supported", good[:4] + b"\3\0" + good[6:]),
        ("bad_version_0", "version 0", "parse", "format version 0 is not supported", good[:4] + b"\0\0" + good[6:]),
        ("unknown_flag", "flags bit 1", "parse", "unknown flags 0x2", good[:6] + b"\2\0" + good[8:]),
        ("flag_on_version_1", "a flag in a version-1 blob", "parse", "unknown flags 0x1",
         _seal(json.dumps({"shape": [100], "dtype": "float32", "scheme": "plain",
                           "sections": [["values", 400]]}).encode(), plain_values, version=1, flags=1)),
        ("shape_more_than_data", "shape [1000] but 400 bytes of float32 values", "parse",
         "section 'values' is 400 bytes, expected 4000", _seal(plain_meta[:3] + _v(1000) + plain_meta[4:],
                                                                plain_values)),
        ("shape_over_max_elements", "65536 x 65537 elements (over 2^32)", "parse",
         "has more than 4294967296 elements", _seal(bytes([F32, PLAIN_CODE]) + _v(2, 65536, 65537, 1, VALUES, 400),
                                                    plain_values)),
        ("section_size_mismatch", "the values section says 404 bytes, 400 are stored", "parse",
         "sections add up to", _seal(plain_meta[:-2] + _v(404), plain_values)),
        ("unknown_dtype", "dtype code 9", "parse", "unknown dtype code 9", _seal(b"\x09" + plain_meta[1:],
                                                                                 plain_values)),
        ("unknown_scheme", "scheme code 7", "parse", "unknown scheme code 7", _seal(b"\x01\x07" + plain_meta[2:],
                                                                                    plain_values)),
        ("rank_33", "33 dimensions", "parse", "invalid rank 33",
         _seal(bytes([F32, PLAIN_CODE]) + _v(33, *[1] * 33, 1, VALUES, 4), plain_values[:4])),
        ("varint_too_long", "a varint whose 10th byte has the continuation bit", "parse",
         "number in the meta block is too long",
         _seal(bytes([F32, PLAIN_CODE]) + b"\x01" + b"\xff" * 10 + b"\x01" + _v(1, VALUES, 400), plain_values)),
        ("meta_trailing_byte", "one unread byte at the end of the meta", "parse", "1 unread bytes",
         _seal(plain_meta + b"\0", plain_values)),
        ("meta_truncated", "the meta ends inside the section list", "parse", "the meta block is truncated",
         _seal(plain_meta[:-3], plain_values)),
        ("section_count_7", "7 sections", "parse", "invalid section count 7",
         _seal(plain_meta[:4] + b"\x07", plain_values)),
        ("unknown_section", "section code 6", "parse", "unknown section code 6",
         _seal(plain_meta[:-3] + b"\x06" + _v(400), plain_values)),
        ("wrong_sections", "a plain weight with a codebook section", "parse", "do not match scheme",
         _seal(plain_meta[:-3] + _v(BOOK, 400), plain_values)),
        ("sections_out_of_order", "indices before codebook", "parse", "do not match scheme",
         _seal(codebook_meta(2, 0, INDICES, 1, BOOK, 8), b"\xa5" + book2)),
        ("codebook_k0", "a codebook of 0 entries", "parse", "invalid codebook size 0",
         _seal(codebook_meta(0, 2, BOOK, 0), b"")),
        ("codebook_k257", "a codebook of 257 entries", "parse", "invalid codebook size 257",
         _seal(codebook_meta(257, 0, BOOK, 1028, INDICES, 9), bytes(1037))),
        ("codebook_k1_packed", "a 1-entry codebook with packed indices", "parse", "invalid index coding 'packed'",
         _seal(codebook_meta(1, 0, BOOK, 4, INDICES, 0), book2[:4])),
        ("codebook_k2_none", "a 2-entry codebook without indices", "parse", "invalid index coding 'none'",
         _seal(codebook_meta(2, 2, BOOK, 8), book2)),
        ("unknown_index_coding", "index coding code 3", "parse", "unknown index coding code 3",
         _seal(codebook_meta(2, 3, BOOK, 8, INDICES, 1), book2 + b"\0")),
        ("index_outside_codebook", "packed index 3 in a 3-entry codebook (2-bit indices)", "decode",
         "index 3 outside the codebook of 3",
         _seal(codebook_meta(3, 0, BOOK, 12, INDICES, 2), np.arange(3, dtype="<f4").tobytes() + b"\xe4\x00")),
        ("half_book_int8", "the float16-codebook flag on int8 codes", "parse", "a float16 codebook is invalid",
         _seal(codebook_meta(2, 0, BOOK, 4, INDICES, 1, dtype=3), b"\1\0\2\0\x5a", flags=1)),
        ("half_book_plain", "the float16-codebook flag on a plain weight", "parse", "a float16 codebook is invalid",
         _seal(plain_meta, plain_values, flags=1)),
        ("half_book_missing", "a float16-sized codebook without the flag", "parse",
         "section 'codebook' is 4 bytes, expected 8",
         _seal(codebook_meta(2, 0, BOOK, 4, INDICES, 1), np.float16([1, 2]).tobytes() + b"\x5a")),
        ("sparse_count_over_size", "17 entries in a 16-element tensor", "parse", "invalid sparse parameters",
         _seal(sparse_meta(17, 0, 4, 0, VALUES, 68, GAPS, 9), bytes(77))),
        ("sparse_gap_bits_17", "17-bit gaps", "parse", "invalid sparse parameters",
         _seal(sparse_meta(1, 0, 17, 0, VALUES, 4, GAPS, 3), bytes(7))),
        ("sparse_gap_bits_0", "0-bit gaps", "parse", "invalid sparse parameters",
         _seal(sparse_meta(1, 0, 0, 0, VALUES, 4, GAPS, 0), bytes(4))),
        ("sparse_gap_coding_none", "gap coding code 2 (none is for indices only)", "parse",
         "unknown gap coding code 2", _seal(sparse_meta(1, 0, 4, 2, VALUES, 4), bytes(4))),
        ("sparse_gaps_past_end", "gaps that place the second entry at position 16 of 16", "decode",
         "sparse gaps reach position 16 of a tensor of 16 elements",
         _seal(sparse_meta(2, 0, 4, 0, VALUES, 8, GAPS, 1), np.float32([1, 2]).tobytes() + b"\xf0")),
        ("huffman_header_invalid", "the table's reserved u16 is not zero", "parse", "Huffman table header is invalid",
         _huffman_codebook(_table(2, 8, 1, 8, [1, 1], [0], zero=1), b"\x55", 8)),
        ("huffman_chunk_log2_13", "chunks of 8192 symbols", "parse", "Huffman table header is invalid",
         _huffman_codebook(_table(2, 8, 1, 13, [1, 1], [0]), b"\x55", 8)),
        ("huffman_longest_17", "a 17-bit longest code", "parse", "Huffman table header is invalid",
         _huffman_codebook(_table(2, 8, 17, 8, [1, 17], [0]), b"\x55", 8)),
        ("huffman_no_codes", "8 symbols but longest code 0", "parse", "Huffman table has symbols but no codes",
         _huffman_codebook(_table(2, 8, 0, 8, [0, 0], [0]), b"\x55", 8)),
        ("huffman_table_size", "one byte too many in the table", "parse", "Huffman table is 19 bytes, expected 18",
         _huffman_codebook(_table(2, 8, 1, 8, [1, 1], [0]) + b"\0", b"\x55", 8)),
        ("huffman_longest_mismatch", "longest code 2 but the lengths are 1 and 1", "parse",
         "lengths disagree with its longest code", _huffman_codebook(_table(2, 8, 2, 8, [1, 1], [0]), b"\x55", 8)),
        ("huffman_oversubscribed", "three 1-bit codes (Kraft sum 3/2)", "parse", "oversubscribed",
         _huffman_codebook(_table(3, 8, 1, 8, [1, 1, 1], [0]), b"\x55", 8, k=3)),
        ("huffman_chunk_lengths", "a chunk of 8 symbols of at most 2 bits claiming 23 bits", "parse",
         "chunk lengths are inconsistent", _huffman_codebook(_table(2, 8, 2, 8, [1, 2], [15]), b"\x55\x55", 8)),
        ("huffman_count_mismatch", "the table codes 9 symbols, the codebook has 8 elements", "parse",
         "codes 9 symbols of 2, expected 8 below 2",
         _huffman_codebook(_table(2, 9, 1, 8, [1, 1], [0]), b"\x55\x00", 8)),
        ("huffman_alphabet_over_k", "a 3-symbol alphabet for a 2-entry codebook", "parse",
         "codes 8 symbols of 3, expected 8 below 2",
         _huffman_codebook(_table(3, 8, 2, 8, [1, 2, 2], [0]), b"\x55", 8)),
        ("huffman_stream_size", "a 2-byte stream for 8 bits", "decode", "Huffman stream is 2 bytes",
         _huffman_codebook(_table(2, 8, 1, 8, [1, 1], [0]), b"\x55\x00", 8)),
        ("huffman_chunk_end", "chunk 0 of 2 is stored as 8 bits but its 8 codes take 12", "decode",
         "chunk does not end where its stored length says",
         _huffman_codebook(_table(2, 16, 2, 3, [1, 2], [0, 0]), b"\xaa\x00", 16)),
        ("huffman_not_a_code", "bits '1' with only the code '0' (an incomplete code), 280 symbols", "decode",
         "a bit pattern that is no code of its table",
         _huffman_codebook(_table(1, 280, 1, 9, [1], [0]), b"\xff" * 35, 280)),
        ("json_invalid", "version 1 with a meta that is not JSON", "parse", "the meta block is not valid JSON",
         json_blob(b"{shape: [1]}")),
        ("json_not_object", "version 1 with a JSON array", "parse", "the meta block is not a JSON object",
         json_blob([])),
        ("json_negative_dim", "version 1 with shape [-1]", "parse", "invalid shape [-1]",
         json_blob({"shape": [-1], "dtype": "float32", "scheme": "plain", "sections": [["values", 0]]})),
        ("json_extra_key", "version 1 with an unknown key", "parse", "invalid scheme parameters",
         json_blob({"shape": [1], "dtype": "float32", "scheme": "plain", "x": 1, "sections": [["values", 4]]},
                   b"\0\0\0\0")),
        ("json_index_bits", "version 1 with index_bits 3 for a 2-entry codebook", "parse",
         "invalid index coding 'packed' / 3 bits for a codebook of 2",
         json_blob({"shape": [8], "dtype": "float32", "scheme": "codebook", "k": 2, "index_coding": "packed",
                    "index_bits": 3, "sections": [["codebook", 8], ["indices", 3]]}, book2 + bytes(3))),
    ]
    return cases


# -- writing -------------------------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _le_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _valid_entry(name: str, covers: str, array: np.ndarray, blob: bytes, options: dict | None,
                 files: dict[str, bytes]) -> dict[str, Any]:
    enc = from_blob(blob, name)
    back = decode_weight(enc)
    if back.dtype != array.dtype or back.shape != array.shape or _le_bytes(back) != _le_bytes(array):
        raise SystemExit(f"{name}: the blob does not decode to its array")
    files[f"{name}.blob"], files[f"{name}.npy"] = blob, _npy(array)
    version, flags = struct.unpack_from("<HH", blob, 4)
    entry = {
        "name": name, "covers": covers, "shape": list(array.shape), "dtype": array.dtype.name, "version": version,
        "flags": flags, "stack": enc.describe(), "meta": enc.meta,
        "sections": [[k, len(v)] for k, v in enc.sections.items()], "blob_bytes": len(blob),
        "reencode": options is not None,
    }
    if options:
        entry["encode_options"] = options
    if _tables(enc):
        entry["huffman"] = _tables(enc)
    entry.update(blob_sha256=_sha(blob), npy_sha256=_sha(files[f"{name}.npy"]), data_sha256=_sha(_le_bytes(array)))
    return entry


def _manifest_json(manifest: dict[str, Any]) -> bytes:
    """One line per case: small, and diffs show which cases changed."""
    lines = ["{"]
    for key, value in manifest.items():
        if isinstance(value, list):
            rows = ",\n".join(f"  {json.dumps(row)}" for row in value)
            lines.append(f" {json.dumps(key)}: [\n{rows}\n ],")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)},")
    lines[-1] = lines[-1].rstrip(",")
    return ("\n".join(lines) + "\n}\n").encode()


def build() -> tuple[dict[str, Any], dict[str, bytes]]:
    files: dict[str, bytes] = {}
    valid = []
    for i, case in enumerate(VALID):
        array = case.make(np.random.default_rng(1000 + 10 * i + case.seed))
        enc = encode_weight(array, **case.options)
        _check_choice(case, enc, array)
        valid.append(_valid_entry(case.name, case.covers, array, bytes(to_blob(enc)), case.options, files))
    for name, covers, array, blob in _hand_built():
        valid.append(_valid_entry(name, covers, array, blob, None, files))
    invalid = []
    for name, why, stage, error, blob in _invalid():
        try:
            enc = from_blob(blob, name)
        except CodecError as e:
            got = ("parse", str(e))
        else:
            try:
                decode_weight(enc)
            except CodecError as e:
                got = ("decode", str(e))
            else:
                raise SystemExit(f"{name}: the invalid blob decodes")
        if got[0] != stage or error not in got[1]:
            raise SystemExit(f"{name}: expected {stage} error with {error!r}, got {got}")
        files[f"{name}.blob"] = blob
        invalid.append({"name": name, "why": why, "stage": stage, "error": error,
                        "message": got[1], "blob_bytes": len(blob), "blob_sha256": _sha(blob)})
    manifest = {
        "format": "onnxcomp packed weight (ai.onnxcomp.DecodeWeight blob), see kernels/FORMAT.md",
        "generator": "kernels/testdata/make_golden.py",
        "files": "NAME.blob (raw bytes); valid cases also NAME.npy (the decoded array)",
        "error_prefix": "malformed packed weight '{name}': ",
        "valid": valid, "invalid": invalid,
    }
    files["manifest.json"] = _manifest_json(manifest)
    return manifest, files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    _, files = build()
    if args.check:
        on_disk = {p.name for p in args.out.iterdir() if p.suffix in (".blob", ".npy", ".json")}
        stale = sorted(on_disk - set(files))
        differ = sorted(n for n, data in files.items()
                        if not (args.out / n).exists() or (args.out / n).read_bytes() != data)
        for n in stale + differ:
            print(f"differs: {n}", file=sys.stderr)
        return 1 if stale or differ else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for p in args.out.iterdir():
        if p.suffix in (".blob", ".npy") and p.name not in files:
            p.unlink()
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    total = sum(len(d) for d in files.values())
    print(f"{len(files)} files, {total:,} bytes in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
