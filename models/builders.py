"""Architecture-faithful synthetic ONNX models with random, seeded weights.

Each builder returns an ``onnx.ModelProto`` (opset 17, IR version 8) whose graph
has the node topology that PyTorch exporters produce for the real network
(Conv -> BatchNormalization -> activation, residual ``Add``, ``Split``/``Concat``,
channel shuffle, ``GlobalAveragePool -> Flatten -> Gemm`` heads, ...), so the
models can be used for structure tests, filter-pruning tests and latency
benchmarks without downloading weights.

Weights are He-normal (``std = sqrt(2 / fan_in)``).  BatchNorm running statistics
are not arbitrary: while a CNN is built, a numpy forward pass runs on a fixed
standard-normal calibration batch, and each BN gets the per-channel mean/variance of
its actual input (slightly perturbed) as running stats, with gamma ~ 1 and small
beta.  Activations therefore stay O(1) through the whole network for a
standard-normal input, as in a trained network (LayerNorm does this for the
transformer).

The graph input is ``input`` (float32; NCHW for CNNs, ``[batch, seq, dim]`` for the
transformer); the output is ``logits`` for classifiers and ``output`` otherwise.
``batch=None`` gives a symbolic ``'batch'`` dimension.  The same seed always gives
byte-identical ``SerializeToString()``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
BN_EPS = 1e-5


def _conv_np(x: np.ndarray, w: np.ndarray, s: int, p: int, groups: int) -> np.ndarray:
    """Reference NCHW convolution (no bias) for the calibration forward pass.

    Calibration runs in float64 so that BLAS threading/kernel choices cannot change the
    float32 BN statistics, keeping the output bytes deterministic across machines."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ho, wo = (xp.shape[2] - k) // s + 1, (xp.shape[3] - k) // s + 1
    if groups == x.shape[1] == w.shape[0]:  # depthwise: k*k shifted multiply-adds
        out = np.zeros((x.shape[0], x.shape[1], ho, wo))
        for i in range(k):
            for j in range(k):
                out += xp[:, :, i:i + s * ho:s, j:j + s * wo:s] * w[None, :, 0, i, j, None, None]
        return out
    xc = np.ascontiguousarray(xp.transpose(1, 0, 2, 3))  # C, N, H, W: k*k shifted matmuls
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    out = np.zeros((w.shape[0], x.shape[0] * ho * wo))
    for gi in range(groups):
        xg, wg = xc[gi * cg:(gi + 1) * cg], w[gi * og:(gi + 1) * og]
        for i in range(k):
            for j in range(k):
                patch = xg[:, :, i:i + s * ho:s, j:j + s * wo:s].reshape(cg, -1)
                out[gi * og:(gi + 1) * og] += wg[:, :, i, j] @ patch
    return np.ascontiguousarray(out.reshape(w.shape[0], x.shape[0], ho, wo).transpose(1, 0, 2, 3))


