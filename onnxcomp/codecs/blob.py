"""The packed-weight blob: :class:`EncodedWeight` (one weight's parameters and byte sections) and its
serialisation into one validated uint8 array, what ``ai.onnxcomp.DecodeWeight`` reads.

The byte-level contract, precise enough for a decoder in another language, is ``kernels/FORMAT.md``; the golden
blobs of ``kernels/testdata/`` pin it. In short (little-endian)::

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
Huffman tables); what depends on the data (indices within the codebook, gaps within the tensor) is checked by
:func:`onnxcomp.codecs.stack.decode_weight`. Any problem is a :class:`~onnxcomp.errors.CodecError` naming the
weight, never another exception.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcomp import limits
from onnxcomp.codecs import huffman
from onnxcomp.codecs.bitpack import packed_size
from onnxcomp.codecs.csr import MAX_GAP_BITS
from onnxcomp.errors import CodecError

MAGIC = b"OCPW"
VERSION = 2
JSON_VERSION = 1  # the first format: the same fields as a JSON object
MAX_CODEBOOK = 256
MAX_ELEMENTS = 1 << 32  # a blob may not ask for more than this (a crafted one could otherwise exhaust memory)
MAX_RANK = 32
SECTION_KINDS = ("values", "indices", "codebook", "gaps", "huffman tables", "header")
HEADER = struct.Struct("<4sHHII")
# The binary meta stores these names as their index in the tuple: the order is part of the format.
DTYPES = ("float16", "float32", "float64", "int8", "uint8")
CODINGS = ("packed", "huffman")
SCHEMES = ("plain", "codebook", "sparse")
INDEX_CODINGS = ("packed", "huffman", "none")
SECTIONS = ("values", "codebook", "indices", "indices.huffman", "gaps", "gaps.huffman")
HALF_BOOK = 1  # header flag: the codebook is stored as float16


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
        return binary_meta(self.shape, self.dtype, self.meta, {k: len(v) for k, v in self.sections.items()})

    @property
    def nbytes(self) -> int:
        """Bytes of the serialised blob."""
        return HEADER.size + len(self.header_binary()) + sum(len(v) for v in self.sections.values())

    def bytes_by_section(self) -> dict[str, int]:
        """Real stored bytes by kind: values, indices, codebook, gaps, huffman tables, header (they sum to nbytes)."""
        out = dict.fromkeys(SECTION_KINDS, 0)
        for name, data in self.sections.items():
            out["huffman tables" if name.endswith(".huffman") else name] += len(data)
        out["header"] = HEADER.size + len(self.header_binary())
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


def binary_meta(shape: tuple[int, ...], dtype: str, m: dict[str, Any], sizes: dict[str, int]) -> bytes:
    """The version-2 meta block for these parameters and section sizes (in blob order)."""
    out = bytearray([DTYPES.index(dtype), SCHEMES.index(m["scheme"])])
    out += _varints([len(shape), *shape])
    if m["scheme"] == "codebook":
        out += _varints([m["k"]]) + bytes([INDEX_CODINGS.index(m["index_coding"])])
    elif m["scheme"] == "sparse":
        out += _varints([m["count"], m["k"]]) + bytes([m["gap_bits"], CODINGS.index(m["gap_coding"])])
        if m["k"]:
            out += bytes([INDEX_CODINGS.index(m["index_coding"])])
    out += _varints([len(sizes)])
    for section, size in sizes.items():
        out += bytes([SECTIONS.index(section)]) + _varints([size])
    return bytes(out)


# -- writing ---------------------------------------------------------------------------------------------
def to_blob(enc: EncodedWeight) -> np.ndarray:
    """The weight as one uint8 array: fixed header, binary meta, sections."""
    meta = enc.header_binary()
    payload = meta + b"".join(enc.sections.values())
    flags = HALF_BOOK if enc.meta.get("book_dtype") == "float16" else 0
    head = HEADER.pack(MAGIC, VERSION, flags, len(meta), zlib.crc32(payload))
    return np.frombuffer(head + payload, dtype=np.uint8).copy()


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


# -- reading ---------------------------------------------------------------------------------------------
def from_blob(blob: np.ndarray | bytes, name: str = "") -> EncodedWeight:
    """Parse and check a blob from :func:`to_blob`; a :class:`CodecError` names whatever is wrong."""
    try:
        return _from_blob(bytes(np.asarray(blob, dtype=np.uint8).reshape(-1).data)
                          if not isinstance(blob, bytes) else blob, name)
    except CodecError as e:
        raise CodecError(f"malformed packed weight {name!r}: {e}") from None


def _from_blob(data: bytes, name: str) -> EncodedWeight:
    # Cheap structural checks first, then the CRC over the rest, and only then is the meta interpreted.
    if len(data) < HEADER.size:
        raise CodecError(f"truncated ({len(data)} bytes, the header alone is {HEADER.size})")
    magic, version, flags, meta_len, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(f"wrong magic {magic!r} (expected {MAGIC!r}): not an onnxcomp packed weight")
    if version not in (JSON_VERSION, VERSION):
        raise CodecError(f"format version {version} is not supported (this onnxcomp reads versions "
                         f"{JSON_VERSION} and {VERSION})")
    if flags & ~HALF_BOOK or (flags and version == JSON_VERSION):
        raise CodecError(f"unknown flags {flags:#x}")
    if HEADER.size + meta_len > len(data):
        raise CodecError(f"truncated: the meta block needs {meta_len} bytes, {len(data) - HEADER.size} remain")
    if zlib.crc32(data[HEADER.size:]) != crc:
        raise CodecError("CRC mismatch (the data is corrupt)")
    raw = data[HEADER.size:HEADER.size + meta_len]
    if version == JSON_VERSION:
        try:
            doc = json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deeply nested arrays
            raise CodecError("the meta block is not valid JSON") from None
    else:
        doc = _parse_binary_meta(raw)
        if flags & HALF_BOOK:
            doc["book_dtype"] = "float16"
    shape, dtype, meta, layout = _check_meta(doc)
    offset = HEADER.size + meta_len
    if offset + sum(n for _, n in layout) != len(data):
        raise CodecError(f"sections add up to {sum(n for _, n in layout)} bytes but {len(data) - offset} are stored")
    sections = {}
    for section, n in layout:
        sections[section] = data[offset:offset + n]
        offset += n
    enc = EncodedWeight(shape, dtype, meta, sections, name)
    _check_sections(enc)
    # Before any output is allocated: a 1-entry codebook or a sparse blob can state a huge shape in a few bytes.
    why = limits.expansion_refusal(len(data), math.prod(shape) * np.dtype(dtype).itemsize)
    if why:
        raise CodecError(f"shape {list(shape)}: {why}")
    return enc


class _Reader:
    """Reads the binary meta block; running out of bytes is a :class:`CodecError`, never an over-read."""

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
            if shift > 63:  # at most 10 bytes
                raise CodecError("a number in the meta block is too long")

    def pick(self, names: tuple[str, ...], what: str) -> str:
        code = self.u8()
        if code >= len(names):
            raise CodecError(f"unknown {what} code {code}")
        return names[code]


def _parse_binary_meta(raw: bytes) -> dict[str, Any]:
    """The version-2 meta block as the same dict version 1 stored as JSON (then checked by ``_check_meta``)."""
    r = _Reader(raw)
    dtype, scheme = r.pick(DTYPES, "dtype"), r.pick(SCHEMES, "scheme")
    ndim = r.varint()
    if ndim > MAX_RANK:
        raise CodecError(f"invalid rank {ndim}")
    doc: dict[str, Any] = {"dtype": dtype, "scheme": scheme, "shape": [r.varint() for _ in range(ndim)]}
    if scheme == "codebook":
        doc["k"] = r.varint()
        doc["index_coding"] = r.pick(INDEX_CODINGS, "index coding")
    elif scheme == "sparse":
        doc["count"], doc["k"], doc["gap_bits"] = r.varint(), r.varint(), r.u8()
        doc["gap_coding"] = r.pick(CODINGS, "gap coding")
        if doc["k"]:
            doc["index_coding"] = r.pick(INDEX_CODINGS, "index coding")
    if "index_coding" in doc:
        doc["index_bits"] = max(0, doc["k"] - 1).bit_length()
    count = r.varint()
    if count > len(SECTIONS):
        raise CodecError(f"invalid section count {count}")
    doc["sections"] = [[r.pick(SECTIONS, "section"), r.varint()] for _ in range(count)]
    if r.at != len(raw):
        raise CodecError(f"{len(raw) - r.at} unread bytes at the end of the meta block")
    return doc


def _check_meta(doc: Any) -> tuple[tuple[int, ...], str, dict[str, Any], list[tuple[str, int]]]:
    """Both versions' meta, as a dict: every field present, typed and in range, nothing else."""
    if not isinstance(doc, dict):
        raise CodecError("the meta block is not a JSON object")
    shape, dtype, layout = doc.get("shape"), doc.get("dtype"), doc.get("sections")
    if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d < 1 << 63 for d in shape):  # ONNX dims: int64
        raise CodecError(f"invalid shape {shape!r}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise CodecError(f"shape {shape} has more than {MAX_ELEMENTS} elements")
    if dtype not in DTYPES:
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
        if meta["k"] > MAX_CODEBOOK or not 1 <= meta["gap_bits"] <= MAX_GAP_BITS or meta["count"] > size:
            raise CodecError("invalid sparse parameters (codebook size, gap width or entry count)")
        if meta["gap_coding"] not in CODINGS:
            raise CodecError(f"invalid gap coding {meta['gap_coding']!r}")
    if "index_coding" in meta:
        k, bits, coding = meta["k"], meta["index_bits"], meta["index_coding"]
        expected = ("none",) if k == 1 else CODINGS
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
