"""Shared helpers of the codec tests: bit-exact comparison, seeded weights, resealed blobs, error checks."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from onnxcomp.codecs.stack import SECTION_KINDS, EncodedWeight, decode_weight, encode_weight, from_blob, to_blob
from onnxcomp.errors import CodecError, OnnxcompError

OPTIONS = [{}, {"allow_huffman": False}, {"allow_sparse": False}, {"allow_codebook": False},
           {"allow_sparse": False, "allow_codebook": False}]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes: -0.0 and NaN payloads count."""
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def clustered(shape, levels: int, sparsity: float, dtype=np.float32, seed: int = 0) -> np.ndarray:
    """A shared-weights tensor: ``levels`` nonzero values, a ``sparsity`` share of exact zeros."""
    rng = np.random.default_rng(seed)
    book = rng.standard_normal(levels).astype(dtype)
    book[book == 0] = 1
    w = book[rng.integers(0, levels, shape)]
    w[rng.random(shape) < sparsity] = 0
    return w


def roundtrip(x: np.ndarray, **options) -> EncodedWeight:
    """Encode, serialise, parse and decode ``x``; checks sizes and bits on the way."""
    enc = encode_weight(x, name="W", **options)
    blob = to_blob(enc)
    assert blob.dtype == np.uint8 and blob.ndim == 1
    sizes = enc.bytes_by_section()
    assert tuple(sizes) == SECTION_KINDS and sum(sizes.values()) == blob.size == enc.nbytes
    back = from_blob(blob, "W")
    assert back == enc
    assert same_bits(decode_weight(back), np.asarray(x))
    return enc


def seal(meta: bytes, payload: bytes, version: int = 2, flags: int = 0) -> np.ndarray:
    """A blob with a valid CRC around edited meta: the checks past the CRC must still catch it."""
    body = meta + payload
    head = struct.pack("<4sHHII", b"OCPW", version, flags, len(meta), zlib.crc32(body))
    return np.frombuffer(head + body, np.uint8)


def assert_codec_error(blob) -> str:
    """Parsing and decoding ``blob`` raises one line of CodecError naming the weight; returns the message."""
    with pytest.raises(CodecError) as info:
        decode_weight(from_blob(blob, "W"))
    message = str(info.value)
    assert message.startswith("malformed packed weight 'W': ") and "\n" not in message
    assert isinstance(info.value, OnnxcompError)
    return message


RNG = np.random.default_rng(0)
CASES = {
    "all zeros": np.zeros((300, 7), np.float32),
    "no zeros": RNG.standard_normal((64, 64)).astype(np.float32),
    "one element": np.array([3.5], np.float32),
    "one zero": np.zeros(1, np.float32),
    "empty": np.zeros((0, 3), np.float32),
    "scalar": np.array(-2.5, np.float32),
    "1 distinct value": np.full((100, 100), 0.25, np.float32),
    "256 distinct values": RNG.permutation(np.repeat(np.arange(1, 257, dtype=np.float32), 10)).reshape(64, 40),
    "257 distinct values": np.repeat(np.arange(257, dtype=np.float32), 9),
    "float16 clustered": clustered((128, 64), 16, 0.8, np.float16),
    "float16 dense": RNG.standard_normal(5000).astype(np.float16),
    "float64 clustered": clustered((50, 60), 5, 0.5, np.float64),
    "-0.0 and NaN": np.array([0.0, -0.0, 1.0, np.nan, np.inf] * 400, np.float32),
    "90% sparse 16 levels": clustered((300, 784), 16, 0.9),
    "99% sparse float": np.where(RNG.random(50000) < 0.99, 0, RNG.standard_normal(50000)).astype(np.float32),
    "runs of 2^b-1 and 2^b": np.tile(np.r_[np.zeros(15), 1.0, np.zeros(16), 2.0], 100).astype(np.float32),
    "non-contiguous": clustered((80, 90), 4, 0.5).T,
    "int8 codes": RNG.integers(-4, 4, 3000).astype(np.int8),
    "sparse uint8 codes": np.where(RNG.random(3000) < 0.9, 0, RNG.integers(1, 16, 3000)).astype(np.uint8),
}
