"""The native ``DecodeWeight`` kernel (``kernels/native/decode_weight.cc``, ``blob_decoder.cc``) in onnxruntime,
against the Python reference and the golden blobs of ``kernels/testdata``:

- every valid golden blob decodes, in a one-node model, to exactly its ``.npy`` (dtype, shape, bits); version-1
  blobs (JSON meta) are refused, as FORMAT.md allows a native decoder to;
- every invalid golden blob fails session creation with the reference's own message (the manifest's ``message``,
  whose ``error`` substring the golden set pins);
- blobs fed at run time are decoded in the run; the node's attributes are checked against the blob; the size
  limits read the same environment variables and refuse with the same words;
- seeded random weights of every stack, Huffman streams of every chunk size, and CRC-resealed mutations of the
  golden blobs decode (or fail) exactly as the Python decoder does.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.codecs import huffman
from onnxcomp.codecs.stack import EncodedWeight, decode_weight, encode_weight, from_blob, to_blob
from onnxcomp.errors import CodecError, OnnxcompError
from onnxcomp.kernels import library, reference, schema
from tests.conftest import ROOT

if library.library_path() is None:
    pytest.skip(f"no native library: {library.absent_reason()}", allow_module_level=True)

DATA = ROOT / "kernels" / "testdata"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
VALID = {case["name"]: case for case in MANIFEST["valid"]}
INVALID = {case["name"]: case for case in MANIFEST["invalid"]}
V1_REFUSAL = "format version 1 is not supported"


def _version(blob: np.ndarray) -> int:
    return struct.unpack_from("<H", blob.tobytes(), 4)[0] if blob.size >= 6 else -1


def _model(blob: np.ndarray | None, out: str = "W", shape=None, dtype: int | None = None,
           out_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """One DecodeWeight node; the blob an initializer, or (None) a graph input named ``blob``."""
    node = helper.make_node(schema.DECODE_OP, ["blob"], [out], domain=schema.DOMAIN)
    if shape is not None:
        node.attribute.append(helper.make_attribute(schema.DECODE_ATTR_SHAPE, [int(d) for d in shape],
                                                    attr_type=onnx.AttributeProto.INTS))
    if dtype is not None:
        node.attribute.append(helper.make_attribute(schema.DECODE_ATTR_DTYPE, int(dtype)))
    inputs = [] if blob is not None else [helper.make_tensor_value_info("blob", TensorProto.UINT8, [None])]
    inits = [numpy_helper.from_array(blob, "blob")] if blob is not None else []
    graph = helper.make_graph([node], "decode", inputs, [helper.make_tensor_value_info(out, out_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(schema.DOMAIN, schema.VERSION)])
    model.ir_version = 8
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    assert library.register(so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _native(blob: np.ndarray, like: np.ndarray | None = None, out: str = "W") -> np.ndarray:
    """The kernel's output for a constant blob (attributes and output type from ``like`` when given)."""
    if like is None:
        return _session(_model(blob, out)).run(None, {})[0]
    onnx_type = helper.np_dtype_to_tensor_dtype(like.dtype)
    return _session(_model(blob, out, like.shape, onnx_type, onnx_type)).run(None, {})[0]


def _native_error(blob: np.ndarray, out: str = "W", **attrs) -> str:
    """The message of the failure (session creation or run) of a one-node model over ``blob``."""
    with pytest.raises(Exception) as info:
        _session(_model(blob, out, **attrs)).run(None, {})
    assert type(info.value).__module__.startswith("onnxruntime"), info.value
    return str(info.value)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == \
        np.ascontiguousarray(b).tobytes()


def _blob(name: str) -> np.ndarray:
    return np.fromfile(DATA / f"{name}.blob", dtype=np.uint8)


@pytest.mark.parametrize("name", VALID)
def test_valid_golden_blob_decodes_bit_for_bit(name):
    blob, expected = _blob(name), np.load(DATA / f"{name}.npy", allow_pickle=False)
    if VALID[name]["version"] == 1:
        assert V1_REFUSAL in _native_error(blob)
        return
    assert _same(_native(blob, expected), expected)


@pytest.mark.parametrize("name", INVALID)
def test_invalid_golden_blob_fails_with_the_reference_message(name):
    case, blob = INVALID[name], _blob(name)
    message = _native_error(blob, out=name)
    if _version(blob) == 1 and name != "flag_on_version_1":  # JSON-meta faults: the version is refused first
        assert f"malformed packed weight {name!r}: {V1_REFUSAL}" in message
        return
    assert case["error"] in message and case["message"] in message, message


