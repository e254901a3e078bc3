"""The cheapest exact encoding of one weight, and its serialisation into a single uint8 blob.

Passes decide a weight's *values* (pruning leaves exact zeros, weight sharing leaves at most ``2**bits``
distinct values, quantization leaves ``b``-bit integer codes); this module decides how they are *stored*,
losslessly. Weights are float16/32/64 tensors or the int8/uint8 codes of quantized weights (3-bit codes held in
int8 have at most 8 distinct values, so the codebook stack stores them in 3 bits each, or fewer with Huffman).
:func:`encode_weight` prices every applicable stack in exact bytes and keeps the cheapest:

- ``plain``: the raw little-endian values;
- ``codebook`` (at most 256 distinct values): the distinct values (the codebook, index 0 is 0.0 whenever the
  tensor holds zeros) + one index per element, bit-packed at ``ceil(log2 k)`` bits or Huffman coded;
- ``sparse`` (Deep Compression, :mod:`onnxcomp.codecs.csr`): the nonzeros with relative indices of ``b`` bits
  and filler zeros; each entry's value is a raw float or a codebook index (packed or Huffman); the gaps are
  packed or Huffman coded; ``b`` in 1..16 is chosen by the same exact byte count.

"Distinct" and "zero" are about bit patterns (-0.0 and each NaN payload are values of their own), so decoding
gives back the very bits that were encoded.

Blob layout (little-endian)::

    b"OCPW"  u16 version (2)  u16 flags  u32 meta length  u32 CRC-32 of everything after these 16 bytes
    (flags bit 0: the codebook of a float32/float64 weight is stored as float16, because every entry is exactly a
    float16; weight sharing rounds its centroids so, and the codebook takes half the bytes)
    meta (binary, unsigned LEB128 varints "v", bytes "u8"):
        u8 dtype, u8 scheme, v ndim, v dims...,
        codebook: v k, u8 index coding;   sparse: v count, v k, u8 gap bits, u8 gap coding[, u8 index coding if k]
        v number of sections, then per section: u8 name, v bytes
    the sections, in the listed order

(dtype, scheme, coding and section names are indices into the tuples below; ``index_bits`` is implied by ``k``).
A small model packs one blob per layer, so the meta is binary: ~15 bytes instead of ~200 of JSON (version 1, whose
meta was that JSON, is still read).

:func:`from_blob` checks all of it (magic, version, lengths, CRC, meta fields, section sizes against the counts,
Huffman tables) and :func:`decode_weight` checks what depends on the data (indices within the codebook, gaps
within the tensor); any problem is a :class:`~onnxcomp.errors.CodecError` naming the weight, never another
exception.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcomp.codecs import csr, huffman
from onnxcomp.codecs.bitpack import pack_bits, packed_size, unpack_bits
from onnxcomp.errors import CodecError

MAGIC = b"OCPW"
VERSION = 2
_JSON_VERSION = 1  # the first format: the same fields as a JSON object
MAX_CODEBOOK = 256
MAX_ELEMENTS = 1 << 32  # a blob may not ask for more than this (a crafted one could otherwise exhaust memory)
SECTION_KINDS = ("values", "indices", "codebook", "gaps", "huffman tables", "header")
_HEADER = struct.Struct("<4sHHII")
_DTYPES = ("float16", "float32", "float64", "int8", "uint8")
_CODINGS = ("packed", "huffman")
_SCHEMES = ("plain", "codebook", "sparse")
_INDEX_CODINGS = ("packed", "huffman", "none")
_SECTIONS = ("values", "codebook", "indices", "indices.huffman", "gaps", "gaps.huffman")
_HALF_BOOK = 1  # header flag: the codebook is stored as float16


@dataclass(frozen=True)
class EncodedWeight:
    """One weight's encoding: ``meta`` (JSON-able parameters) and named byte ``sections``."""

    shape: tuple[int, ...]
    dtype: str
    meta: dict[str, Any]
    sections: dict[str, bytes]
    name: str = field(default="", compare=False)

    @property
    def scheme(self) -> str:
        return self.meta["scheme"]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def header_json(self) -> bytes:
        """The meta as format version 1 wrote it (JSON); kept for reading old blobs and for tests."""
        doc = {"shape": list(self.shape), "dtype": self.dtype, **self.meta,
               "sections": [[k, len(v)] for k, v in self.sections.items()]}
        return json.dumps(doc, separators=(",", ":")).encode()

    def header_binary(self) -> bytes:
        """The meta of format version 2 (module docstring)."""
        return _binary_meta(self.shape, self.dtype, self.meta, {k: len(v) for k, v in self.sections.items()})

    @property
    def nbytes(self) -> int:
        """Bytes of the serialised blob."""
        return _HEADER.size + len(self.header_binary()) + sum(len(v) for v in self.sections.values())

    def bytes_by_section(self) -> dict[str, int]:
        """Real stored bytes by kind: values, indices, codebook, gaps, huffman tables, header (they sum to nbytes)."""
        out = dict.fromkeys(SECTION_KINDS, 0)
        for name, data in self.sections.items():
            out["huffman tables" if name.endswith(".huffman") else name] += len(data)
        out["header"] = _HEADER.size + len(self.header_binary())
        return out

    def describe(self) -> str:
        """A short human description of the stack, e.g. ``sparse(b=4 huffman) -> codebook(k=16 huffman)``."""
        m = self.meta
        if m["scheme"] == "plain":
            return "plain"
        book = f"codebook(k={m['k']} {m['index_coding']})" if m.get("k") else "float values"
        if m["scheme"] == "codebook":
            return book
        return f"sparse(b={m['gap_bits']} {m['gap_coding']}) -> {book}"