class _GraphBuilder:
    """Accumulates nodes and initialisers.

    The CNN layer methods also run a small numpy forward pass on a fixed calibration
    input (``self.t`` maps tensor name -> activation of shape [n, C, ...]) so that
    BatchNorm running statistics match the statistics of the data they will see.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.t: dict[str, np.ndarray] = {}
        self._seed = seed
        self._count: dict[str, int] = {}
        self._scope: list[str] = []
        self._consts: dict[tuple, str] = {}

    # -- naming / raw graph pieces ---------------------------------------------------
    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def uid(self, kind: str) -> str:
        n = self._count.get(kind, 0)
        self._count[kind] = n + 1
        return ".".join(self._scope + [f"{kind}{n}"])

    def input(self, shape: Sequence[int], batch: int | None, name: str = "input", stride: int = 32) -> str:
        """Declare the graph input; image inputs also get a standard-normal calibration batch,
        large enough that the deepest (``stride``-downsampled) map has >= 48 values per channel."""
        self.inputs.append(helper.make_tensor_value_info(
            name, TensorProto.FLOAT, [batch if batch is not None else "batch", *shape]))
        if len(shape) == 3:
            deep = max(1, shape[1] // stride) * max(1, shape[2] // stride)
            n = min(32, math.ceil(48 / deep))
            self.t[name] = np.random.default_rng([self._seed, 1]).standard_normal((n, *shape))
        return name

    def param(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    def const(self, values: Sequence[float] | float, dtype: type = np.int64) -> str:
        """A (shared) constant initializer, e.g. a Reshape shape or Clip bound."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = f"const{len(self._consts)}"
            self.inits.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> list[str]:
        name = self.uid(op.lower())
        outs = [name] if n_out == 1 else [f"{name}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs

    def op(self, op: str, inputs: Sequence[str], **attrs) -> str:
        return self.node(op, inputs, **attrs)[0]

    def he(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))

    def small(self, n: int, scale: float) -> np.ndarray:
        return (self.rng.standard_normal(n) * scale).astype(np.float32)

    def shape(self, x: str) -> tuple[int, ...]:
        return self.t[x].shape[1:]

    # -- CNN layers (each also computes its calibration activation) ---------------------
    def conv(self, x: str, cout: int, k: int, s: int = 1, groups: int = 1,
             bias: bool = False, pad: int | None = None) -> str:
        cin, p, name = self.shape(x)[0], (k // 2 if pad is None else pad), self.uid("conv")
        wt = self.he((cout, cin // groups, k, k), cin // groups * k * k)
        ins = [x, self.param(f"{name}.weight", wt)]
        y = _conv_np(self.t[x], wt.astype(np.float64), s, p, groups)
        if bias:
            b = self.small(cout, 0.01)
            ins.append(self.param(f"{name}.bias", b))
            y += b[:, None, None]
        self.nodes.append(helper.make_node(
            "Conv", ins, [name], name=name, dilations=[1, 1], group=groups,
            kernel_shape=[k, k], pads=[p, p, p, p], strides=[s, s]))
        self.t[name] = y
        return name

    def bn(self, x: str) -> str:
        """BatchNormalization whose running stats are the (slightly perturbed) input stats."""
        v, rng, name = self.t[x], self.rng, self.uid("bn")
        c = v.shape[1]
        mean = v.mean(axis=(0, 2, 3), dtype=np.float64)
        var = v.var(axis=(0, 2, 3), dtype=np.float64)
        var = np.maximum(var, 0.05 * np.median(var) + 1e-6)
        gamma = 1.0 + 0.1 * rng.standard_normal(c)
        beta = 0.05 * rng.standard_normal(c)
        r_mean = mean + 0.05 * np.sqrt(var) * rng.standard_normal(c)
        r_var = var * np.exp(0.1 * rng.standard_normal(c))
        ins = [x] + [self.param(f"{name}.{n}", a) for n, a in
                     (("weight", gamma), ("bias", beta), ("running_mean", r_mean), ("running_var", r_var))]
        self.nodes.append(helper.make_node("BatchNormalization", ins, [name], name=name,
                                           epsilon=BN_EPS, momentum=0.9))
        scale = gamma / np.sqrt(r_var + BN_EPS)
        shift = beta - r_mean * scale
        self.t[name] = v * scale[:, None, None] + shift[:, None, None]
        return name

    def act(self, x: str, kind: str | None) -> str:
        if kind is None:
            return x
        v = self.t[x]
        if kind == "relu":
            y, val = self.op("Relu", [x]), np.maximum(v, 0)
        elif kind == "relu6":
            y = self.op("Clip", [x, self.const(0.0, np.float32), self.const(6.0, np.float32)])
            val = np.clip(v, 0, 6)
        elif kind == "silu":
            y, val = self.op("Mul", [x, self.op("Sigmoid", [x])]), v / (1 + np.exp(-np.clip(v, -30, 30)))
        else:
            raise ValueError(f"unknown activation {kind!r}")
        self.t[y] = val
        return y

    def conv_bn_act(self, x: str, cout: int, k: int = 1, s: int = 1, groups: int = 1,
                    act: str | None = "relu") -> str:
        return self.act(self.bn(self.conv(x, cout, k, s, groups)), act)

    def add(self, a: str, b: str) -> str:
        y = self.op("Add", [a, b])
        self.t[y] = self.t[a] + self.t[b]
        return y

    def concat(self, xs: Sequence[str]) -> str:
        y = self.op("Concat", xs, axis=1)
        self.t[y] = np.concatenate([self.t[x] for x in xs], axis=1)
        return y

    def split(self, x: str, sizes: Sequence[int]) -> list[str]:
        outs = self.node("Split", [x, self.const(list(sizes))], n_out=len(sizes), axis=1)
        for o, v in zip(outs, np.split(self.t[x], np.cumsum(sizes)[:-1], axis=1)):
            self.t[o] = v
        return outs

    def _pool(self, op: str, x: str, k: int, s: int, p: int) -> str:
        y = self.op(op, [x], kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
        fill = -np.inf if op == "MaxPool" else 0.0
        xp = np.pad(self.t[x], ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
        self.t[y] = win.max(axis=(4, 5)) if op == "MaxPool" else win.mean(axis=(4, 5))
        return y

    def maxpool(self, x: str, k: int, s: int, p: int = 0) -> str:
        return self._pool("MaxPool", x, k, s, p)

    def avgpool(self, x: str, k: int, s: int, p: int = 0) -> str:
        assert p == 0  # ONNX default count_include_pad=0 is only trivially matched without padding
        return self._pool("AveragePool", x, k, s, p)

    def resize2x(self, x: str) -> str:
        y = self.op("Resize", [x, "", self.const([1.0, 1.0, 2.0, 2.0], np.float32)],
                    coordinate_transformation_mode="asymmetric", mode="nearest", nearest_mode="floor")
        self.t[y] = self.t[x].repeat(2, axis=2).repeat(2, axis=3)
        return y

    def channel_shuffle(self, x: str, groups: int = 2) -> str:
        """view(N, g, C/g, H, W) -> transpose(1, 2) -> view(N, C, H, W), as torch exports it."""
        v = self.t[x]
        n, c, h, w = v.shape
        r = self.op("Reshape", [x, self.const([-1, groups, c // groups, h, w])])
        tr = self.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
        y = self.op("Reshape", [tr, self.const([-1, c, h, w])])
        self.t[y] = v.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
        return y

    def flatten(self, x: str) -> str:
        y = self.op("Flatten", [x], axis=1)
        self.t[y] = self.t[x].reshape(self.t[x].shape[0], -1)
        return y

    def global_pool(self, x: str, kind: str = "gap") -> str:
        """``gap``: GlobalAveragePool + Flatten; ``mean``: ReduceMean(axes=[2, 3])."""
        if kind == "gap":
            g = self.op("GlobalAveragePool", [x])
            self.t[g] = self.t[x].mean(axis=(2, 3), keepdims=True)
            return self.flatten(g)
        y = self.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
        self.t[y] = self.t[x].mean(axis=(2, 3))
        return y

    def gemm(self, x: str, nout: int, act: str | None = None) -> str:
        nin, name = self.shape(x)[0], self.uid("gemm")
        wt, b = self.he((nout, nin), nin), self.small(nout, 0.01)
        ins = [x, self.param(f"{name}.weight", wt), self.param(f"{name}.bias", b)]
        self.nodes.append(helper.make_node("Gemm", ins, [name], name=name, alpha=1.0, beta=1.0, transB=1))
        self.t[name] = self.t[x] @ wt.T.astype(np.float64) + b
        return self.act(name, act)

    # -- transformer pieces (no statistics needed: LayerNorm keeps things O(1)) -------
    def linear(self, x: str, nin: int, nout: int) -> str:
        name = self.uid("linear")
        mm = self.op("MatMul", [x, self.param(f"{name}.weight", self.he((nin, nout), nin))])
        return self.op("Add", [mm, self.param(f"{name}.bias", self.small(nout, 0.01))])

    def layer_norm(self, x: str, dim: int) -> str:
        name = self.uid("ln")
        g = self.param(f"{name}.weight", 1.0 + self.small(dim, 0.1))
        b = self.param(f"{name}.bias", self.small(dim, 0.05))
        self.nodes.append(helper.make_node("LayerNormalization", [x, g, b], [name], name=name,
                                           axis=-1, epsilon=1e-5))
        return name

    # -- assembly ----------------------------------------------------------------------
    def build(self, out: str, out_name: str, batch: int | None, graph_name: str,
              shape: Sequence[int] | None = None) -> onnx.ModelProto:
        for n in self.nodes:  # rename the final tensor to the public output name
            for io in (n.input, n.output):
                for i, v in enumerate(io):
                    if v == out:
                        io[i] = out_name
        dims = [batch if batch is not None else "batch", *(shape or self.shape(out))]
        graph = helper.make_graph(self.nodes, graph_name, self.inputs,
                                  [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, dims)],
                                  initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="onnxcomp.models.builders")
        model.ir_version = IR_VERSION
        return model


# ======================================================================================
# Builders
# ======================================================================================
def _resnet(name: str, block: str, layers: Sequence[int], batch: int | None, size: int,
            num_classes: int, seed: int, width: int) -> onnx.ModelProto:
    g = _GraphBuilder(seed)
    x = g.input((3, size, size), batch)
    with g.scope("stem"):
        x = g.maxpool(g.conv_bn_act(x, width, 7, 2), 3, 2, 1)
    cin, exp = width, (4 if block == "bottleneck" else 1)
    for li, n in enumerate(layers):
        planes = width * 2 ** li
        for bi in range(n):
            s = 2 if (bi == 0 and li > 0) else 1
            with g.scope(f"layer{li + 1}.{bi}"):
                if block == "bottleneck":  # torchvision v1.5: stride on the 3x3
                    y = g.conv_bn_act(x, planes, 1)
                    y = g.conv_bn_act(y, planes, 3, s)
                    y = g.conv_bn_act(y, planes * exp, 1, act=None)
                else:
                    y = g.conv_bn_act(x, planes, 3, s)
                    y = g.conv_bn_act(y, planes, 3, act=None)
                sc = g.conv_bn_act(x, planes * exp, 1, s, act=None) if (s != 1 or cin != planes * exp) else x
                x = g.act(g.add(y, sc), "relu")
            cin = planes * exp
    return g.build(g.gemm(g.global_pool(x), num_classes), "logits", batch, name)


def resnet18(batch: int | None = 1, size: int = 224, num_classes: int = 1000, seed: int = 0,
             width: int = 64) -> onnx.ModelProto:
    """torchvision ResNet-18 (BasicBlock [2, 2, 2, 2]); ~11.7M parameters at width 64."""
    return _resnet("resnet18", "basic", [2, 2, 2, 2], batch, size, num_classes, seed, width)


def resnet50(batch: int | None = 1, size: int = 224, num_classes: int = 1000, seed: int = 0,
             width: int = 64) -> onnx.ModelProto:
    """torchvision ResNet-50 v1.5 (Bottleneck [3, 4, 6, 3]); ~25.6M parameters, ~100 MB."""
    return _resnet("resnet50", "bottleneck", [3, 4, 6, 3], batch, size, num_classes, seed, width)


def mobilenetv2(batch: int | None = 1, size: int = 224, num_classes: int = 1000,
                seed: int = 0) -> onnx.ModelProto:
    """torchvision MobileNetV2 (width 1.0): inverted residuals, depthwise convs, ReLU6 as Clip."""
    g = _GraphBuilder(seed)
    x = g.conv_bn_act(g.input((3, size, size), batch), 32, 3, 2, act="relu6")
    cin = 32
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    for si, (t, c, n, s0) in enumerate(settings):
        for i in range(n):
            s = s0 if i == 0 else 1
            with g.scope(f"features.{si}.{i}"):
                hidden = cin * t
                y = g.conv_bn_act(x, hidden, 1, act="relu6") if t != 1 else x
                y = g.conv_bn_act(y, hidden, 3, s, groups=hidden, act="relu6")
                y = g.conv_bn_act(y, c, 1, act=None)
                x = g.add(x, y) if (s == 1 and cin == c) else y
            cin = c
    x = g.conv_bn_act(x, 1280, 1, act="relu6")
    return g.build(g.gemm(g.global_pool(x), num_classes), "logits", batch, "mobilenetv2")


def vgg16(batch: int | None = 1, size: int = 224, num_classes: int = 1000, seed: int = 0,
          width: int = 64, fc_dim: int = 4096) -> onnx.ModelProto:
    """torchvision VGG-16-BN: 13 Conv(bias)-BN-ReLU, 5 MaxPools, 3 FC (Gemm) layers.

    At size 224 the 7x7x512 map is flattened directly (the adaptive pool is the
    identity there); at other sizes the final map is flattened as is.
    """
    g = _GraphBuilder(seed)
    x = g.input((3, size, size), batch)
    cfg = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]
    for i, v in enumerate(cfg):
        with g.scope(f"features.{i}"):
            x = g.maxpool(x, 2, 2) if v == "M" else g.act(g.bn(g.conv(x, width * v, 3, bias=True)), "relu")
    x = g.gemm(g.flatten(x), fc_dim, "relu")
    x = g.gemm(x, fc_dim, "relu")
    return g.build(g.gemm(x, num_classes), "logits", batch, "vgg16")


def _c2f(g: _GraphBuilder, x: str, cout: int, n: int, shortcut: bool) -> str:
    """YOLOv8 C2f: Conv1x1 -> Split in halves -> n bottlenecks -> Concat -> Conv1x1."""
    c = cout // 2
    ys = g.split(g.conv_bn_act(x, 2 * c, 1, act="silu"), [c, c])
    for _ in range(n):
        y = g.conv_bn_act(g.conv_bn_act(ys[-1], c, 3, act="silu"), c, 3, act="silu")
        ys.append(g.add(ys[-1], y) if shortcut else y)
    return g.conv_bn_act(g.concat(ys), cout, 1, act="silu")


def csp_block(batch: int | None = 1, size: int = 64, channels: int = 64, n: int = 2,
              shortcut: bool = True, seed: int = 0) -> onnx.ModelProto:
    """A single YOLOv8-style C2f (CSP) block with SiLU = Mul(x, Sigmoid(x))."""
    g = _GraphBuilder(seed)
    x = g.input((channels, size, size), batch, stride=1)
    return g.build(_c2f(g, x, channels, n, shortcut), "output", batch, "csp_block")


def yolo_csp(batch: int | None = 1, size: int = 640, num_classes: int = 80, width: float = 0.25,
             depth: float = 0.33, num_anchors: int = 3, seed: int = 0) -> onnx.ModelProto:
    """YOLOv8n-like detector: C2f backbone + SPPF, PAN neck (nearest Resize x2 + Concat),
    YOLOv5-style per-level 1x1 head conv; output [batch, anchors, 5 + num_classes] (raw)."""
    assert size % 32 == 0, "size must be a multiple of 32"
    g = _GraphBuilder(seed)
    ch = [max(8, int(math.ceil(c * width / 8) * 8)) for c in (64, 128, 256, 512, 1024)]
    nrep = [max(round(r * depth), 1) for r in (3, 6, 6, 3)]
    x, feats = g.input((3, size, size), batch), []
    with g.scope("backbone"):
        x = g.conv_bn_act(x, ch[0], 3, 2, act="silu")
        for i in range(4):
            x = _c2f(g, g.conv_bn_act(x, ch[i + 1], 3, 2, act="silu"), ch[i + 1], nrep[i], True)
            feats.append(x)
        with g.scope("sppf"):
            y = [g.conv_bn_act(x, ch[4] // 2, 1, act="silu")]
            for _ in range(3):
                y.append(g.maxpool(y[-1], 5, 1, 2))
            p5 = g.conv_bn_act(g.concat(y), ch[4], 1, act="silu")
    n = nrep[3]
    with g.scope("neck"):
        h4 = _c2f(g, g.concat([g.resize2x(p5), feats[2]]), ch[3], n, False)
        o3 = _c2f(g, g.concat([g.resize2x(h4), feats[1]]), ch[2], n, False)
        o4 = _c2f(g, g.concat([g.conv_bn_act(o3, ch[2], 3, 2, act="silu"), h4]), ch[3], n, False)
        o5 = _c2f(g, g.concat([g.conv_bn_act(o4, ch[3], 3, 2, act="silu"), p5]), ch[4], n, False)
    no, outs, total = 5 + num_classes, [], 0
    with g.scope("detect"):
        for f in (o3, o4, o5):
            _, h, w = g.shape(f)
            y = g.conv(f, num_anchors * no, 1, bias=True)
            y = g.op("Reshape", [y, g.const([-1, num_anchors, no, h, w])])
            y = g.op("Transpose", [y], perm=[0, 1, 3, 4, 2])
            outs.append(g.op("Reshape", [y, g.const([-1, num_anchors * h * w, no])]))
            total += num_anchors * h * w
        y = g.op("Concat", outs, axis=1)
    return g.build(y, "output", batch, "yolo_csp", shape=(total, no))


def shufflenetv2(batch: int | None = 1, size: int = 224, num_classes: int = 1000,
                 seed: int = 0) -> onnx.ModelProto:
    """torchvision ShuffleNetV2 x1.0: Split/branch/Concat units with Reshape-Transpose-Reshape shuffle."""
    g = _GraphBuilder(seed)
    x = g.conv_bn_act(g.input((3, size, size), batch), 24, 3, 2)
    x, cin = g.maxpool(x, 3, 2, 1), 24
    for si, (reps, cout) in enumerate(zip((4, 8, 4), (116, 232, 464))):
        bf = cout // 2
        for i in range(reps):
            with g.scope(f"stage{si + 2}.{i}"):
                if i == 0:  # downsampling unit: both branches see the whole input
                    b1 = g.conv_bn_act(g.conv_bn_act(x, cin, 3, 2, groups=cin, act=None), bf, 1)
                    src = x
                else:
                    b1, src = g.split(x, [bf, bf])
                s = 2 if i == 0 else 1
                y = g.conv_bn_act(src, bf, 1)
                y = g.conv_bn_act(y, bf, 3, s, groups=bf, act=None)
                y = g.conv_bn_act(y, bf, 1)
                x = g.channel_shuffle(g.concat([b1, y]), 2)
            cin = cout
    x = g.conv_bn_act(x, 1024, 1)
    return g.build(g.gemm(g.global_pool(x, "mean"), num_classes), "logits", batch, "shufflenetv2")


def densenet_block(batch: int | None = 1, size: int = 56, in_channels: int = 64, growth_rate: int = 32,
                   num_layers: int = 6, bn_size: int = 4, seed: int = 0) -> onnx.ModelProto:
    """DenseNet-121 dense block (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, Concat of all previous
    features before every layer) followed by a transition BN-ReLU-Conv1x1-AvgPool2."""
    g = _GraphBuilder(seed)
    feats = [g.input((in_channels, size, size), batch, stride=2)]
    for i in range(num_layers):
        with g.scope(f"denselayer{i + 1}"):
            x = g.concat(feats) if len(feats) > 1 else feats[0]
            x = g.conv(g.act(g.bn(x), "relu"), bn_size * growth_rate, 1)
            feats.append(g.conv(g.act(g.bn(x), "relu"), growth_rate, 3))
    with g.scope("transition"):
        x = g.concat(feats)
        x = g.conv(g.act(g.bn(x), "relu"), g.shape(x)[0] // 2, 1)
        x = g.avgpool(x, 2, 2)
    return g.build(x, "output", batch, "densenet_block")


def transformer_block(batch: int | None = 1, seq: int = 197, dim: int = 768, heads: int = 12,
                      layers: int = 1, mlp_ratio: int = 4, seed: int = 0) -> onnx.ModelProto:
    """Pre-LN ViT/BERT encoder block(s) on [batch, seq, dim], as torch/HF export them."""
    assert dim % heads == 0
    g = _GraphBuilder(seed)
    hd, x = dim // heads, g.input((seq, dim), batch)
    to_heads = g.const([0, 0, heads, hd])
    for li in range(layers):
        with g.scope(f"layer{li}"):
            h = g.layer_norm(x, dim)
            q, k, v = (g.op("Reshape", [g.linear(h, dim, dim), to_heads]) for _ in range(3))
            q = g.op("Transpose", [q], perm=[0, 2, 1, 3])
            k = g.op("Transpose", [k], perm=[0, 2, 3, 1])
            v = g.op("Transpose", [v], perm=[0, 2, 1, 3])
            s = g.op("Div", [g.op("MatMul", [q, k]), g.const(math.sqrt(hd), np.float32)])
            a = g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])
            a = g.op("Reshape", [g.op("Transpose", [a], perm=[0, 2, 1, 3]), g.const([0, 0, dim])])
            x = g.op("Add", [x, g.linear(a, dim, dim)])
            h = g.linear(g.layer_norm(x, dim), dim, dim * mlp_ratio)
            erf = g.op("Erf", [g.op("Div", [h, g.const(math.sqrt(2.0), np.float32)])])
            h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, g.const(1.0, np.float32)])]),
                             g.const(0.5, np.float32)])
            x = g.op("Add", [x, g.linear(h, dim * mlp_ratio, dim)])
    return g.build(x, "output", batch, "transformer_block", shape=(seq, dim))


# ======================================================================================
# Registry and helpers
# ======================================================================================
BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenetv2": mobilenetv2,
    "vgg16": vgg16,
    "csp_block": csp_block,
    "yolo_csp": yolo_csp,
    "shufflenetv2": shufflenetv2,
    "densenet_block": densenet_block,
    "transformer_block": transformer_block,
}

_SMALL: dict[str, dict] = {
    "resnet18": dict(size=64, num_classes=10, width=32),
    "resnet50": dict(size=64, num_classes=10, width=16),
    "mobilenetv2": dict(size=64, num_classes=10),
    "vgg16": dict(size=32, num_classes=10, width=16, fc_dim=128),
    "csp_block": dict(size=32, channels=32),
    "yolo_csp": dict(size=64, num_classes=8),
    "shufflenetv2": dict(size=64, num_classes=10),
    "densenet_block": dict(size=16, in_channels=32, growth_rate=16, num_layers=4),
    "transformer_block": dict(seq=16, dim=64, heads=4, layers=2),
}


def small_kwargs(name: str) -> dict:
    """Fast, small configuration of builder ``name`` for tests (a fresh dict)."""
    return dict(_SMALL[name])


def build(name: str, **kwargs) -> onnx.ModelProto:
    """``BUILDERS[name](**kwargs)``."""
    return BUILDERS[name](**kwargs)


def count_parameters(model: onnx.ModelProto, bn_stats: bool = True) -> int:
    """Elements over all non-scalar float initializers; ``bn_stats=False`` leaves out the
    BatchNormalization running mean/var (giving the framework's trainable-parameter count)."""
    skip = set() if bn_stats else {i for n in model.graph.node if n.op_type == "BatchNormalization"
                                   for i in n.input[3:5]}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type in floats and len(t.dims) > 0 and t.name not in skip)


def default_feed(model: onnx.ModelProto, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Standard-normal feed for every graph input; symbolic dims become ``batch``."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feed = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feed[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feed