def test_blob_fed_at_run_time_is_decoded_in_each_run():
    sess = _session(_model(None, "W", out_type=TensorProto.FLOAT))
    rng = np.random.default_rng(0)
    for _ in range(2):
        w = np.where(rng.random(300) < 0.7, 0, rng.integers(-3, 4, 300)).astype(np.float32)
        got = sess.run(None, {"blob": to_blob(encode_weight(w))})[0]
        assert _same(got, w)
    bad = to_blob(encode_weight(np.zeros(4, np.float32)))
    bad[-1] ^= 1  # the CRC no longer matches
    with pytest.raises(Exception, match="CRC mismatch"):
        sess.run(None, {"blob": bad})
    # A float16 blob into a float output: the kernel says what the blob holds.
    with pytest.raises(Exception, match="but the blob holds float16"):
        sess.run(None, {"blob": to_blob(encode_weight(np.ones(3, np.float16)))})


def test_node_attributes_must_match_the_blob():
    name, case = "codebook_int8_3bit", VALID["codebook_int8_3bit"]
    blob = _blob(name)
    wrong_shape = [case["shape"][0] + 1, *case["shape"][1:]]
    for shape, dtype in ((wrong_shape, TensorProto.INT8), (case["shape"], TensorProto.UINT8)):
        with pytest.raises(CodecError) as want:
            reference.decode_weight(blob, shape, dtype, name="W")
        message = _native_error(blob, shape=shape, dtype=dtype, out_type=dtype)
        assert str(want.value) in message, message


def test_output_type_and_shape_come_from_the_attributes():
    """The shape inference sets the output's type from ``dtype``: an Identity after it needs no value_info."""
    w = np.arange(12, dtype=np.float16).reshape(3, 4)
    model = _model(to_blob(encode_weight(w)), "W", w.shape, TensorProto.FLOAT16, TensorProto.FLOAT16)
    model.graph.node.append(helper.make_node("Identity", ["W"], ["Y"]))
    model.graph.output[0].name = "Y"
    sess = _session(model)
    assert sess.get_outputs()[0].type == "tensor(float16)" and sess.get_outputs()[0].shape == [3, 4]
    assert _same(sess.run(None, {})[0], w)


def _reference_message(blob: np.ndarray, name: str = "W") -> str:
    try:
        decode_weight(from_blob(blob, name))
    except OnnxcompError as e:
        return str(e)
    raise AssertionError("the reference accepted the blob")


def test_size_limits_read_the_same_environment(monkeypatch):
    # A 1-entry codebook: a few bytes that state 2M float32 elements (8 MiB).
    blob = to_blob(encode_weight(np.full((2048, 1024), 0.5, np.float32)))
    assert blob.size < 64
    monkeypatch.setenv("ONNXCOMP_MAX_EXPANSION", "16")
    want = _reference_message(blob)
    assert "over 16 times its size" in want and want in _native_error(blob)
    monkeypatch.setenv("ONNXCOMP_MAX_EXPANSION", "1m")
    monkeypatch.setenv("ONNXCOMP_MAX_TENSOR_BYTES", "4 MiB")
    want = _reference_message(blob)
    assert "exceeds the limit for one decoded tensor" in want and want in _native_error(blob)
    monkeypatch.setenv("ONNXCOMP_MAX_TENSOR_BYTES", "lots")
    want = _reference_message(blob)
    assert "is not a size" in want and want in _native_error(blob)
    monkeypatch.setenv("ONNXCOMP_MAX_TENSOR_BYTES", " 8MIB ")
    assert _same(_native(blob), np.full((2048, 1024), 0.5, np.float32))


