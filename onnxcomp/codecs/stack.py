"""The cheapest exact encoding of one weight (the codec *stack*), and its exact decoding.

Passes decide a weight's *values* (pruning leaves exact zeros, weight sharing leaves at most ``2**bits``
distinct values, quantization leaves ``b``-bit integer codes); this module decides how they are *stored*,
losslessly. Weights are float16/32/64 tensors or the int8/uint8 codes of quantized weights (3-bit codes held in
int8 have at most 8 distinct values, so the codebook stack stores them in 3 bits each, or fewer with Huffman).
:func:`encode_weight` prices every applicable stack in exact bytes and keeps the cheapest:

- ``plain``: the raw little-endian values;
- ``codebook`` (at most 256 distinct values): the distinct values (the codebook, index 0 is 0.0 whenever the
  tensor holds zeros) + one index per element, bit-packed at ``ceil(log2 k)`` bits or Huffman coded;
- ``sparse`` (Deep Compression, Han et al., ICLR 2016; :mod:`onnxcomp.codecs.csr`): the nonzeros with relative
  indices of ``b`` bits and filler zeros; each entry's value is a raw float or a codebook index (packed or
  Huffman); the gaps are packed or Huffman coded; ``b`` in 1..16 is chosen by the same exact byte count.

"Distinct" and "zero" are about bit patterns (-0.0 and each NaN payload are values of their own), so decoding
gives back the very bits that were encoded. Ties between stacks go to the simplest (plain, then codebook, then
sparse with the narrowest gaps), so the choice, and hence the bytes, are deterministic.

The blob itself (header, binary meta, CRC, validation) is :mod:`onnxcomp.codecs.blob`, whose names are re-exported
here; the byte-level contract is ``kernels/FORMAT.md``. :func:`decode_weight` checks what depends on the data
(indices within the codebook, gaps within the tensor); any problem is a :class:`~onnxcomp.errors.CodecError`
naming the weight, never another exception.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcomp.codecs import csr, huffman
from onnxcomp.codecs.bitpack import pack_bits, packed_size, unpack_bits
from onnxcomp.codecs.blob import (
    DTYPES,
    HEADER,
    MAGIC,
    MAX_CODEBOOK,
    MAX_ELEMENTS,
    SECTION_KINDS,
    VERSION,
    EncodedWeight,
    binary_meta,
    from_blob,
    to_blob,
)
from onnxcomp.errors import CodecError

__all__ = ["MAGIC", "MAX_CODEBOOK", "MAX_ELEMENTS", "SECTION_KINDS", "VERSION", "EncodedWeight", "decode_weight",
           "dense_codebook", "encode_weight", "encoded_nbytes", "exactly_float16", "from_blob", "to_blob"]


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
    if arr.dtype.name not in DTYPES:
        raise CodecError(f"cannot pack weight {name!r}: dtype {arr.dtype} is not one of {', '.join(DTYPES)}")
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
    def _zero_runs(self) -> tuple[np.ndarray, np.ndarray]:
        return csr.zero_runs(self.bits)

    @property
    def positions(self) -> np.ndarray:
        """Where the nonzeros are (only asked for when the tensor holds zeros)."""
        return self._zero_runs[0]

    @functools.cached_property
    def nonzeros(self) -> np.ndarray:
        return self.bits[self.positions] if self.has_zeros else self.bits

    @property
    def runs(self) -> np.ndarray:
        """Zeros skipped before each nonzero (Deep Compression's relative index minus one)."""
        return self._zero_runs[1]

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
        return HEADER.size + len(binary_meta(shape, dtype, self.meta, self.sizes)) + sum(self.sizes.values())


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
        gaps = _symbol_coding(csr.gap_counts(f.runs, b, nfill), 1 << b, allow_huffman, always=True)
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
        values = csr.csr_decode(values, _read_symbols(enc, "gaps", m["gap_coding"], m["gap_bits"], count), size)
    values = values.astype(utype.newbyteorder("="), copy=not values.flags.writeable)
    return values.view(enc.dtype).reshape(enc.shape)


def _read_symbols(enc: EncodedWeight, name: str, coding: str, bits: int, count: int) -> np.ndarray:
    data = np.frombuffer(enc.sections[name], dtype=np.uint8)
    if coding == "packed":
        return unpack_bits(data, bits, count)
    table = np.frombuffer(enc.sections[f"{name}.huffman"], dtype=np.uint8)
    return huffman.decode(table, data)
