"""The blob: corrupted, truncated and crafted blobs (valid CRC around bad meta) raise one line of CodecError naming
the weight, never another exception; the binary meta is small and checked; version 1 (JSON meta) still reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxcomp.codecs.blob import HEADER, MAX_ELEMENTS
from onnxcomp.codecs.stack import decode_weight, encode_weight, from_blob, to_blob
from tests.codecs.helpers import CASES, assert_codec_error, seal

RNG = np.random.default_rng(1)
BLOBS = [to_blob(encode_weight(CASES["90% sparse 16 levels"][:50])),
         to_blob(encode_weight(CASES["90% sparse 16 levels"][:50], allow_huffman=False)),
         to_blob(encode_weight(CASES["float16 clustered"], allow_sparse=False)),
         to_blob(encode_weight(CASES["no zeros"][:8]))]


def test_header_layout():
    blob = BLOBS[0].tobytes()
    magic, version, flags, meta_len, _ = HEADER.unpack_from(blob)
    assert HEADER.size == 16 and (magic, version, flags) == (b"OCPW", 2, 0)
    assert meta_len == len(encode_weight(CASES["90% sparse 16 levels"][:50]).header_binary())


@pytest.mark.parametrize("blob", BLOBS, ids=["huffman", "packed", "codebook", "plain"])
def test_corrupt_blobs_raise_codec_error(blob):
    for i in np.linspace(0, blob.size - 1, 60).astype(int):
        bad = blob.copy()
        bad[i] ^= 0x10
        message = assert_codec_error(bad)
        assert "CRC" in message or i < 16  # the CRC covers everything after the 16-byte header
    for n in np.linspace(0, blob.size - 1, 40).astype(int):
        assert_codec_error(blob[:n])
    wrong = blob.copy()
    wrong[:4] = np.frombuffer(b"ABCD", np.uint8)
    assert "magic" in assert_codec_error(wrong)
    newer = blob.copy()
    newer[4] = 9
    assert "version" in assert_codec_error(newer)
    for n in (0, 3, 16, 100, 5000):
        assert_codec_error(RNG.integers(0, 256, n).astype(np.uint8))
    assert_codec_error(np.concatenate([blob, np.zeros(3, np.uint8)]))


def test_valid_crc_but_inconsistent_meta_raises_codec_error():
    enc = encode_weight(CASES["90% sparse 16 levels"][:50])
    meta = json.loads(enc.header_json())
    payload = b"".join(enc.sections.values())
    edits = [("shape", [10**12]), ("shape", [-1]), ("shape", "x"), ("shape", [True]), ("shape", [2.0]),
             ("dtype", "int8"), ("dtype", "int32"), ("scheme", "zip"), ("scheme", {}), ("k", 0), ("k", 300),
             ("count", 10**9), ("gap_bits", 0), ("gap_bits", 17), ("gap_coding", "lz4"), ("index_bits", 9),
             ("sections", [["values", 1]]), ("sections", "x"), ("sections", [["gaps", -1]]),
             ("index_coding", None), ("extra", 1), ("book_dtype", "float16"), ("book_dtype", "bfloat16")]
    for key, value in edits:
        edited = dict(meta, **{key: value})
        assert_codec_error(seal(json.dumps(edited).encode(), payload, version=1))
    assert_codec_error(seal(json.dumps(meta).encode(), payload[:-1], version=1))
    assert_codec_error(seal(json.dumps(meta).encode(), payload[:-2] + b"\xff\xff", version=1))  # gaps past the end
    assert_codec_error(seal(b"[]", b"", version=1))
    assert_codec_error(seal(b"\xff\xfe", b"", version=1))  # not UTF-8


def test_deeply_nested_json_is_a_codec_error():
    # json.loads raises RecursionError here, which used to escape as is
    assert "meta block is not" in assert_codec_error(seal(b"[" * 100000 + b"]" * 100000, b"", version=1))


def test_binary_meta_is_small_and_checked():
    array = CASES["90% sparse 16 levels"][:50]
    enc = encode_weight(array)
    meta, payload = enc.header_binary(), b"".join(enc.sections.values())
    assert len(meta) < 25 < len(enc.header_json())
    np.testing.assert_array_equal(decode_weight(from_blob(seal(meta, payload))), array)
    assert_codec_error(seal(meta[:-1], payload))  # truncated meta
    assert_codec_error(seal(meta + b"\x00", payload))  # trailing bytes
    assert_codec_error(seal(bytes([9]) + meta[1:], payload))  # unknown dtype code
    assert_codec_error(seal(meta[:1] + bytes([7]) + meta[2:], payload))  # unknown scheme code
    assert_codec_error(seal(meta[:2] + b"\xff" * 12 + meta[3:], payload))  # runaway varint


def test_element_limit():
    assert MAX_ELEMENTS == 1 << 32
    plain = bytes([1, 0, 2]) + b"\x80\x80\x04" + b"\x80\x80\x04" + bytes([1, 0, 0])  # 65536 x 65536 = 2**32
    assert "section 'values' is 0 bytes" in assert_codec_error(seal(plain, b""))  # 2**32 itself is allowed
    over = plain.replace(b"\x80\x80\x04", b"\x81\x80\x04", 1)  # 65537 x 65536
    assert "more than 4294967296 elements" in assert_codec_error(seal(over, b""))


def test_version_1_json_blobs_still_decode():
    array = CASES["90% sparse 16 levels"]
    enc = encode_weight(array)
    old = seal(enc.header_json(), b"".join(enc.sections.values()), version=1)
    np.testing.assert_array_equal(decode_weight(from_blob(old)), array)


def test_float16_codebook_flag_is_checked() -> None:
    enc = encode_weight(np.float32([0.5, 0.25, 0.5, -1.0] * 100))
    assert enc.meta["book_dtype"] == "float16"
    meta, payload = enc.header_binary(), b"".join(enc.sections.values())
    np.testing.assert_array_equal(decode_weight(from_blob(seal(meta, payload, flags=1))),
                                  np.float32([0.5, 0.25, 0.5, -1.0] * 100))
    assert_codec_error(seal(meta, payload, flags=0))  # without the flag the codebook section is the wrong size
    assert_codec_error(seal(meta, payload, flags=2))  # unknown flag bit
    assert_codec_error(seal(enc.header_json(), payload, version=1, flags=1))  # no flags in version 1
    ints = encode_weight(np.int8([1, -3, 2, 1] * 100))
    assert_codec_error(seal(ints.header_binary(), b"".join(ints.sections.values()), flags=1))  # int8 codes