def _random_weight(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Pruned and shared values (or raw ones), with -0.0, NaN payloads and infinities now and then."""
    size = int(np.prod(shape))
    kind = rng.integers(4)
    if dtype in ("int8", "uint8"):
        info = np.iinfo(dtype)
        levels = rng.integers(info.min, info.max + 1, size=int(rng.integers(1, 40)))
        values = levels[rng.integers(0, levels.size, size)] if kind else rng.integers(info.min, info.max + 1, size)
    else:
        levels = rng.standard_normal(int(rng.integers(1, 300))).astype(dtype)
        if kind == 3:  # exact float16 values, so that float32/float64 codebooks are stored as float16
            levels = levels.astype(np.float16).astype(dtype)
        values = levels[rng.integers(0, levels.size, size)] if kind else rng.standard_normal(size).astype(dtype)
        bits = values.view(f"u{np.dtype(dtype).itemsize}")
        if size and rng.random() < 0.3:
            special = np.array([-0.0, np.inf, -np.inf, np.nan], dtype=dtype)
            bits[rng.integers(0, size, 3)] = special.view(bits.dtype)[rng.integers(0, 4, 3)]
    values = np.asarray(values).astype(dtype)
    sparsity = rng.choice([0.0, 0.5, 0.9, 0.99, 1.0])
    values[rng.random(size) < sparsity] = 0
    return values.reshape(shape)


@pytest.mark.parametrize("seed", range(6))
def test_random_weights_round_trip_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    stacks = set()
    for case in range(40):
        dtype = ("float32", "float16", "float64", "int8", "uint8")[case % 5]
        shape = tuple(int(d) for d in rng.integers(0 if case % 13 == 0 else 1, 40, size=int(rng.integers(0, 4))))
        w = _random_weight(rng, dtype, shape)
        options = {k: bool(rng.random() < 0.8) for k in ("allow_sparse", "allow_codebook", "allow_huffman")}
        enc = encode_weight(w, **options)
        stacks.add(enc.describe().split("(")[0] + str(enc.meta.get("index_coding")) + str(enc.meta.get("gap_coding")))
        blob = to_blob(enc)
        want = decode_weight(from_blob(blob))
        assert _same(want, w)
        assert _same(_native(blob, w), w), (seed, case, enc.describe())
    assert len(stacks) >= 5


@pytest.mark.parametrize("chunk", [1, 2, 8, 256, 4096])
def test_huffman_streams_of_every_chunk_size(chunk):
    """Codebook indices Huffman coded at a given chunk size, with codes up to 16 bits (skewed counts)."""
    rng = np.random.default_rng(chunk)
    k = 22
    counts = [1, 1]
    while len(counts) < k:  # Fibonacci counts: Huffman codes of up to 21 bits, limited to 16
        counts.append(counts[-1] + counts[-2])
    symbols = rng.permutation(np.repeat(np.arange(k, dtype=np.uint8), counts))
    table, stream = huffman.encode(symbols, chunk=chunk)
    assert int(table[12]) == 16  # the longest code
    book = np.sort(rng.standard_normal(k).astype(np.float32))
    enc = EncodedWeight((symbols.size,), "float32", {"scheme": "codebook", "k": k, "index_coding": "huffman",
                                               "index_bits": (k - 1).bit_length()},
                        {"codebook": book.tobytes(), "indices": stream.tobytes(), "indices.huffman": table.tobytes()})
    blob = to_blob(enc)
    want = book[symbols]
    assert _same(decode_weight(from_blob(blob)), want)
    assert _same(_native(blob, want), want)


def _reseal(blob: bytearray) -> np.ndarray:
    if len(blob) >= 16:
        blob[12:16] = struct.pack("<I", zlib.crc32(bytes(blob[16:])))
    return np.frombuffer(bytes(blob), np.uint8)


def test_mutated_golden_blobs_agree_with_the_reference():
    """Byte flips, truncations and insertions of the version-2 golden blobs, CRC recomputed: the native kernel
    accepts exactly what the reference accepts, with the same bits, and refuses the rest with the same message."""
    rng = np.random.default_rng(7)
    seeds = [_blob(n) for n, c in VALID.items() if c["version"] == 2]
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(400):
        blob = bytearray(seeds[rng.integers(len(seeds))].tobytes())
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(max(1, len(blob))))
            op = rng.integers(4)
            if op == 0 and blob:
                blob[at % len(blob)] ^= 1 << int(rng.integers(8))
            elif op == 1 and blob:
                blob[at % len(blob)] = int(rng.choice([0, 1, 2, 0x7F, 0x80, 0xFF]))
            elif op == 2:
                del blob[at:]
            else:
                blob[at:at] = bytes([int(rng.integers(256))])
        mutant = _reseal(blob)
        try:
            want = decode_weight(from_blob(mutant, "W"))
        except CodecError as e:
            message = _native_error(mutant)
            if _version(mutant) == 1:
                assert V1_REFUSAL in message or str(e) in message
            else:
                assert str(e) in message, (bytes(blob).hex(), str(e), message)
            outcomes["refused"] += 1
            continue
        except (ValueError, MemoryError):  # FORMAT.md 9: numpy's own limits on crafted zero-size shapes
            continue
        if _version(mutant) == 1:
            assert V1_REFUSAL in _native_error(mutant)
            continue
        onnx_type = helper.np_dtype_to_tensor_dtype(want.dtype)
        assert _same(_session(_model(mutant, "W", out_type=onnx_type)).run(None, {})[0], want)
        outcomes["accepted"] += 1
    assert outcomes["accepted"] > 20 and outcomes["refused"] > 100, outcomes


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float16_codebooks_widen_nan_payloads_exactly(dtype):
    """Signalling and quiet NaNs with payloads, infinities, subnormals, -0.0 in a float16 codebook (HALF_BOOK):
    widened bit for bit, never quieted."""
    half = np.array([0x7D00, 0xFD01, 0x7E55, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x8000, 0x3C00, 0x0000], np.uint16)
    levels = half.view(np.float16).astype(dtype)
    w = levels[np.random.default_rng(1).integers(0, levels.size, (17, 13))]
    blob = to_blob(encode_weight(w, allow_sparse=False))
    assert struct.unpack_from("<H", blob.tobytes(), 6)[0] == 1  # the HALF_BOOK flag
    bits = f"u{np.dtype(dtype).itemsize}"
    assert levels.view(bits)[0] == (0x7FA00000 if dtype == "float32" else 0x7FF4000000000000)  # signalling kept
    assert _same(decode_weight(from_blob(blob)), w)
    assert _same(_native(blob, w), w)