def _binary_meta(shape: tuple[int, ...], dtype: str, m: dict[str, Any], sizes: dict[str, int]) -> bytes:
    out = bytearray([_DTYPES.index(dtype), _SCHEMES.index(m["scheme"])])
    out += _varints([len(shape), *shape])
    if m["scheme"] == "codebook":
        out += _varints([m["k"]]) + bytes([_INDEX_CODINGS.index(m["index_coding"])])
    elif m["scheme"] == "sparse":
        out += _varints([m["count"], m["k"]]) + bytes([m["gap_bits"], _CODINGS.index(m["gap_coding"])])
        if m["k"]:
            out += bytes([_INDEX_CODINGS.index(m["index_coding"])])
    out += _varints([len(sizes)])
    for section, size in sizes.items():
        out += bytes([_SECTIONS.index(section)]) + _varints([size])
    return bytes(out)


# -- encoding --------------------------------------------------------------------------------------------
def encode_weight(array: np.ndarray, *, allow_sparse: bool = True, allow_codebook: bool = True,
                  allow_huffman: bool = True, name: str = "") -> EncodedWeight:
    """The cheapest exact encoding of ``array`` (float16/32/64, int8/uint8) among the allowed stacks."""
    arr, best = _cheapest(array, allow_sparse, allow_codebook, allow_huffman, name)
    return EncodedWeight(tuple(int(d) for d in arr.shape), arr.dtype.name, best.meta, best.build(), name)


def encoded_nbytes(array: np.ndarray, *, allow_sparse: bool = True, allow_codebook: bool = True,
                   allow_huffman: bool = True) -> int:
    """The blob bytes :func:`encode_weight` would produce (``len(to_blob(...))`` up to the binary meta's few
    bytes), priced without encoding: what a pass choosing between widths can compare."""
    arr, best = _cheapest(array, allow_sparse, allow_codebook, allow_huffman, "")
    return best.nbytes(tuple(int(d) for d in arr.shape), arr.dtype.name)


