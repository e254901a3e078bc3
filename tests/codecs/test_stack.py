"""The codec stack: exact round trips of every stack, the cheapest-encoding choice, determinism, exact pricing.

Every decoded tensor is compared bit for bit (as unsigned integers), so -0.0 and NaN payloads count.
"""

from __future__ import annotations

import numpy as np
import pytest

import onnxcomp.codecs
import onnxcomp.codecs.stack
from onnxcomp.codecs.stack import (
    dense_codebook,
    encode_weight,
    encoded_nbytes,
    exactly_float16,
    to_blob,
)
from onnxcomp.errors import CodecError
from tests.codecs.helpers import CASES, OPTIONS, roundtrip


def test_public_names_stay_importable_from_stack():
    # other modules (passes, emitters, kernels, benchmarks) import these from onnxcomp.codecs.stack
    for name in ("EncodedWeight", "encode_weight", "encoded_nbytes", "decode_weight", "from_blob", "to_blob",
                 "dense_codebook", "exactly_float16", "MAX_ELEMENTS", "MAGIC", "VERSION", "SECTION_KINDS"):
        assert hasattr(onnxcomp.codecs.stack, name), name
    assert set(onnxcomp.codecs.__all__) == {"EncodedWeight", "decode_weight", "encode_weight", "from_blob", "to_blob"}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "all")
def test_stack_roundtrip_exact(name, options):
    roundtrip(CASES[name], **options)


def test_stack_picks_the_cheapest():
    x = CASES["90% sparse 16 levels"]
    best = roundtrip(x)
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


def test_edge_stacks():
    assert encode_weight(CASES["empty"]).describe() == "plain"
    assert encode_weight(CASES["scalar"]).describe() == "plain"
    zeros = encode_weight(CASES["all zeros"])  # a 1-entry codebook holding 0.0 (as float16): no indices at all
    assert zeros.describe() == "codebook(k=1 none)" and list(zeros.sections) == ["codebook"]
    no_book = encode_weight(CASES["all zeros"], allow_codebook=False)  # sparse without a single entry
    assert no_book.scheme == "sparse" and no_book.meta["count"] == 0
    assert encode_weight(CASES["int8 codes"]).meta["index_bits"] == 3  # 3-bit codes in int8: 3 bits each


def test_dense_codebook_puts_zero_first():
    x = np.array([[0.5, 0.0], [-1.0, 0.5]], np.float32)
    book, index = dense_codebook(x)
    assert book[0] == 0 and index.dtype == np.uint8 and index.shape == x.shape
    assert np.array_equal(book[index], x)
    assert dense_codebook(np.arange(300, dtype=np.float32)) is None


def test_stack_is_deterministic():
    x = CASES["90% sparse 16 levels"]
    assert np.array_equal(to_blob(encode_weight(x)), to_blob(encode_weight(x.copy())))


def test_stack_refuses_other_dtypes():
    with pytest.raises(CodecError, match="dtype"):
        encode_weight(np.arange(10, dtype=np.int32))


def test_encoded_nbytes_is_the_blob_size() -> None:
    """Passes price widths with encoded_nbytes: it must equal the bytes encode_weight writes, for every stack."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(-7, 8, 5000).astype(np.int8), np.round(rng.standard_normal(3000) * 2).astype(np.int8),
              rng.standard_normal(2000).astype(np.float32),
              np.where(rng.random(4000) < 0.8, 0, rng.standard_normal(4000)).astype(np.float32),
              rng.integers(0, 4, 3000).astype(np.uint8), *CASES.values()]
    for a in arrays:
        for options in OPTIONS:
            assert encoded_nbytes(a, **options) == len(to_blob(encode_weight(a, **options)))


@pytest.mark.parametrize("sparse", [False, True])
def test_float16_exact_codebook_is_stored_at_half_size(sparse: bool) -> None:
    rng = np.random.default_rng(3)
    levels = rng.standard_normal(16).astype(np.float16).astype(np.float32)  # every level is a float16
    array = levels[rng.integers(0, 16, 4000)]
    if sparse:
        array[rng.random(4000) < 0.8] = 0.0
    enc = roundtrip(array)  # bit-exact, float32 out
    assert enc.meta.get("book_dtype") == "float16" and enc.meta["k"] >= 16
    assert len(enc.sections["codebook"]) == 2 * enc.meta["k"]
    assert to_blob(enc)[6] == 1  # the header flag
    # Must not fire: one level that is not a float16 keeps the whole codebook in float32.
    array[np.flatnonzero(array)[0]] = np.float32(0.1)
    enc = roundtrip(array)
    assert "book_dtype" not in enc.meta


def test_exactly_float16_is_bit_exact() -> None:
    halves = np.float16([0.5, -0.0, 65504.0, 6e-8]).astype(np.float32)
    assert exactly_float16(halves) and exactly_float16(halves.astype(np.float64))
    assert not exactly_float16(np.float32([0.5, 0.1]))  # 0.1 is not a float16
    assert not exactly_float16(np.float32([1e5]))  # beyond float16's range
    assert not exactly_float16(np.array([0x7FC00001], np.uint32).view(np.float32))  # a NaN payload float16 loses
    assert not exactly_float16(np.int8([1, 2])) and not exactly_float16(halves.astype(np.float16))
