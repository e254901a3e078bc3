"""The golden blobs of ``kernels/testdata`` (the conformance set of ``kernels/FORMAT.md``) against the Python decoder.

- every file matches the sha256 the manifest records (the set itself is intact);
- every valid blob decodes, through ``DecodeWeight``'s reference and through ``from_blob`` + ``decode_weight``, to
  exactly its ``.npy`` (dtype, shape and bytes; -0.0 and NaN payloads included), and the manifest's shape, dtype,
  stack and sections are what the blob holds;
- re-encoding the ``.npy`` with the recorded options gives the very same bytes (``reencode``: blobs the encoder
  wrote), which pins the encoder's choices byte for byte;
- every invalid blob raises :class:`~onnxcomp.errors.CodecError` with the recorded message, at the recorded stage.

The manifest is the interface: a native decoder's tests read the same ``manifest.json`` (``blob``, ``shape``,
``dtype``, ``data_sha256``: the decoded little-endian bytes in C order; ``error`` for the invalid ones).
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import onnx
import pytest

from onnxcomp.codecs.stack import decode_weight, encode_weight, from_blob, to_blob
from onnxcomp.errors import CodecError
from onnxcomp.kernels import reference
from tests.conftest import ROOT

DATA = ROOT / "kernels" / "testdata"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
VALID = {case["name"]: case for case in MANIFEST["valid"]}
INVALID = {case["name"]: case for case in MANIFEST["invalid"]}
STACKS = {"plain", "codebook", "sparse"}


def _read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _le_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and _le_bytes(a) == _le_bytes(b)


def test_manifest_lists_every_file_and_covers_every_stack():
    listed = {f"{n}.blob" for n in (*VALID, *INVALID)} | {f"{n}.npy" for n in VALID}
    on_disk = {p.name for p in DATA.iterdir() if p.suffix in (".blob", ".npy")}
    assert listed == on_disk
    assert len(VALID) == len(MANIFEST["valid"]) and len(INVALID) == len(MANIFEST["invalid"])  # unique names
    stacks = {(c["dtype"], c["stack"].split("(")[0], c["meta"].get("book_dtype")) for c in VALID.values()}
    for dtype in ("float16", "float32", "float64", "int8", "uint8"):
        assert (dtype, "plain", None) in stacks
    metas = [c["meta"] for c in VALID.values()]
    codings = {(m["scheme"], m.get("k", 0) > 0, m.get("index_coding"), m.get("gap_coding")) for m in metas}
    for want in [("codebook", True, "packed", None), ("codebook", True, "huffman", None),
                 ("codebook", True, "none", None), ("sparse", False, None, "packed"),
                 ("sparse", False, None, "huffman"),
                 ("sparse", True, "packed", "packed"), ("sparse", True, "packed", "huffman"),
                 ("sparse", True, "huffman", "packed"), ("sparse", True, "huffman", "huffman")]:
        assert want in codings, want
    assert any(m["scheme"] == "sparse" and m["k"] == 1 and m["index_coding"] == "none" for m in metas)
    assert {m.get("book_dtype") for m in metas if m["scheme"] == "codebook"} == {None, "float16"}
    assert {m.get("book_dtype") for m in metas if m["scheme"] == "sparse"} == {None, "float16"}
    assert {c["version"] for c in VALID.values()} == {1, 2}


@pytest.mark.parametrize("name", [*VALID, *INVALID])
def test_files_match_the_manifest(name):
    case = VALID.get(name) or INVALID[name]
    blob = _read(f"{name}.blob")
    assert _sha(blob) == case["blob_sha256"] and len(blob) == case["blob_bytes"]
    if name in VALID:
        assert _sha(_read(f"{name}.npy")) == case["npy_sha256"]


@pytest.mark.parametrize("name", VALID)
def test_valid_blob_decodes_exactly(name):
    case = VALID[name]
    blob = np.frombuffer(_read(f"{name}.blob"), np.uint8)
    expected = np.load(DATA / f"{name}.npy", allow_pickle=False)
    assert list(expected.shape) == case["shape"] and expected.dtype.name == case["dtype"]
    assert _sha(_le_bytes(expected)) == case["data_sha256"]
    onnx_dtype = onnx.helper.np_dtype_to_tensor_dtype(expected.dtype)
    out = reference.decode_weight(blob, case["shape"], onnx_dtype, name=name)  # what DecodeWeight outputs
    assert _same(out, expected)
    enc = from_blob(blob, name)
    assert _same(decode_weight(enc), expected)
    assert enc.describe() == case["stack"] and enc.meta == case["meta"]
    assert [[k, len(v)] for k, v in enc.sections.items()] == case["sections"]
    version, flags = struct.unpack_from("<HH", blob, 4)
    assert (version, flags) == (case["version"], case["flags"])
    assert enc.scheme in STACKS


@pytest.mark.parametrize("name", [n for n, c in VALID.items() if c["reencode"]])
def test_reencoding_gives_the_same_bytes(name):
    case = VALID[name]
    array = np.load(DATA / f"{name}.npy", allow_pickle=False)
    enc = encode_weight(array, **case.get("encode_options", {}))
    assert enc.describe() == case["stack"] and enc.meta == case["meta"]
    assert to_blob(enc).tobytes() == _read(f"{name}.blob")


def _stage_and_message(blob: np.ndarray, name: str) -> tuple[str | None, str]:
    try:
        enc = from_blob(blob, name)
    except CodecError as e:
        return "parse", str(e)
    try:
        decode_weight(enc)
    except CodecError as e:
        return "decode", str(e)
    return None, ""


@pytest.mark.parametrize("name", INVALID)
def test_invalid_blob_raises_codec_error(name):
    case = INVALID[name]
    blob = np.frombuffer(_read(f"{name}.blob"), np.uint8)
    stage, message = _stage_and_message(blob, name)
    assert stage == case["stage"], message
    assert message.startswith(MANIFEST["error_prefix"].format(name=name)) and "\n" not in message
    assert case["error"] in message and message == case["message"]
    with pytest.raises(CodecError) as info:  # DecodeWeight's reference, the same way
        reference.decode_weight(blob, name=name)
    assert str(info.value) == message


def test_decode_weight_checks_the_node_attributes():
    case = VALID["codebook_int8_3bit"]
    blob = np.frombuffer(_read("codebook_int8_3bit.blob"), np.uint8)
    with pytest.raises(CodecError, match="node attribute shape"):
        reference.decode_weight(blob, [case["shape"][0] + 1, *case["shape"][1:]], onnx.TensorProto.INT8)
    with pytest.raises(CodecError, match="node attribute dtype"):
        reference.decode_weight(blob, case["shape"], onnx.TensorProto.UINT8)
    with pytest.raises(CodecError, match="DecodeWeight reads uint8"):
        reference.decode_weight(blob.astype(np.int8), case["shape"], onnx.TensorProto.INT8)


def test_generator_is_deterministic():
    """Building the set again gives the same bytes as the files (the generator itself, run in memory)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        _, files = module.build()
    finally:
        del sys.modules[spec.name]
    assert set(files) == {p.name for p in DATA.iterdir() if p.suffix in (".blob", ".npy", ".json")}
    stale = [name for name, data in files.items() if data != _read(name)]
    # A numpy whose random streams changed also lands here: the stored set stays valid, regenerate it.
    assert not stale, f"run python kernels/testdata/make_golden.py: {stale}"


def _example_bytes(section: str) -> bytes:
    """The bytes of a worked example of FORMAT.md: the leading hex pairs of every line of its first code block."""
    text = (ROOT / "kernels" / "FORMAT.md").read_text()
    block = text.split(f"### {section} ", 1)[1].split("```", 2)[1]
    out = []
    for line in block.splitlines():
        for token in line.split():
            if len(token) != 2 or any(c not in "0123456789abcdef" for c in token):
                break
            out.append(int(token, 16))
    return bytes(out)


def test_format_md_worked_examples_are_the_encoders_bytes():
    from onnxcomp.codecs import huffman

    book = to_blob(encode_weight(np.array([[0.5, 0, -1.0, 0.5], [0, 0, 0.5, -1.0]], np.float32))).tobytes()
    assert _example_bytes("11.1") == book
    codes = np.zeros(40, np.int8)
    codes[[1, 2, 3, 30, 38]] = [3, -1, 3, 3, -1]
    assert _example_bytes("11.2") == to_blob(encode_weight(codes)).tobytes()
    table, stream = huffman.encode(np.array([1, 1, 0, 1, 2, 1, 1, 3, 1, 0], np.uint8))
    assert _example_bytes("11.3") == table.tobytes() + stream.tobytes()