def _cheapest(array: np.ndarray, allow_sparse: bool, allow_codebook: bool, allow_huffman: bool,
              name: str) -> tuple[np.ndarray, _Plan]:
    arr = np.asarray(array)
    if arr.dtype.name not in _DTYPES:
        raise CodecError(f"cannot pack weight {name!r}: dtype {arr.dtype} is not one of {', '.join(_DTYPES)}")
    bits = np.ascontiguousarray(arr).reshape(-1).view(f"u{arr.dtype.itemsize}")
    facts = _Facts(bits, allow_codebook, arr.dtype)
    plans = [_plain_plan(facts)]
    if allow_codebook and facts.levels is not None and 1 <= facts.dense_k <= MAX_CODEBOOK:
        plans.append(_codebook_plan(facts, allow_huffman))
    if allow_sparse and facts.has_zeros:  # without zeros, sparse stores every element plus gaps: never cheaper
        plans.extend(_sparse_plans(facts, allow_codebook, allow_huffman))
    shape = tuple(int(d) for d in arr.shape)
    return arr, min(plans, key=lambda p: p.nbytes(shape, arr.dtype.name))  # first among equals: the simplest


def exactly_float16(values: np.ndarray) -> bool:
    """Whether ``values`` are float32/float64 and every one is exactly a float16, bit for bit (-0.0 included; a
    NaN payload float16 cannot hold is not)."""
    if values.dtype not in (np.float32, np.float64):
        return False
    bits = np.dtype(f"u{values.dtype.itemsize}")
    with np.errstate(over="ignore"):  # beyond float16's range: inf, which then differs
        half = values.astype(np.float16)
    return bool(np.array_equal(half.astype(values.dtype).view(bits), values.view(bits)))


def dense_codebook(array: np.ndarray, limit: int = MAX_CODEBOOK) -> tuple[np.ndarray, np.ndarray] | None:
    """(codebook, indices) with ``codebook[indices] == array`` bit for bit, or None above ``limit`` values.

    The codebook is sorted by bit pattern, so 0.0 is entry 0 whenever the array holds zeros; the indices have
    the array's shape (uint8 for up to 256 entries, else uint16).
    """
    arr = np.asarray(array)
    bits = np.ascontiguousarray(arr).reshape(-1).view(f"u{arr.dtype.itemsize}")
    found = _distinct(bits, limit)
    if found is None:
        return None
    levels, index = found
    book = levels.view(arr.dtype)
    return book, index.astype(np.uint8 if levels.size <= 256 else np.uint16).reshape(arr.shape)


class _Facts:
    """What every plan needs, computed once: nonzero positions, zero runs, distinct nonzero values."""

    def __init__(self, bits: np.ndarray, want_levels: bool, dtype: np.dtype):
        self.bits = bits
        self.dtype = dtype
        self.size = bits.size
        self.itemsize = bits.dtype.itemsize
        self.nnz = int(np.count_nonzero(bits))
        self.has_zeros = self.nnz < self.size
        self.levels = self.nz_index = None
        if want_levels:
            found = _distinct(self.nonzeros, MAX_CODEBOOK)
            if found is not None:
                self.levels, self.nz_index = found  # nonzero levels (sorted bit patterns), index of each nonzero
                self.nz_counts = np.bincount(self.nz_index, minlength=self.levels.size)

    @functools.cached_property
    def half_book(self) -> bool:
        """Whether every codebook level of a float32/float64 weight is exactly a float16 (bit for bit)."""
        return self.levels is not None and exactly_float16(self.levels.view(self.dtype))

    def book(self, zero: int) -> tuple[bytes, int, dict[str, str]]:
        """The codebook (``zero`` leading 0.0 entries, then the levels): its bytes, their count, its meta."""
        book = np.concatenate([np.zeros(zero, self.bits.dtype), self.levels])
        if self.half_book:
            return book.view(self.dtype).astype("<f2").tobytes(), 2 * book.size, {"book_dtype": "float16"}
        return _le(book).tobytes(), book.size * self.itemsize, {}

    @functools.cached_property
    def positions(self) -> np.ndarray:
        return np.flatnonzero(self.bits) if self.has_zeros else np.arange(self.size)

    @functools.cached_property
    def nonzeros(self) -> np.ndarray:
        return self.bits[self.positions] if self.has_zeros else self.bits

    @functools.cached_property
    def runs(self) -> np.ndarray:
        """Zeros skipped before each nonzero (Deep Compression's relative index minus one)."""
        runs = np.empty_like(self.positions)
        if runs.size:
            runs[0] = self.positions[0]
            np.subtract(self.positions[1:], self.positions[:-1], out=runs[1:])
            runs[1:] -= 1
        return runs

    @property
    def dense_k(self) -> int:
        return self.levels.size + int(self.has_zeros)


