"""Bit packing: the layout (LSB first, value i at stream bits [i*b, (i+1)*b)), every width, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.codecs.bitpack import MAX_BITS, pack_bits, packed_size, unpack_bits
from onnxcomp.errors import CodecError

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("bits", range(1, MAX_BITS + 1))
def test_bitpack_roundtrip_and_layout(bits):
    for n in (0, 1, 7, 8, 9, 1001):
        values = RNG.integers(0, 1 << bits, n)
        packed = pack_bits(values, bits)
        reference = np.packbits(((values[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1),
                                bitorder="little")
        assert np.array_equal(packed, reference)  # LSB-first, value i at bits [i*bits, (i+1)*bits)
        assert packed.size == packed_size(n, bits)
        out = unpack_bits(packed, bits, n)
        assert np.array_equal(out, values) and out.dtype == (np.uint8 if bits <= 8 else np.uint16)


def test_unused_high_bits_of_the_last_byte_are_ignored():
    packed = pack_bits(np.array([5, 2, 7]), 3)  # 9 bits: the last byte holds 1 bit, 7 unused
    assert packed.size == 2 and packed[-1] >> 1 == 0
    dirty = packed.copy()
    dirty[-1] |= 0xFE
    assert np.array_equal(unpack_bits(dirty, 3, 3), [5, 2, 7])


def test_bitpack_refuses_bad_input():
    with pytest.raises(CodecError):
        pack_bits(np.array([4]), 2)
    with pytest.raises(CodecError):
        pack_bits(np.array([-1]), 4)
    with pytest.raises(CodecError):
        pack_bits(np.array([1]), 17)
    with pytest.raises(CodecError):
        pack_bits(np.array([1]), 0)
    with pytest.raises(CodecError):
        unpack_bits(np.zeros(1, np.uint8), 3, 5)  # 15 bits need 2 bytes
