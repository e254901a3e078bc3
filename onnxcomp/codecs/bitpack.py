"""Fixed-width bit packing of small non-negative integers (codebook indices, CSR gaps).

``pack_bits(values, bits)`` writes value ``i`` into stream bits ``[i * bits, (i + 1) * bits)``, least significant
bit first, and bit ``j`` of the stream is bit ``j % 8`` of byte ``j // 8`` (little-endian bit order, as
``np.packbits(..., bitorder="little")``). The stream takes ``ceil(n * bits / 8)`` bytes; unused high bits of the
last byte are zero. Any width 1..16.

Vectorised by the period of the layout: eight values fill exactly ``bits`` bytes, so the stream is a matrix of
rows of ``bits`` bytes, and value ``j`` of every row sits at the same byte (``j * bits // 8``) and bit offset
(``j * bits % 8``). Packing and unpacking are then 8 column operations over ``n / 8`` rows, whatever the width.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.errors import CodecError

MAX_BITS = 16


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits take once packed."""
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative integers below ``2**bits`` into a uint8 bit stream (LSB first)."""
    _check_width(bits)
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.dtype.kind not in "ui" or int(flat.min()) < 0 or int(flat.max()) >> bits):
        raise CodecError(f"cannot pack values outside 0..{(1 << bits) - 1} into {bits} bits")
    if bits == 8:
        return flat.astype(np.uint8)
    rows = -(-flat.size // 8)
    lanes = np.zeros((rows * 8,), dtype=np.uint32)
    lanes[:flat.size] = flat
    lanes = lanes.reshape(rows, 8)
    # Eight values fill exactly ``bits`` bytes: value j of a row starts at byte (j*bits)//8, bit (j*bits)%8 and
    # spans at most three bytes. The 8 lanes are independent column operations over all rows.
    out = np.zeros((rows, bits + 2), dtype=np.uint8)
    for j in range(8):
        byte, shift = divmod(j * bits, 8)
        word = lanes[:, j] << np.uint32(shift)
        for k in range((shift + bits + 7) // 8):
            out[:, byte + k] |= (word >> np.uint32(8 * k)).astype(np.uint8)
    return out[:, :bits].reshape(-1)[:packed_size(flat.size, bits)].copy()


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Read ``count`` values of ``bits`` bits back (uint8 for widths up to 8, else uint16)."""
    _check_width(bits)
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if count < 0 or data.size < packed_size(count, bits):
        raise CodecError(f"bit stream too short: {data.size} bytes for {count} values of {bits} bits")
    dtype = np.uint8 if bits <= 8 else np.uint16
    if bits == 8:
        return data[:count].copy()
    rows = -(-count // 8)
    padded = np.zeros(rows * bits + 2, dtype=np.uint8)
    used = packed_size(count, bits)
    padded[:used] = data[:used]
    # Row r holds values 8r..8r+7 in bytes r*bits..(r+1)*bits-1; the two spare bytes let the last lane read 3.
    table = np.lib.stride_tricks.as_strided(padded, shape=(rows, bits + 2), strides=(bits, 1))
    out = np.empty((rows, 8), dtype=dtype)
    mask = np.uint32((1 << bits) - 1)
    for j in range(8):
        byte, shift = divmod(j * bits, 8)
        word = table[:, byte].astype(np.uint32)
        word |= table[:, byte + 1].astype(np.uint32) << np.uint32(8)
        if shift + bits > 16:
            word |= table[:, byte + 2].astype(np.uint32) << np.uint32(16)
        out[:, j] = (word >> np.uint32(shift)) & mask
    return out.reshape(-1)[:count].copy()


def _check_width(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise CodecError(f"bit width {bits!r} is not supported: use 1..{MAX_BITS}")