@dataclass
class _Plan:
    meta: dict[str, Any]
    sizes: dict[str, int]  # section name -> exact bytes, in blob order
    build: Callable[[], dict[str, bytes]]

    def nbytes(self, shape: tuple[int, ...], dtype: str) -> int:
        """Exact bytes of the blob this plan builds."""
        return _HEADER.size + len(_binary_meta(shape, dtype, self.meta, self.sizes)) + sum(self.sizes.values())


def _plain_plan(f: _Facts) -> _Plan:
    return _Plan({"scheme": "plain"}, {"values": f.size * f.itemsize}, lambda: {"values": _le(f.bits).tobytes()})


def _codebook_plan(f: _Facts, allow_huffman: bool) -> _Plan:
    zero = int(f.has_zeros)  # index 0 is 0.0 when the tensor holds zeros
    k = f.levels.size + zero
    book, book_bytes, book_meta = f.book(zero)
    counts = np.concatenate([[f.size - f.nnz] if zero else [], f.nz_counts]).astype(np.int64)
    coding = _symbol_coding(counts, k, allow_huffman)

    def build() -> dict[str, bytes]:
        if not zero:
            return {"codebook": book, **coding.encode("indices", f.nz_index)}
        index = np.zeros(f.size, dtype=np.uint8 if k <= 256 else np.uint16)
        index[f.positions] = f.nz_index + zero
        return {"codebook": book, **coding.encode("indices", index)}

    meta = {"scheme": "codebook", "k": k, **coding.meta("index"), **book_meta}
    return _Plan(meta, {"codebook": book_bytes, **coding.sizes("indices")}, build)


def _sparse_plans(f: _Facts, allow_codebook: bool, allow_huffman: bool) -> list[_Plan]:
    """For each value kind (floats, codebook indices) the best gap width and codings, priced exactly."""
    plans = []
    for b in range(1, csr.MAX_GAP_BITS + 1):
        nfill = csr.fillers(f.runs, b)
        gap_counts = np.bincount(f.runs & ((1 << b) - 1), minlength=1 << b)
        gap_counts[-1] += nfill
        gaps = _symbol_coding(gap_counts, 1 << b, allow_huffman, always=True)
        entries = f.nnz + nfill
        plans.append(_sparse_float_plan(f, b, entries, gaps))
        if allow_codebook and f.levels is not None:
            zero = int(nfill > 0)  # fillers need a 0.0 in the codebook
            if f.levels.size + zero <= MAX_CODEBOOK:
                plans.append(_sparse_codebook_plan(f, b, zero, nfill, gaps, allow_huffman))
    return plans


def _sparse_float_plan(f: _Facts, b: int, entries: int, gaps: _Coding) -> _Plan:
    def build() -> dict[str, bytes]:
        values, gap = csr.place_entries(f.nonzeros, f.runs, b)
        return {"values": _le(values).tobytes(), **gaps.encode("gaps", gap)}

    meta = {"scheme": "sparse", "count": entries, "k": 0, "gap_bits": b, **gaps.meta("gap")}
    return _Plan(meta, {"values": entries * f.itemsize, **gaps.sizes("gaps")}, build)


