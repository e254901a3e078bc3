"""Tests for the synthetic architecture builders in ``models/builders.py``."""
from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from models import builders

NAMES = list(builders.BUILDERS)
CLASSIFIERS = {"resnet18", "resnet50", "mobilenetv2", "vgg16", "shufflenetv2"}


@functools.cache
def small(name: str, batch: int | None = 1) -> onnx.ModelProto:
    return builders.BUILDERS[name](batch=batch, **builders.small_kwargs(name))


def run(model: onnx.ModelProto, batch: int = 1) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, builders.default_feed(model, batch=batch))
    return out


def expected_shape(name: str, batch: int) -> tuple[int, ...]:
    kw = builders.small_kwargs(name)
    if name in CLASSIFIERS:
        return (batch, kw["num_classes"])
    if name == "csp_block":
        return (batch, kw["channels"], kw["size"], kw["size"])
    if name == "densenet_block":
        c = kw["in_channels"] + kw["num_layers"] * kw["growth_rate"]
        return (batch, c // 2, kw["size"] // 2, kw["size"] // 2)
    if name == "yolo_csp":
        cells = sum((kw["size"] // s) ** 2 for s in (8, 16, 32))
        return (batch, 3 * cells, 5 + kw["num_classes"])
    if name == "transformer_block":
        return (batch, kw["seq"], kw["dim"])
    raise AssertionError(name)


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def attr(node: onnx.NodeProto, name: str):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_registry_complete() -> None:
    assert set(NAMES) == {"resnet18", "resnet50", "mobilenetv2", "vgg16", "csp_block", "yolo_csp",
                          "shufflenetv2", "densenet_block", "transformer_block"}
    for name in NAMES:
        assert isinstance(builders.small_kwargs(name), dict)


@pytest.mark.parametrize("name", NAMES)
def test_valid_runs_and_is_well_scaled(name: str) -> None:
    model = small(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits" if name in CLASSIFIERS else "output"]
    out = run(model)
    assert out.shape == expected_shape(name, 1)
    assert np.isfinite(out).all()
    assert 0.1 < float(out.std()) < 100.0


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name: str) -> None:
    a = small(name).SerializeToString()
    assert builders.BUILDERS[name](**builders.small_kwargs(name)).SerializeToString() == a


def test_seed_changes_weights() -> None:
    kw = builders.small_kwargs("csp_block")
    assert builders.csp_block(seed=1, **kw).SerializeToString() != small("csp_block").SerializeToString()


@pytest.mark.parametrize("name", ["resnet18", "shufflenetv2", "yolo_csp", "transformer_block"])
def test_symbolic_batch(name: str) -> None:
    model = small(name, None)
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    feed = builders.default_feed(model, batch=2)
    assert feed["input"].shape[0] == 2 and feed["input"].dtype == np.float32
    out = run(model, batch=2)
    assert out.shape == expected_shape(name, 2) and np.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2", "vgg16", "csp_block",
                                  "yolo_csp", "shufflenetv2"])
def test_conv_bn_act_pattern(name: str) -> None:
    """Every Conv feeds a real BatchNormalization (except detection-head convs)."""
    model = small(name)
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert bns
    prod, w = producers(model), inits(model)
    for bn in bns:
        assert prod[bn.input[0]].op_type == "Conv"
        assert (w[bn.input[4]] > 0).all()  # running_var
        assert abs(float(w[bn.input[1]].mean()) - 1.0) < 0.1  # gamma around 1
    consumed_by_bn = {bn.input[0] for bn in bns}
    head = [n for n in model.graph.node if n.op_type == "Conv" and n.output[0] not in consumed_by_bn]
    assert all("detect" in n.name for n in head)
    if name != "vgg16":  # torchvision vgg16_bn keeps the conv bias
        assert all(len(n.input) == 2 for n in model.graph.node if n.op_type == "Conv" and n not in head)


def test_classifier_head() -> None:
    for name in ["resnet18", "resnet50", "mobilenetv2"]:
        model = small(name)
        prod = producers(model)
        gemm = model.graph.node[-1]
        assert gemm.op_type == "Gemm" and gemm.output[0] == "logits"
        assert prod[gemm.input[0]].op_type == "Flatten"
        assert prod[prod[gemm.input[0]].input[0]].op_type == "GlobalAveragePool"


def test_resnet_topology() -> None:
    assert ops(small("resnet18"))["Conv"] == 20 and ops(small("resnet18"))["Add"] == 8
    assert ops(small("resnet50"))["Conv"] == 53 and ops(small("resnet50"))["Add"] == 16


def test_resnet50_parameter_count() -> None:
    # torchvision resnet50 has 25,557,032 parameters (+53k BN running stats in ONNX)
    model = builders.resnet50(size=32)
    n = builders.count_parameters(model)
    assert 25_500_000 < n < 25_700_000
    assert 95e6 < model.ByteSize() < 110e6


def test_mobilenetv2_depthwise_and_relu6() -> None:
    model = small("mobilenetv2")
    w, h = inits(model), ops(model)
    dw = [n for n in model.graph.node if n.op_type == "Conv" and attr(n, "group") > 1]
    assert len(dw) == 17
    for n in dw:
        cout, cin_per_group = w[n.input[1]].shape[:2]
        assert cin_per_group == 1 and attr(n, "group") == cout
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert clips and all(float(w[c.input[1]]) == 0.0 and float(w[c.input[2]]) == 6.0 for c in clips)
    assert h["Add"] == 10


def test_vgg16_topology() -> None:
    h = ops(small("vgg16"))
    assert h["Conv"] == 13 and h["Gemm"] == 3 and h["MaxPool"] == 5 and h["Relu"] == 15


def _assert_silu(model: onnx.ModelProto) -> None:
    prod = producers(model)
    muls = [n for n in model.graph.node if n.op_type == "Mul" and n.input[1] in prod
            and prod[n.input[1]].op_type == "Sigmoid"]
    assert muls and all(prod[m.input[1]].input[0] == m.input[0] for m in muls)
    assert len(muls) == ops(model)["Sigmoid"]


def test_csp_block_and_yolo() -> None:
    for name in ["csp_block", "yolo_csp"]:
        model = small(name)
        h = ops(model)
        assert h["Split"] >= 1 and h["Concat"] >= 1 and h["Add"] >= 1
        _assert_silu(model)
        for n in model.graph.node:
            if n.op_type == "Split":
                sizes = inits(model)[n.input[1]]
                assert attr(n, "axis") == 1 and len(sizes) == 2 and sizes[0] == sizes[1]
    model = small("yolo_csp")
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 2
    w = inits(model)
    for r in resizes:
        assert attr(r, "mode") == b"nearest" and list(w[r.input[2]]) == [1, 1, 2, 2]
    consumers = [n for n in model.graph.node if any(i in n.input for r in resizes for i in r.output)]
    assert all(c.op_type == "Concat" for c in consumers)
    assert ops(model)["MaxPool"] == 3  # SPPF


def test_shufflenetv2_channel_shuffle() -> None:
    model = small("shufflenetv2")
    prod, w = producers(model), inits(model)
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 16
    for t in transposes:
        assert list(attr(t, "perm")) == [0, 2, 1, 3, 4]
        reshape = prod[t.input[0]]
        assert reshape.op_type == "Reshape" and w[reshape.input[1]][1] == 2
        assert prod[reshape.input[0]].op_type == "Concat"
    assert ops(model)["Split"] == 13  # stride-1 units
    assert any(n.op_type == "Conv" and attr(n, "group") > 1 for n in model.graph.node)


def test_densenet_block() -> None:
    model = small("densenet_block")
    kw, prod = builders.small_kwargs("densenet_block"), producers(model)
    h = ops(model)
    assert h["Concat"] == kw["num_layers"] and h["AveragePool"] == 1
    assert h["BatchNormalization"] == h["Relu"] == h["Conv"] == 2 * kw["num_layers"] + 1
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        relu = prod[conv.input[0]]
        assert relu.op_type == "Relu" and prod[relu.input[0]].op_type == "BatchNormalization"
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    assert [len(c.input) for c in concats] == list(range(2, kw["num_layers"] + 2))


def test_transformer_block() -> None:
    model = small("transformer_block")
    layers = builders.small_kwargs("transformer_block")["layers"]
    h = ops(model)
    assert h["LayerNormalization"] == 2 * layers and h["Softmax"] == layers
    assert h["MatMul"] == 8 * layers and h["Erf"] == layers
    assert h["Transpose"] == 4 * layers and h["Reshape"] == 4 * layers
    assert {"Div", "Mul", "Add"} <= set(h)
