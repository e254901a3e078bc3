"""Canonical, length-limited Huffman coding of small non-negative integers (codebook indices, CSR gaps).

Code lengths come from Huffman's algorithm on the symbol counts; lengths above ``max_len`` (16) are brought
down with the JPEG length-limiting step (ITU T.81 Annex K.3: take two leaves from the deepest level, hang them
under a leaf moved up from the deepest shorter level), which keeps the Kraft sum at one. Codes are *canonical*
(DEFLATE, RFC 1951 3.2.2): symbols sorted by (length, symbol) take consecutive codes, so the table is the code
lengths alone.

The stream is written most significant bit first, in chunks of ``chunk`` symbols whose bit lengths are stored,
so that decoding runs all chunks in lock-step: step ``s`` decodes symbol ``s`` of every chunk with a single
table lookup, ``lut[next max_len bits]`` -> (symbol, length), over a vector of ``n / chunk`` bit positions.
That is ``chunk`` numpy steps whatever ``n``. The chunk is about ``sqrt(n)`` (a power of two in 256..2048) so
that small streams take few steps and large ones keep their step vectors long and cache-friendly; the stored
chunk lengths cost about 14 bits a chunk. Measured (``benchmarks/codecs.py``): 25M symbols decode in ~0.3 s.

Table layout (little-endian)::

    u32 alphabet   u64 count   u8 max_len (longest code)   u8 log2(chunk)   u16 zero
    alphabet code lengths, bit-packed at bit_length(max_len) bits (0: symbol unused)
    ceil(count / chunk) chunk lengths, as bits beyond one a symbol, bit-packed at bit_length(chunk * (max_len - 1))
    bits (chunks of at most 4096 symbols, so at most 16 bits)

Decoding validates everything (Kraft sum, lengths, totals, every chunk ending exactly where its stored length
says, no code outside the table; the padding bits after the last code are ignored) and raises
:class:`~onnxcomp.errors.CodecError` on garbage, without reading outside the stream. The decoder takes any chunk
of 1..4096 symbols; ``kernels/FORMAT.md`` (section 5.2) is the byte-level contract.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

from onnxcomp.codecs.bitpack import pack_bits, packed_size, unpack_bits
from onnxcomp.errors import CodecError

MAX_LEN = 16
MAX_ALPHABET = 1 << 16
MIN_CHUNK, MAX_CHUNK = 256, 4096  # symbols per independently decodable chunk
_HEAD = struct.Struct("<IQBBH")
_BLOCK = 1 << 22  # symbols encoded per block (bounds the temporaries)


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code lengths (uint8, 0 for unused symbols) for the symbol ``counts``, none above ``max_len``."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if counts.size > MAX_ALPHABET:
        raise CodecError(f"Huffman alphabet of {counts.size} symbols exceeds {MAX_ALPHABET}")
    lengths = np.zeros(counts.size, dtype=np.uint8)
    used = np.flatnonzero(counts)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    if used.size > 1 << max_len:
        raise CodecError(f"{used.size} symbols cannot have codes of at most {max_len} bits")
    depth = _huffman_depths(counts[used])
    histogram = np.bincount(depth, minlength=max_len + 1)
    histogram = _limit_lengths(histogram, max_len)
    # Most frequent symbols take the shortest codes (ties: lower symbol first, for determinism).
    by_frequency = used[np.lexsort((used, -counts[used]))]
    lengths[by_frequency] = np.repeat(np.arange(histogram.size), histogram)
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code (uint32) of every symbol with a nonzero length (RFC 1951 3.2.2)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.uint32)
    used = np.flatnonzero(lengths)
    if used.size == 0:
        return codes
    order = used[np.lexsort((used, lengths[used]))]
    ordered = lengths[order]
    hist = np.bincount(ordered, minlength=MAX_LEN + 2)
    first = np.zeros(hist.size, dtype=np.int64)
    code = 0
    for n in range(1, hist.size):  # one step per code length, not per symbol
        code = (code + hist[n - 1]) << 1 if n > 1 else 0
        first[n] = code
    rank = np.arange(order.size) - np.searchsorted(ordered, ordered, side="left")
    codes[order] = (first[ordered] + rank).astype(np.uint32)
    return codes


def default_chunk(count: int) -> int:
    """Chunk size: about sqrt(count), so that steps and vector length balance (256 .. 2048)."""
    return int(min(2048, max(MIN_CHUNK, 1 << (max(1, int(count ** 0.5)) - 1).bit_length())))


def encoded_size(counts: np.ndarray, lengths: np.ndarray, chunk: int | None = None) -> tuple[int, int]:
    """Exact (table bytes, stream bytes) of :func:`encode` for symbols with these counts and code lengths."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    count = int(counts.sum())
    chunk = chunk or default_chunk(count)
    max_len = int(lengths.max()) if lengths.size else 0
    alphabet = int(np.flatnonzero(counts).max()) + 1 if count else 0
    table = _HEAD.size + packed_size(alphabet, max(1, max_len).bit_length())
    table += packed_size(-(-count // chunk), _offset_width(chunk, max_len))
    bits = int((counts * lengths[:counts.size]).sum())
    return table, (bits + 7) // 8


def encode(symbols: np.ndarray, lengths: np.ndarray | None = None, chunk: int | None = None,
           max_len: int = MAX_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Huffman-code non-negative integer ``symbols``; returns (table, stream), both uint8 arrays."""
    symbols = np.asarray(symbols).reshape(-1)
    chunk = chunk or default_chunk(symbols.size)
    if chunk <= 0 or chunk & (chunk - 1) or chunk > MAX_CHUNK:
        raise CodecError(f"Huffman chunk size {chunk} must be a power of two up to {MAX_CHUNK}")
    if symbols.size and (symbols.dtype.kind not in "ui" or int(symbols.min()) < 0):
        raise CodecError("Huffman coding takes non-negative integer symbols")
    alphabet = int(symbols.max()) + 1 if symbols.size else 0
    if lengths is None:
        lengths = code_lengths(np.bincount(symbols, minlength=alphabet) if symbols.size else np.zeros(0), max_len)
    lengths = np.asarray(lengths, dtype=np.uint8)[:alphabet]
    if symbols.size and (lengths.size < alphabet or not lengths[symbols].all()):
        raise CodecError("Huffman code lengths do not cover every symbol")
    codes = canonical_codes(lengths)
    longest = int(lengths.max()) if lengths.size else 0

    # A code left-aligned in 16 bits; shifted by (8 - bit offset) it sits in the 24-bit window of its first byte.
    aligned = (codes << (16 - np.minimum(lengths, 16).astype(np.uint32))).astype(np.int32)
    total = int((np.bincount(symbols, minlength=alphabet) * lengths.astype(np.int64)).sum()) if symbols.size else 0
    stream = np.zeros((total + 7) // 8, dtype=np.uint8)
    chunk_bits = []
    base = 0  # bit position where the block starts
    for start in range(0, symbols.size, _BLOCK):  # blocks are whole chunks: _BLOCK is a multiple of MAX_CHUNK
        block = symbols[start:start + _BLOCK]
        code_len = lengths[block].astype(np.int32)
        ends = np.cumsum(code_len, dtype=np.int32)  # below 2**31: _BLOCK * 16 bits
        _write_codes(stream, base, aligned[block], ends - code_len)
        block_ends = ends[chunk - 1::chunk]
        if block.size % chunk:
            block_ends = np.append(block_ends, ends[-1])
        chunk_bits.append(np.diff(block_ends, prepend=0))
        base += int(ends[-1])
    chunk_bits = np.concatenate(chunk_bits).astype(np.int64) if chunk_bits else np.zeros(0, np.int64)
    chunk_syms = np.minimum(chunk, symbols.size - np.arange(chunk_bits.size) * chunk)
    head = _HEAD.pack(alphabet, symbols.size, longest, chunk.bit_length() - 1, 0)
    table = np.concatenate([
        np.frombuffer(head, dtype=np.uint8),
        pack_bits(lengths, max(1, longest).bit_length()),
        pack_bits(chunk_bits - chunk_syms, _offset_width(chunk, longest)) if chunk_bits.size else np.zeros(0, np.uint8),
    ])
    return table, stream


def decode(table: np.ndarray, stream: np.ndarray) -> np.ndarray:
    """Decode a (table, stream) pair from :func:`encode`; uint8 or uint16 symbols."""
    table = np.asarray(table, dtype=np.uint8).reshape(-1)
    stream = np.asarray(stream, dtype=np.uint8).reshape(-1)
    alphabet, count, longest, chunk, lengths, chunk_bits = parse_table(table)
    dtype = np.uint8 if alphabet <= 256 else np.uint16
    if count == 0:
        if stream.size:
            raise CodecError("Huffman stream holds data but its table says 0 symbols")
        return np.zeros(0, dtype=dtype)
    total = int(chunk_bits.sum())
    if (total + 7) // 8 != stream.size:
        raise CodecError(f"Huffman stream is {stream.size} bytes but its chunks add up to {total} bits")
    lut = _lookup_table(lengths, longest)

    nchunks = chunk_bits.size
    last = count - (nchunks - 1) * chunk  # symbols in the last chunk
    steps = chunk if nchunks > 1 else last
    # 24-bit window starting at every byte; the padding lets the last (shorter) chunk run past its end.
    padded = np.zeros(stream.size + (steps * longest) // 8 + 4, dtype=np.uint32)
    padded[:stream.size] = stream
    window = (padded[:-2] << 16) | (padded[1:-1] << 8) | padded[2:]
    starts = np.concatenate([[0], np.cumsum(chunk_bits[:-1])]).astype(np.int64)
    pos = starts.copy()
    out = np.empty((steps, nchunks), dtype=np.int32)
    q = np.empty_like(pos)
    w = np.empty(nchunks, dtype=np.uint32)
    shift = np.empty(nchunks, dtype=np.uint32)
    drop, mask = np.uint32(24 - longest), np.uint32(0xFFFFFF)
    last_end = 0
    for s in range(steps):  # symbol s of every chunk at once
        np.right_shift(pos, 3, out=q)
        np.take(window, q, out=w)
        np.bitwise_and(pos, 7, out=shift, casting="unsafe")
        np.left_shift(w, shift, out=w)
        np.bitwise_and(w, mask, out=w)
        np.right_shift(w, drop, out=w)
        entry = out[s]
        np.take(lut, w, out=entry)
        pos += entry & 31
        if s == last - 1:
            last_end = int(pos[-1])
    if nchunks > 1 and not np.array_equal(pos[:-1], starts[:-1] + chunk_bits[:-1]):
        raise CodecError("Huffman chunk does not end where its stored length says")
    if last_end != starts[-1] + chunk_bits[-1]:
        raise CodecError("Huffman last chunk does not end where its stored length says")
    # Only real symbols count: the last chunk's extra steps decode its padding, and are dropped below.
    if int(out[:, :-1].min(initial=0)) < 0 or int(out[:last, -1].min()) < 0:
        raise CodecError("Huffman stream holds a bit pattern that is no code of its table")
    np.right_shift(out, 5, out=out)
    return np.ascontiguousarray(out.T, dtype=dtype).reshape(-1)[:count]


def parse_table(table: np.ndarray) -> tuple[int, int, int, int, np.ndarray, np.ndarray]:
    """Check and unpack a table: (alphabet, count, longest code, chunk, lengths, chunk bit lengths)."""
    if table.size < _HEAD.size:
        raise CodecError(f"Huffman table truncated ({table.size} bytes)")
    alphabet, count, longest, chunk_log2, zero = _HEAD.unpack(table[:_HEAD.size].tobytes())
    if zero or chunk_log2 > MAX_CHUNK.bit_length() - 1 or longest > MAX_LEN or alphabet > MAX_ALPHABET:
        raise CodecError("Huffman table header is invalid")
    if count and (alphabet == 0 or longest == 0):
        raise CodecError("Huffman table has symbols but no codes")
    chunk = 1 << chunk_log2
    nchunks = -(-count // chunk)
    len_width, off_width = max(1, longest).bit_length(), _offset_width(chunk, longest)
    size_lengths = packed_size(alphabet, len_width)
    size_chunks = packed_size(nchunks, off_width)
    if table.size != _HEAD.size + size_lengths + size_chunks:
        raise CodecError(f"Huffman table is {table.size} bytes, expected {_HEAD.size + size_lengths + size_chunks}")
    body = table[_HEAD.size:]
    lengths = unpack_bits(body[:size_lengths], len_width, alphabet) if alphabet else np.zeros(0, np.uint8)
    chunk_syms = np.minimum(chunk, count - np.arange(nchunks, dtype=np.int64) * chunk)
    chunk_bits = (unpack_bits(body[size_lengths:], off_width, nchunks).astype(np.int64) + chunk_syms
                  if nchunks else np.zeros(0, np.int64))
    if lengths.size and int(lengths.max()) != longest:
        raise CodecError("Huffman table lengths disagree with its longest code")
    kraft = int(np.sum(np.left_shift(1, longest - lengths[lengths > 0].astype(np.int64)))) if longest else 0
    if kraft > 1 << longest:
        raise CodecError("Huffman code lengths are oversubscribed (Kraft sum above 1)")
    if nchunks:
        full = chunk_bits[:-1]
        last = count - (nchunks - 1) * chunk
        if (full.size and (full.min() < chunk or full.max() > chunk * longest)) or not (
                last <= chunk_bits[-1] <= last * longest):
            raise CodecError("Huffman chunk lengths are inconsistent with the symbol count")
    return alphabet, count, longest, chunk, lengths, chunk_bits


# -- internals -------------------------------------------------------------------------------------------
def _offset_width(chunk: int, longest: int) -> int:
    return max(1, chunk * (max(1, longest) - 1)).bit_length()


def _huffman_depths(counts: np.ndarray) -> np.ndarray:
    """Leaf depths of a Huffman tree over ``counts`` (all positive); the loop runs over the alphabet only."""
    n = counts.size
    heap = [(int(c), i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = np.zeros(2 * n - 1, dtype=np.int64)
    nxt = n
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (c1 + c2, nxt))
        nxt += 1
    depth = np.zeros(2 * n - 1, dtype=np.int64)
    for node in range(2 * n - 3, -1, -1):  # parents have higher ids: walk from the root down
        depth[node] = depth[parent[node]] + 1
    return depth[:n]


def _limit_lengths(histogram: np.ndarray, max_len: int) -> np.ndarray:
    """JPEG Annex K.3: rebalance the count of codes per length so that none is longer than ``max_len``."""
    bits = [int(x) for x in histogram]
    for i in range(len(bits) - 1, max_len, -1):
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    return np.array(bits[:max_len + 1], dtype=np.int64)


def _write_codes(stream: np.ndarray, base: int, aligned: np.ndarray, starts: np.ndarray) -> None:
    """OR codes (MSB first, left-aligned in 16 bits) starting at bits ``base + starts`` into ``stream``.

    A code of at most 16 bits starting at bit ``p`` lies in the 24-bit window of bytes ``p//8 .. p//8 + 2``.
    Codes never share a bit, so summing the windows of all codes that start in the same byte is their OR
    (bincount, exact in float64 below 2**24); byte ``b`` is then the OR of the matching bytes of the windows
    starting at ``b``, ``b - 1`` and ``b - 2``.
    """
    first = base >> 3
    rel = starts + (base & 7)
    window = aligned << (8 - (rel & 7))
    sums = np.bincount(rel >> 3, weights=window).astype(np.int32)
    span = sums.size + 2
    out = np.zeros(span, dtype=np.int32)
    out[:-2] |= sums >> 16
    out[1:-1] |= (sums >> 8) & 0xFF
    out[2:] |= sums & 0xFF
    stop = min(first + span, stream.size)
    stream[first:stop] |= out[:stop - first].astype(np.uint8)


def _lookup_table(lengths: np.ndarray, longest: int) -> np.ndarray:
    """``lut[next longest bits] = symbol << 5 | code length``; a negative entry marks a bit pattern that starts no
    code. It is ``longest - 32``, whose low 5 bits still advance by ``longest``: a garbage stream then never moves
    a chunk faster than a valid one could, so the lock-step reads stay inside the zero padding (with -1 they
    advanced 31 bits a step and could index past it), and the checks after the loop reject it."""
    lengths = lengths.astype(np.int64)
    used = np.flatnonzero(lengths)
    codes = canonical_codes(lengths).astype(np.int64)
    span = np.left_shift(1, longest - lengths[used])
    first = codes[used] << (longest - lengths[used])
    offsets = np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
    lut = np.full(1 << longest, longest - 32, dtype=np.int32)
    lut[np.repeat(first, span) + offsets] = np.repeat((used << 5) | lengths[used], span)
    return lut