def _sparse_codebook_plan(f: _Facts, b: int, zero: int, nfill: int, gaps: _Coding, allow_huffman: bool) -> _Plan:
    k = f.levels.size + zero
    book, book_bytes, book_meta = f.book(zero)
    counts = np.concatenate([[nfill] if zero else [], f.nz_counts]).astype(np.int64)
    index = _symbol_coding(counts, k, allow_huffman)

    def build() -> dict[str, bytes]:
        symbols, gap = csr.place_entries((f.nz_index + zero).astype(np.uint16), f.runs, b)
        return {"codebook": book, **index.encode("indices", symbols), **gaps.encode("gaps", gap)}

    meta = {"scheme": "sparse", "count": f.nnz + nfill, "k": k, **index.meta("index"),
            "gap_bits": b, **gaps.meta("gap"), **book_meta}
    sizes = {"codebook": book_bytes, **index.sizes("indices"), **gaps.sizes("gaps")}
    return _Plan(meta, sizes, build)


@dataclass
class _Coding:
    """How one symbol stream is stored: bit-packed at ``bits`` (none when 0) or Huffman with ``lengths``."""

    kind: str  # "packed" | "huffman" | "none"
    bits: int
    packed: int = 0
    lengths: np.ndarray | None = None
    table: int = 0
    stream: int = 0

    def meta(self, prefix: str) -> dict[str, Any]:
        out = {f"{prefix}_coding": self.kind}
        if prefix == "index":
            out["index_bits"] = self.bits
        return out

    def sizes(self, name: str) -> dict[str, int]:
        if self.kind == "packed":
            return {name: self.packed}
        if self.kind == "huffman":
            return {name: self.stream, f"{name}.huffman": self.table}
        return {}

    def encode(self, name: str, symbols: np.ndarray) -> dict[str, bytes]:
        if self.kind == "packed":
            return {name: pack_bits(symbols, self.bits).tobytes()}
        if self.kind == "huffman":
            table, stream = huffman.encode(symbols, lengths=self.lengths)
            return {name: stream.tobytes(), f"{name}.huffman": table.tobytes()}
        return {}


def _symbol_coding(counts: np.ndarray, alphabet: int, allow_huffman: bool, always: bool = False) -> _Coding:
    """The cheaper of bit-packing and Huffman for symbols with these counts (``alphabet`` of 1: nothing stored)."""
    bits = max(0, alphabet - 1).bit_length()
    if bits == 0 and not always:
        return _Coding("none", 0)
    bits = max(1, bits)
    total = int(counts.sum())
    best = _Coding("packed", bits, packed=packed_size(total, bits))
    if allow_huffman and total:
        lengths = huffman.code_lengths(counts)
        table, stream = huffman.encoded_size(counts, lengths)
        if table + stream < best.packed:
            best = _Coding("huffman", bits, lengths=lengths, table=table, stream=stream)
    return best


