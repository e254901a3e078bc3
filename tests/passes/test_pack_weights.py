"""pack_weights on the trained LeNet-300-100 and on tiny graphs: exact outputs, real sizes, unpack, the CLI.

The LeNet weights are pruned and shared here with plain numpy (the 90% smallest magnitudes of each kernel set to
0, the rest snapped to 16 levels), so every check compares against a float model holding the very same values:
the lowered models must give identical outputs (max abs diff 0), not merely close ones.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp import runtime
from onnxcomp.cli import main
from onnxcomp.codecs import encode_weight, to_blob
from onnxcomp.errors import CodecError, RecipeError
from onnxcomp.ir.model import Model, save_proto
from onnxcomp.ir.weights import weight_table
from onnxcomp.kernels import reference, schema
from onnxcomp.measure.summary import size_by_section
from onnxcomp.passes import PackWeights, QuantizeWeights
from onnxcomp.passes.base import PassContext
from onnxcomp.passes.pack_weights import PackConfig
from onnxcomp.recipe import load_recipe
from tests.conftest import ROOT
from tests.helpers import pruned_and_shared

LENET = ROOT / "models" / "mnist_lenet300.onnx"
MNIST_TEST = ROOT / "models" / "data" / "mnist_test.npz"


@pytest.fixture(scope="module")
def lenet() -> onnx.ModelProto:
    """LeNet-300-100 with pruned, shared kernels, as a float model."""
    model = Model.load(LENET)
    for w in weight_table(model):
        if w.role == "weight":
            w.set(pruned_and_shared(w.array))
    return model.to_proto()


@pytest.fixture(scope="module")
def feed() -> dict[str, np.ndarray]:
    return {"input": np.load(MNIST_TEST)["input"][:200].astype(np.float32)}


def _pack(proto: onnx.ModelProto, **options):
    model = Model.load(proto)
    result = PackWeights(PackConfig(**options)).run(model, PassContext())
    return model.to_proto(), result


def _float_run(proto: onnx.ModelProto, feed) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in proto.graph.node]


def test_standard_runs_on_stock_onnxruntime_identically(lenet, feed):
    packed, result = _pack(lenet, format="standard")
    assert [r["weight"] for r in result.records] == ["fc1.weight", "fc2.weight"]
    assert result.skipped == [("fc3.weight", "1000 elements, below min_elements 1024")]
    assert all(r["format"] == "standard" and r["bytes_after"] * 3 < r["bytes_before"] for r in result.records)
    assert "ai.onnxcomp" not in {o.domain for o in packed.opset_import}
    assert _ops(packed).count("Gather") == 2
    onnx.checker.check_model(packed, full_check=True)
    inits = {t.name: t for t in packed.graph.initializer}
    assert inits["fc1.weight_indices"].data_type == TensorProto.UINT8  # opset 17: no uint4
    assert np.abs(_float_run(packed, feed) - _float_run(lenet, feed)).max() == 0


def test_packed_runs_through_onnxcomp_runtime_identically(lenet, feed):
    packed, result = _pack(lenet, format="packed")
    assert _ops(packed).count("ai.onnxcomp.DecodeWeight") == 2
    record = result.records[0]
    assert record["layer"] == "/fc1/Gemm" and record["format"] == "packed"
    assert record["encoding"].startswith("sparse(")
    assert sum(record["sections"].values()) == record["bytes_after"] < record["bytes_before"] / 30
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail):  # stock onnxruntime does not know the op
        ort.InferenceSession(packed.SerializeToString(), providers=["CPUExecutionProvider"])
    sess = runtime.InferenceSession(packed)
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    assert np.abs(sess.run(None, feed)[0] - _float_run(lenet, feed)).max() == 0
    assert sess.unpack_seconds > 0 and sess.load_seconds >= sess.unpack_seconds
    # session() (used by fidelity, bench, capture) expands packed models too, from a Model or a ModelProto
    assert np.abs(runtime.session(Model.load(packed)).run(None, feed)[0] - _float_run(lenet, feed)).max() == 0


def test_file_sizes_packed_far_below_standard_far_below_float(lenet, tmp_path):
    sizes = {}
    for fmt in ("standard", "packed"):
        sizes[fmt] = save_proto(_pack(lenet, format=fmt)[0], tmp_path / f"{fmt}.onnx").stat().st_size
    sizes["float"] = save_proto(lenet, tmp_path / "float.onnx").stat().st_size
    assert sizes["packed"] * 5 < sizes["standard"] and sizes["standard"] * 3 < sizes["float"], sizes
    packed = onnx.load(str(tmp_path / "packed.onnx"))
    standard = onnx.load(str(tmp_path / "standard.onnx"))
    assert size_by_section(packed)["packed weights"] > 0.5 * sizes["packed"]
    assert size_by_section(standard)["codebook indices"] > 0.5 * sizes["standard"]


def test_unpack_gives_the_plain_equivalent(lenet, feed, tmp_path):
    packed, _ = _pack(lenet, format="packed")
    plain = runtime.unpack(packed)
    onnx.checker.check_model(plain, full_check=True)
    assert "ai.onnxcomp" not in {o.domain for o in plain.opset_import}
    assert _ops(plain) == _ops(lenet)
    want = {t.name: numpy_helper.to_array(t) for t in lenet.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer}
    assert set(got) == set(want)
    for name, value in want.items():
        assert np.array_equal(got[name].view(np.uint32), value.view(np.uint32)), name
    assert np.abs(_float_run(plain, feed) - _float_run(lenet, feed)).max() == 0
    assert _ops(packed).count("ai.onnxcomp.DecodeWeight") == 2  # the caller's proto is unchanged


def test_must_not_fire_many_distinct_values(feed):
    rng = np.random.default_rng(0)
    w = rng.permutation(np.repeat(np.linspace(0.5, 1.5, 1000, dtype=np.float32), 2)).reshape(50, 40)
    proto = _tiny_matmul(w)
    out, result = _pack(proto, format="standard")
    assert not result.modified and not result.records
    [(name, why)] = result.skipped
    assert name == "W" and "256 distinct values" in why and "float" in why
    assert [t.name for t in out.graph.initializer] == ["W"] and _ops(out) == ["MatMul"]
    out, result = _pack(proto, format="packed")  # no zeros, 1000 levels: plain floats, so no blob either
    assert not result.modified and "not smaller" in result.skipped[0][1]


def test_standard_uses_uint4_from_opset_21():
    w = pruned_and_shared(np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32), 0.5, 8)
    proto = _tiny_matmul(w, opset=21)
    out, result = _pack(proto, format="standard")
    inits = {t.name: t for t in out.graph.initializer}
    assert inits["W_indices"].data_type == TensorProto.UINT4 and len(inits["W_indices"].raw_data) == w.size // 2
    assert result.records[0]["sections"]["indices"] == w.size // 2
    x = {"x": np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)}
    assert np.abs(_float_run(out, x) - _float_run(proto, x)).max() == 0


def test_constant_node_and_shared_weights():
    w = pruned_and_shared(np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32))
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W")),
             helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "W"], ["y"])]
    proto = _model(nodes, [], opset=17)
    x = {"x": np.random.default_rng(4).standard_normal((5, 64)).astype(np.float32)}
    for fmt in ("standard", "packed"):
        out, result = _pack(proto, format=fmt)
        assert len(result.records) == 1 and "Constant" not in _ops(out)
        assert np.abs(runtime.InferenceSession(out).run(None, x)[0] - _float_run(proto, x)).max() == 0


def test_weights_read_by_custom_ops_are_left_alone():
    w = pruned_and_shared(np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]),
             helper.make_node("Foo", ["W"], ["z"], domain="com.example")]
    proto = _model(nodes, [numpy_helper.from_array(w, "W")], outputs=("y", "z"))
    _, result = _pack(proto, format="packed")
    assert not result.modified and "com.example.Foo" in result.skipped[0][1]


def test_recipe_options_are_typed():
    step = load_recipe({"passes": [{"pack_weights": {"format": "standard", "min_elements": 10}}]}).steps[0]
    assert step.config == PackConfig(format="standard", min_elements=10)
    with pytest.raises(RecipeError, match="format"):
        load_recipe({"passes": [{"pack_weights": {"format": "zip"}}]})


def test_cli_unpack(lenet, feed, tmp_path, capsys):
    packed_path = save_proto(_pack(lenet, format="packed")[0], tmp_path / "packed.onnx")
    out = tmp_path / "plain.onnx"
    code, _, err = _cli(capsys, "unpack", packed_path, "-o", out)
    assert code == 0 and err == ""
    assert np.abs(_float_run(onnx.load(str(out)), feed) - _float_run(lenet, feed)).max() == 0

    # flip one byte inside fc1's blob: protobuf still parses, the blob's CRC does not match
    data = bytearray(packed_path.read_bytes())
    blob = next(t for t in onnx.load(str(packed_path)).graph.initializer if t.name.startswith("fc1.weight"))
    at = bytes(data).find(blob.raw_data[100:164]) + 20
    assert at > 20
    data[at] ^= 0xFF
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(bytes(data))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = _cli(capsys, "unpack", broken, "-o", tmp_path / "never.onnx")
    assert code == 2 and stdout == ""
    lines = err.splitlines()
    assert len(lines) == 1 and "malformed packed weight 'fc1.weight'" in lines[0] and "CRC" in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    with pytest.raises(CodecError, match="CRC"):
        runtime.InferenceSession(broken)
    code, _, err = _cli(capsys, "unpack", packed_path, "-o", packed_path)  # never onto the input
    assert code == 2 and "input model" in err


# -- helpers ----------------------------------------------------------------------------------------------
def _cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, err


def _model(nodes, inits, opset: int = 17, outputs=("y",)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    return model


def _tiny_matmul(w: np.ndarray, opset: int = 17) -> onnx.ModelProto:
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [numpy_helper.from_array(w, "W")], opset)


# -- integer codes of quantized weights (quantize_weights -> DequantizeLinear) ------------------------------------
@pytest.fixture(scope="module")
def lenet_w3() -> onnx.ModelProto:
    """LeNet-300-100 with 3-bit symmetric per-channel weights: int8 codes in -3..3 + DequantizeLinear."""
    model = Model.load(LENET)
    QuantizeWeights(QuantizeWeights.Config(bits=3)).run(model, PassContext())
    return model.to_proto()


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_integer_codes_roundtrip_through_the_codec_stack(dtype):
    codes = (np.random.default_rng(7).integers(0, 5, (40, 30)) - (2 if dtype == np.int8 else 0)).astype(dtype)
    enc = encode_weight(codes, name="W")
    assert enc.dtype == np.dtype(dtype).name and enc.describe().startswith("codebook(k=5")
    assert enc.nbytes < codes.nbytes * 3 / 8 + 200  # 3-bit indices (or Huffman) + header
    back = reference.decode_weight(to_blob(enc), [40, 30], helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    assert back.dtype == dtype and np.array_equal(back, codes)
    with pytest.raises(CodecError, match="dtype"):  # the node attribute must agree with the blob
        reference.decode_weight(to_blob(enc), [40, 30], TensorProto.FLOAT)


def test_packed_3bit_codes_roundtrip_bit_exactly(lenet_w3, feed):
    packed, result = _pack(lenet_w3, format="packed", min_elements=100)
    assert [r["weight"] for r in result.records] == [f"fc{i}.weight_quantized" for i in (3, 2, 1)]
    assert result.skipped == []
    for record in result.records:
        assert record["layer"] == record["weight"].replace(".weight_quantized", "").replace("fc", "/fc") + "/Gemm"
        assert record["encoding"].startswith("codebook(k=7")
        assert record["bytes_after"] < record["bytes_before"] * 3 / 8 + 1000
    decode = [n for n in packed.graph.node if n.op_type == schema.DECODE_OP]
    assert len(decode) == 3 and _ops(packed).count("DequantizeLinear") == 3
    assert {a.i for n in decode for a in n.attribute if a.name == "dtype"} == {TensorProto.INT8}
    # onnxcomp's session decodes the codes and runs stock onnxruntime: the very outputs of the int8 model
    assert np.abs(runtime.InferenceSession(packed).run(None, feed)[0] - _float_run(lenet_w3, feed)).max() == 0
    plain = runtime.unpack(packed)
    assert _ops(plain) == _ops(lenet_w3) and "ai.onnxcomp" not in {o.domain for o in plain.opset_import}
    want = {t.name: numpy_helper.to_array(t) for t in lenet_w3.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer}
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name


def test_standard_keeps_integer_codes_and_packed_needs_a_gain(lenet_w3):
    out, result = _pack(lenet_w3, format="standard", min_elements=100)
    assert not result.modified and out.SerializeToString() == Model.load(lenet_w3).to_proto().SerializeToString()
    # Uniform weights give 8-bit codes spread evenly over 255 values: no blob is smaller than the int8 tensor.
    w = np.random.default_rng(9).uniform(-1, 1, (64, 32)).astype(np.float32)
    model = Model.load(_tiny_matmul(w))
    QuantizeWeights(QuantizeWeights.Config(bits=8, clip="none")).run(model, PassContext())
    _, result = _pack(model.to_proto(), format="packed", min_elements=100)
    [(name, why)] = result.skipped
    assert name == "W_quantized" and "not smaller than the int8 tensor" in why


def test_int4_codes_narrower_than_4_bits_are_packed():
    """3-bit codes held in INT4 storage (opset 21) are packed as int8 codes (DequantizeLinear reads them the same)
    when the blob beats 4 bits a code; full 4-bit uniform codes stay INT4."""
    w = np.random.default_rng(8).standard_normal((64, 32)).astype(np.float32)
    model = Model.load(_tiny_matmul(w, opset=21))
    QuantizeWeights(QuantizeWeights.Config(bits=3)).run(model, PassContext())
    quantized = model.to_proto()
    assert {t.name: t.data_type for t in quantized.graph.initializer}["W_quantized"] == TensorProto.INT4
    out, result = _pack(quantized, format="packed", min_elements=100)
    [record] = result.records
    assert record["bytes_before"] == 64 * 32 // 2 and record["bytes_after"] < record["bytes_before"]
    feed = {"x": np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)}
    # Unoptimized: onnxruntime rewrites DequantizeLinear -> MatMul into MatMulNBits, whose int8 activations differ
    np.testing.assert_array_equal(runtime.InferenceSession(out, optimize=False).run(None, feed)[0],
                                  runtime.session(quantized, optimize=False).run(None, feed)[0])

    uniform = np.random.default_rng(9).uniform(-1, 1, (64, 32)).astype(np.float32)
    model = Model.load(_tiny_matmul(uniform, opset=21))
    QuantizeWeights(QuantizeWeights.Config(bits=4, clip="none")).run(model, PassContext())
    out, result = _pack(model.to_proto(), format="packed", min_elements=100)
    assert not result.modified and "not smaller than the int4 tensor" in dict(result.skipped)["W_quantized"]
    assert {t.name: t.data_type for t in out.graph.initializer}["W_quantized"] == TensorProto.INT4


def test_malformed_integer_blob_is_a_codec_error(lenet_w3):
    packed, _ = _pack(lenet_w3, format="packed", min_elements=100)
    blob = next(t for t in packed.graph.initializer if t.name.startswith("fc2.weight_quantized"))
    data = bytearray(blob.raw_data)
    data[len(data) // 2] ^= 0x5A
    blob.raw_data = bytes(data)
    with pytest.raises(CodecError, match="malformed packed weight 'fc2.weight_quantized'.*CRC"):
        runtime.InferenceSession(packed)
    with pytest.raises(CodecError, match="CRC"):
        runtime.unpack(packed)


def test_float16_exact_parameters_are_stored_half(lenet, feed):
    """Rule 6: fires on float parameters whose values are all float16s (not on others, not with half: false), and
    the model computes the same in stock onnxruntime."""
    _, plain = _pack(lenet, format="standard")
    assert not [r for r in plain.records if r["format"] == "float16"]  # trained biases are not float16s
    model = Model.load(lenet)
    for w in weight_table(model):
        if w.role == "bias":
            w.set(w.array.astype(np.float16).astype(np.float32))
    rounded = model.to_proto()
    packed, result = _pack(rounded, format="packed")
    half = [r for r in result.records if r["format"] == "float16"]
    assert [r["weight"] for r in half] == ["fc1.bias", "fc2.bias"]  # fc3.bias: 10 values, not worth a Cast
    assert half[0]["bytes_before"] == 1200 and half[0]["bytes_after"] == 600
    inits = {t.name: t for t in packed.graph.initializer}
    assert inits["fc1.bias_f16"].data_type == TensorProto.FLOAT16 and "fc1.bias" not in inits
    assert _ops(packed).count("Cast") == 2
    sess = runtime.InferenceSession(packed)
    np.testing.assert_array_equal(sess.run(None, feed)[0], _float_run(rounded, feed))
    _, off = _pack(rounded, format="packed", half=False)
    assert not [r for r in off.records if r["format"] == "float16"]


def test_float16_exact_matmul_bias_is_stored_half():
    """Rule 6 takes the bias of a MatMul layer (the vector the Add after it adds: role "bias" in the weight table;
    share_weights rounds it to float16 like a Conv's), and not another float16-exact constant of an Add that is no
    layer's bias."""
    rng = np.random.default_rng(0)
    half = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731
    w = rng.normal(size=(64, 300)).astype(np.float32)
    bias, offset = half(rng.normal(size=300)), half(rng.normal(size=300))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "bias"], ["z"]),
         helper.make_node("Add", ["z", "offset"], ["out"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 300])],
        [numpy_helper.from_array(a, n) for a, n in [(w, "w"), (bias, "bias"), (offset, "offset")]])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    roles = {w.name: w.role for w in weight_table(Model.load(proto))}
    assert roles == {"w": "weight", "bias": "bias", "offset": "other"}
    packed, result = _pack(proto, format="packed", min_elements=1 << 30)  # no kernel lowered
    assert [r["weight"] for r in result.records if r["format"] == "float16"] == ["bias"]
    inits = {t.name: t for t in packed.graph.initializer}
    assert inits["bias_f16"].data_type == TensorProto.FLOAT16 and inits["offset"].data_type == TensorProto.FLOAT
    feed = {"x": rng.normal(size=(2, 64)).astype(np.float32)}
    np.testing.assert_array_equal(_float_run(packed, feed), _float_run(proto, feed))