def _distinct(values: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted distinct values, index of each value) when there are at most ``limit`` of them, else None.

    A strided sample usually finds every level: then a binary search indexes all values in O(n log k) instead
    of sorting them, and a sample with more than ``limit`` levels settles the question at once.
    """
    if values.size == 0:
        return values[:0], np.zeros(0, dtype=np.uint16)
    levels = np.unique(values[::max(1, values.size // 65536)])
    if levels.size > limit:
        return None
    index = np.minimum(np.searchsorted(levels, values), levels.size - 1)
    if not np.array_equal(levels[index], values):
        levels = np.unique(values)
        if levels.size > limit:
            return None
        index = np.searchsorted(levels, values)
    return levels, index.astype(np.uint16)


def _le(bits: np.ndarray) -> np.ndarray:
    return bits.astype(bits.dtype.newbyteorder("<"), copy=False)


# -- serialisation ---------------------------------------------------------------------------------------
def to_blob(enc: EncodedWeight) -> np.ndarray:
    """The weight as one uint8 array: fixed header, binary meta, sections."""
    meta = enc.header_binary()
    payload = meta + b"".join(enc.sections.values())
    flags = _HALF_BOOK if enc.meta.get("book_dtype") == "float16" else 0
    head = _HEADER.pack(MAGIC, VERSION, flags, len(meta), zlib.crc32(payload))
    return np.frombuffer(head + payload, dtype=np.uint8).copy()


def from_blob(blob: np.ndarray | bytes, name: str = "") -> EncodedWeight:
    """Parse and check a blob from :func:`to_blob`; a :class:`CodecError` names whatever is wrong."""
    try:
        return _from_blob(bytes(np.asarray(blob, dtype=np.uint8).reshape(-1).data)
                          if not isinstance(blob, bytes) else blob, name)
    except CodecError as e:
        raise CodecError(f"malformed packed weight {name!r}: {e}") from None


def _from_blob(data: bytes, name: str) -> EncodedWeight:
    if len(data) < _HEADER.size:
        raise CodecError(f"truncated ({len(data)} bytes, the header alone is {_HEADER.size})")
    magic, version, flags, meta_len, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(f"wrong magic {magic!r} (expected {MAGIC!r}): not an onnxcomp packed weight")
    if version not in (_JSON_VERSION, VERSION):
        raise CodecError(f"format version {version} is not supported (this onnxcomp reads versions "
                         f"{_JSON_VERSION} and {VERSION})")
    if flags & ~_HALF_BOOK or (flags and version == _JSON_VERSION):
        raise CodecError(f"unknown flags {flags:#x}")
    if _HEADER.size + meta_len > len(data):
        raise CodecError(f"truncated: the meta block needs {meta_len} bytes, {len(data) - _HEADER.size} remain")
    if zlib.crc32(data[_HEADER.size:]) != crc:
        raise CodecError("CRC mismatch (the data is corrupt)")
    raw = data[_HEADER.size:_HEADER.size + meta_len]
    if version == _JSON_VERSION:
        try:
            doc = json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError):
            raise CodecError("the meta block is not valid JSON") from None
    else:
        doc = _parse_binary_meta(raw)
        if flags & _HALF_BOOK:
            doc["book_dtype"] = "float16"
    shape, dtype, meta, layout = _check_meta(doc)
    offset = _HEADER.size + meta_len
    if offset + sum(n for _, n in layout) != len(data):
        raise CodecError(f"sections add up to {sum(n for _, n in layout)} bytes but {len(data) - offset} are stored")
    sections = {}
    for section, n in layout:
        sections[section] = data[offset:offset + n]
        offset += n
    enc = EncodedWeight(shape, dtype, meta, sections, name)
    _check_sections(enc)
    return enc


def _varints(values: list[int]) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    for v in values:
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


class _Reader:
    def __init__(self, raw: bytes):
        self.raw, self.at = raw, 0

    def u8(self) -> int:
        if self.at >= len(self.raw):
            raise CodecError("the meta block is truncated")
        self.at += 1
        return self.raw[self.at - 1]

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise CodecError("a number in the meta block is too long")

    def pick(self, names: tuple[str, ...], what: str) -> str:
        code = self.u8()
        if code >= len(names):
            raise CodecError(f"unknown {what} code {code}")
        return names[code]


def _parse_binary_meta(raw: bytes) -> dict[str, Any]:
    """The version-2 meta block as the same dict version 1 stored as JSON (then checked by ``_check_meta``)."""
    r = _Reader(raw)
    dtype, scheme = r.pick(_DTYPES, "dtype"), r.pick(_SCHEMES, "scheme")
    ndim = r.varint()
    if ndim > 32:
        raise CodecError(f"invalid rank {ndim}")
    doc: dict[str, Any] = {"dtype": dtype, "scheme": scheme, "shape": [r.varint() for _ in range(ndim)]}
    if scheme == "codebook":
        doc["k"] = r.varint()
        doc["index_coding"] = r.pick(_INDEX_CODINGS, "index coding")
    elif scheme == "sparse":
        doc["count"], doc["k"], doc["gap_bits"] = r.varint(), r.varint(), r.u8()
        doc["gap_coding"] = r.pick(_CODINGS, "gap coding")
        if doc["k"]:
            doc["index_coding"] = r.pick(_INDEX_CODINGS, "index coding")
    if "index_coding" in doc:
        doc["index_bits"] = max(0, doc["k"] - 1).bit_length()
    count = r.varint()
    if count > len(_SECTIONS):
        raise CodecError(f"invalid section count {count}")
    doc["sections"] = [[r.pick(_SECTIONS, "section"), r.varint()] for _ in range(count)]
    if r.at != len(raw):
        raise CodecError(f"{len(raw) - r.at} unread bytes at the end of the meta block")
    return doc


def _check_meta(doc: Any) -> tuple[tuple[int, ...], str, dict[str, Any], list[tuple[str, int]]]:
    if not isinstance(doc, dict):
        raise CodecError("the meta block is not a JSON object")
    shape, dtype, layout = doc.get("shape"), doc.get("dtype"), doc.get("sections")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CodecError(f"invalid shape {shape!r}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise CodecError(f"shape {shape} has more than {MAX_ELEMENTS} elements")
    if dtype not in _DTYPES:
        raise CodecError(f"invalid dtype {dtype!r}")
    if not isinstance(layout, list) or not all(
            isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) and _is_int(s[1]) and s[1] >= 0
            for s in layout):
        raise CodecError("invalid section list")
    meta = {k: v for k, v in doc.items() if k not in ("shape", "dtype", "sections")}
    scheme = meta.get("scheme") if isinstance(meta.get("scheme"), str) else None
    allowed = {
        "plain": {"scheme"},
        "codebook": {"scheme", "k", "index_coding", "index_bits"},
        "sparse": {"scheme", "count", "k", "gap_bits", "gap_coding"} | (
            {"index_coding", "index_bits"} if meta.get("k") != 0 else set()),
    }.get(scheme)
    if "book_dtype" in meta:  # a float16 codebook: only for float32/float64 weights that have a codebook
        if meta["book_dtype"] != "float16" or dtype not in ("float32", "float64") or not meta.get("k"):
            raise CodecError(f"a float16 codebook is invalid for a {dtype} weight of scheme {scheme!r} without one")
        allowed = allowed | {"book_dtype"} if allowed is not None else None
    if allowed is None or set(meta) != allowed:
        raise CodecError(f"invalid scheme parameters {sorted(meta)} for scheme {scheme!r}")
    size = math.prod(shape)
    for key in ("k", "index_bits", "count", "gap_bits"):
        if key in meta and not (_is_int(meta[key]) and meta[key] >= 0):
            raise CodecError(f"invalid {key} {meta[key]!r}")
    if scheme == "codebook" and not 1 <= meta["k"] <= MAX_CODEBOOK:
        raise CodecError(f"invalid codebook size {meta['k']}")
    if scheme == "sparse":
        if meta["k"] > MAX_CODEBOOK or not 1 <= meta["gap_bits"] <= csr.MAX_GAP_BITS or meta["count"] > size:
            raise CodecError("invalid sparse parameters (codebook size, gap width or entry count)")
        if meta["gap_coding"] not in _CODINGS:
            raise CodecError(f"invalid gap coding {meta['gap_coding']!r}")
    if "index_coding" in meta:
        k, bits, coding = meta["k"], meta["index_bits"], meta["index_coding"]
        expected = ("none",) if k == 1 else _CODINGS
        if coding not in expected or bits != max(0, k - 1).bit_length():
            raise CodecError(f"invalid index coding {coding!r} / {bits} bits for a codebook of {k}")
    return tuple(shape), dtype, meta, [(s[0], s[1]) for s in layout]


def _check_sections(enc: EncodedWeight) -> None:
    """Section names and sizes must be exactly what the parameters imply; Huffman tables must be valid."""
    m, itemsize, size = enc.meta, np.dtype(enc.dtype).itemsize, enc.size
    expected: dict[str, int | None] = {}  # None: a Huffman stream, checked against its table
    count = size if m["scheme"] != "sparse" else m["count"]
    if m["scheme"] == "plain" or (m["scheme"] == "sparse" and not m["k"]):
        expected["values"] = count * itemsize
    else:
        expected["codebook"] = m["k"] * (2 if m.get("book_dtype") == "float16" else itemsize)
        _expect_stream(expected, "indices", m["index_coding"], m["index_bits"], count)
    if m["scheme"] == "sparse":
        _expect_stream(expected, "gaps", m["gap_coding"], m["gap_bits"], count)
    if list(enc.sections) != list(expected):
        raise CodecError(f"sections {list(enc.sections)} do not match scheme {m['scheme']!r} ({list(expected)})")
    for section, n in expected.items():
        if n is not None and len(enc.sections[section]) != n:
            raise CodecError(f"section {section!r} is {len(enc.sections[section])} bytes, expected {n}")
        if section.endswith(".huffman"):
            alphabet, symbols = huffman.parse_table(np.frombuffer(enc.sections[section], dtype=np.uint8))[:2]
            limit = m["k"] if section == "indices.huffman" else 1 << m["gap_bits"]
            if symbols != count or alphabet > limit:
                raise CodecError(f"Huffman table {section!r} codes {symbols} symbols of {alphabet}, "
                                 f"expected {count} below {limit}")


def _expect_stream(expected: dict[str, int | None], name: str, coding: str, bits: int, count: int) -> None:
    if coding == "packed":
        expected[name] = packed_size(count, bits)
    elif coding == "huffman":
        expected[name] = None
        expected[f"{name}.huffman"] = None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# -- decoding --------------------------------------------------------------------------------------------
def decode_weight(enc: EncodedWeight) -> np.ndarray:
    """The weight, bit-exact: an array of ``enc.dtype`` and ``enc.shape``."""
    try:
        return _decode(enc)
    except CodecError as e:
        raise CodecError(f"malformed packed weight {enc.name!r}: {e}") from None


def _decode(enc: EncodedWeight) -> np.ndarray:
    m, size = enc.meta, enc.size
    utype = np.dtype(f"<u{np.dtype(enc.dtype).itemsize}")
    count = size if m["scheme"] != "sparse" else m["count"]
    if m["scheme"] == "plain" or (m["scheme"] == "sparse" and not m["k"]):
        values = np.frombuffer(enc.sections["values"], dtype=utype, count=count)
    else:
        if m.get("book_dtype") == "float16":
            book = np.frombuffer(enc.sections["codebook"], dtype="<f2", count=m["k"]).astype(enc.dtype).view(utype)
        else:
            book = np.frombuffer(enc.sections["codebook"], dtype=utype, count=m["k"])
        if m["index_coding"] == "none":
            values = np.full(count, book[0], dtype=utype)
        else:
            index = _read_symbols(enc, "indices", m["index_coding"], m["index_bits"], count)
            if index.size and int(index.max()) >= book.size:
                raise CodecError(f"index {int(index.max())} outside the codebook of {book.size}")
            values = book[index]
    if m["scheme"] == "sparse":
        gaps = _read_symbols(enc, "gaps", m["gap_coding"], m["gap_bits"], count)
        dense = np.zeros(size, dtype=utype)
        dense[csr.csr_positions(gaps, size)] = values
        values = dense
    values = values.astype(utype.newbyteorder("="), copy=not values.flags.writeable)
    return values.view(enc.dtype).reshape(enc.shape)


def _read_symbols(enc: EncodedWeight, name: str, coding: str, bits: int, count: int) -> np.ndarray:
    data = np.frombuffer(enc.sections[name], dtype=np.uint8)
    if coding == "packed":
        return unpack_bits(data, bits, count)
    table = np.frombuffer(enc.sections[f"{name}.huffman"], dtype=np.uint8)
    return huffman.decode(table, data)
