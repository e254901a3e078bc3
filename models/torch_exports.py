"""Writes three untrained, seeded ONNX models exported from PyTorch (TorchScript exporter, ``dynamo=False``) into
``models/``, each reproducing a shape of real-world export that breaks compressors, plus calibration data for each
into ``models/data/``:

- ``bert_mask.onnx`` (opset 17): a BERT-style sentence-embedding encoder as HuggingFace exports it. Inputs
  ``input_ids`` / ``attention_mask`` int64 ``[batch, seq]`` (both axes dynamic), token + position embeddings
  (position ids sliced from a buffer, as HF does) + LayerNorm, two post-LN encoder layers (4 heads, erf-GELU FFN).
  Layer 1 adds HF's extended mask ``(1 - mask.float()) * finfo(float32).min`` to the scores, layer 2 uses
  ``scores.masked_fill(mask == 0, -inf)``: activations whose calibration ranges are not finite. Output
  ``sentence_embedding`` ``[batch, 32]`` (masked mean pooling). Data ``data/bert_mask_calib.npz``: 64 samples of
  seq 16, 1..12 valid tokens each, trailing padding (id 0, mask 0).
- ``vad_state.onnx`` (opset 15): a streaming voice-activity model like Silero VAD. Inputs ``input`` float32
  ``[batch, samples]`` (a 512-sample chunk at 16 kHz, 256 at 8 kHz), ``state`` float32 ``[2, batch, 64]`` (LSTM h
  and c carried between calls) and ``sr`` an int64 scalar; as Silero ships it, the model is ``torch.jit.script``-ed
  and branches on ``sr`` into each rate's whole network, so the export is an ONNX ``If`` (on
  ``Cast(Equal(sr, 16000))``) whose two subgraphs read ``state`` and hold everything: a Conv front end (stride 4 /
  stride 2, both 128 frames), an encoder Conv, an LSTM (hidden 64, its W/R/B exported as Constant nodes) started
  from ``state``, a Linear + Sigmoid head; outputs ``output`` ``[batch, 1]`` and ``stateN``
  ``[2, batch, 64]``. ``sr`` is a rank-0 input, which a stacked ``.npz`` cannot hold (and ``state``
  carries its batch on axis 1), so the data is the folder ``data/vad_state_calib/``: 32 per-feed ``.npz`` files
  (``input`` [1, 512], ``state`` [2, 1, 64], ``sr`` int64 0-d = 16000).
- ``yolo_dfl.onnx`` (opset 17, dynamic batch): a YOLOv8n-style detector at 320x320, narrow (16/24/32/32 channels):
  Conv-BN-SiLU, C2f blocks (``chunk`` halves, bottlenecks with shortcut, Concat), SPPF, an FPN/PAN neck (nearest
  upsample + Concat) and the YOLOv8 DFL head (box 4*16 and 8-class branches per level, reshape to
  ``[b, 4, 16, anchors]``, softmax over the bins, a frozen 1x1 Conv with weights ``arange(16)``, ``dist2bbox`` with
  anchor points and strides computed in forward, so Range/Expand/ConstantOfShape at run time). BatchNormalization
  is kept (``TrainingMode.PRESERVE`` on an ``eval()`` model: ``EVAL`` folds it into the convolutions); its
  statistics come from one train-mode pass over 8 of the images, so activations stay O(1) (default init alone
  shrinks them to ~0.07 by P3 and makes every image give the same output), and the box logits are scaled by
  ``BOX_LOGIT_GAIN`` so the DFL softmax is not flat. Output ``output`` ``[batch, 12, 2100]`` (boxes in pixels).
  Data ``data/yolo_dfl_calib.npz``: 16 images with pixels uniform on the 256 levels k/256 of [0, 1), drawn on a
  16x16-pixel block grid (20x20 random values per channel, nearest-upsampled): iid float32 pixels at 320x320
  compress to ~1.2 MB per image, far over the data budget.

Every model is checked after writing: onnxruntime runs every calibration sample and must match torch to < 1e-4 max
abs difference over the output's scale max(1, max |output|) (plain abs difference for outputs within [-1, 1]; YOLO's
pixel boxes differ by ~1e-2, float32 rounding at that magnitude). Development tool only (needs torch):
``python models/torch_exports.py [--only NAME]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MODELS = Path(__file__).resolve().parent
DATA = MODELS / "data"
TOL = 1e-4
BOX_LOGIT_GAIN = 4.0


# -- bert_mask -------------------------------------------------------------------------------------------------
class EncoderLayer(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4, ffn: int = 64):
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-12), nn.LayerNorm(d, eps=1e-12)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def heads(self, x):
        b, s, _ = x.shape
        return x.view(b, s, self.h, self.dk).permute(0, 2, 1, 3)

    def forward(self, x, mask, mode: str):
        b, s, d = x.shape
        scores = torch.matmul(self.heads(self.q(x)), self.heads(self.k(x)).transpose(-1, -2)) / math.sqrt(self.dk)
        if mode == "additive":  # HF get_extended_attention_mask
            extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
            scores = scores + extended
        else:
            scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
        ctx = torch.matmul(torch.softmax(scores, dim=-1), self.heads(self.v(x)))
        ctx = ctx.permute(0, 2, 1, 3).reshape(b, s, d)
        x = self.ln1(x + self.o(ctx))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class BertMask(nn.Module):
    def __init__(self, vocab: int = 200, d: int = 32, max_pos: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Embedding(max_pos, d)
        self.register_buffer("position_ids", torch.arange(max_pos).unsqueeze(0), persistent=False)
        self.ln = nn.LayerNorm(d, eps=1e-12)
        self.layer1, self.layer2 = EncoderLayer(d), EncoderLayer(d)

    def forward(self, input_ids, attention_mask):
        pos = self.position_ids[:, : input_ids.shape[1]]
        x = self.ln(self.tok(input_ids) + self.pos(pos))
        x = self.layer1(x, attention_mask, "additive")
        x = self.layer2(x, attention_mask, "masked_fill")
        m = attention_mask.unsqueeze(-1).float()
        return (x * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)


def bert_data(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, seq = 64, 16
    ids = rng.integers(1, 200, size=(n, seq)).astype(np.int64)
    valid = rng.integers(1, 13, size=n)
    mask = (np.arange(seq)[None, :] < valid[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def export_bert(path: Path) -> tuple[nn.Module, list[dict[str, np.ndarray]]]:
    net = BertMask().eval()
    data = bert_data(np.random.default_rng(1))
    np.savez_compressed(DATA / "bert_mask_calib.npz", **data)
    example = (torch.from_numpy(data["input_ids"][:2]), torch.from_numpy(data["attention_mask"][:2]))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "sentence_embedding": {0: "batch"}}
    torch.onnx.export(net, example, str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["sentence_embedding"], dynamic_axes=axes, opset_version=17, dynamo=False)
    feeds = [{k: v[i:i + 1] for k, v in data.items()} for i in range(len(data["input_ids"]))]
    return net, feeds


# -- vad_state -------------------------------------------------------------------------------------------------
class VadBranch(nn.Module):
    """One sample rate's whole network: Conv front end, encoder Conv, LSTM over the frames, Linear + Sigmoid."""

    def __init__(self, stride: int, hidden: int = 64):
        super().__init__()
        self.frontend = nn.Conv1d(1, 32, kernel_size=stride, stride=stride)  # 512 or 256 samples -> 128 frames
        self.enc = nn.Conv1d(32, hidden, kernel_size=3, stride=2, padding=1)  # 128 -> 64 frames
        self.lstm = nn.LSTM(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.enc(torch.relu(self.frontend(x.unsqueeze(1)))))  # [b, 64, T]
        out, (h, c) = self.lstm(y.permute(2, 0, 1), (state[0:1], state[1:2]))
        return torch.sigmoid(self.head(out[-1])), torch.cat([h, c], dim=0)


class VadState(nn.Module):
    """As Silero VAD ships it: the branch on the sample rate holds each rate's whole network, so the If's two
    subgraphs read the recurrent ``state`` input (and hold the LSTM weights) and the main graph almost nothing."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.m16k = VadBranch(4, hidden)
        self.m8k = VadBranch(2, hidden)

    def forward(self, x: torch.Tensor, state: torch.Tensor, sr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool(sr == 16000):
            out, new_state = self.m16k(x, state)
        else:
            out, new_state = self.m8k(x, state)
        return out, new_state


def vad_feeds(rng: np.random.Generator, n: int = 32, samples: int = 512, sr: int = 16000) -> list[dict]:
    feeds = []
    t = np.arange(samples) / sr
    for _ in range(n):
        tone = rng.uniform(0, 0.5) * np.sin(2 * np.pi * rng.uniform(100, 3000) * t + rng.uniform(0, 2 * np.pi))
        audio = tone + rng.uniform(0.01, 0.2) * rng.standard_normal(samples)
        audio = np.round(np.clip(audio, -1, 1) * 32767) / 32768  # int16 PCM levels
        feeds.append({"input": audio[None].astype(np.float32),
                      "state": (0.1 * rng.standard_normal((2, 1, 64))).astype(np.float32),
                      "sr": np.array(sr, dtype=np.int64)})
    return feeds


def export_vad(path: Path) -> tuple[nn.Module, list[dict[str, np.ndarray]]]:
    net = torch.jit.script(VadState().eval())  # scripted, not traced: the branch on sr is kept
    feeds = vad_feeds(np.random.default_rng(2))
    folder = DATA / "vad_state_calib"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.npz"):
        old.unlink()
    for i, feed in enumerate(feeds):
        np.savez_compressed(folder / f"{i:03d}.npz", **feed)
    example = (torch.from_numpy(feeds[0]["input"]), torch.from_numpy(feeds[0]["state"]), torch.tensor(16000))
    axes = {"input": {0: "batch", 1: "samples"}, "state": {1: "batch"}, "output": {0: "batch"},
            "stateN": {1: "batch"}}
    torch.onnx.export(net, example, str(path), input_names=["input", "state", "sr"],
                      output_names=["output", "stateN"], dynamic_axes=axes, opset_version=15, dynamo=False)
    return net, feeds


# -- yolo_dfl --------------------------------------------------------------------------------------------------
class Conv(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c, 3), Conv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        self.cv1, self.cv2 = Conv(c1, c1 // 2, 1), Conv(c1 // 2 * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    def __init__(self, c1: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats, strides, offset: float = 0.5):
    points, stride_t = [], []
    for x, s in zip(feats, strides):
        _, _, h, w = x.shape
        sx = torch.arange(end=w, dtype=x.dtype) + offset
        sy = torch.arange(end=h, dtype=x.dtype) + offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_t.append(torch.full((h * w, 1), s, dtype=x.dtype))
    return torch.cat(points), torch.cat(stride_t)


def dist2bbox(distance, anchor_points, dim: int = 1):
    lt, rb = distance.chunk(2, dim)
    x1y1, x2y2 = anchor_points - lt, anchor_points + rb
    return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)


class Detect(nn.Module):
    def __init__(self, nc: int, ch: tuple[int, ...], strides: tuple[int, ...], reg_max: int = 16, c2: int = 16,
                 c3: int = 8):
        super().__init__()
        self.nc, self.reg_max, self.no, self.strides = nc, reg_max, nc + 4 * reg_max, strides
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for c in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch)
        self.dfl = DFL(reg_max)

    def forward(self, xs):
        xs = [torch.cat((b(x), c(x)), 1) for x, b, c in zip(xs, self.cv2, self.cv3)]
        shape = xs[0].shape
        anchors, strides = (t.transpose(0, 1) for t in make_anchors(xs, self.strides, 0.5))
        x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in xs], 2)
        box, cls = x_cat.split((4 * self.reg_max, self.nc), 1)
        dbox = dist2bbox(self.dfl(box), anchors.unsqueeze(0), dim=1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class YoloDfl(nn.Module):
    def __init__(self, nc: int = 8, w: tuple[int, ...] = (16, 24, 32, 32)):
        super().__init__()
        a, b, c, d = w
        self.stem = Conv(3, a, 3, 2)  # 160
        self.b1 = nn.Sequential(Conv(a, b, 3, 2), C2f(b, b))  # 80
        self.b2 = nn.Sequential(Conv(b, c, 3, 2), C2f(c, c))  # 40: P3
        self.b3 = nn.Sequential(Conv(c, d, 3, 2), C2f(d, d))  # 20: P4
        self.b4 = nn.Sequential(Conv(d, d, 3, 2), C2f(d, d), SPPF(d, d))  # 10: P5
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n1 = C2f(d + d, c)  # P4 top-down
        self.n2 = C2f(c + c, b)  # P3 out
        self.d1 = Conv(b, b, 3, 2)
        self.n3 = C2f(b + c, c)  # P4 out
        self.d2 = Conv(c, c, 3, 2)
        self.n4 = C2f(c + d, d)  # P5 out
        self.detect = Detect(nc, (b, c, d), (8, 16, 32))

    def forward(self, x):
        p3 = self.b2(self.b1(self.stem(x)))
        p4 = self.b3(p3)
        p5 = self.b4(p4)
        t4 = self.n1(torch.cat([self.up(p5), p4], 1))
        o3 = self.n2(torch.cat([self.up(t4), p3], 1))
        o4 = self.n3(torch.cat([self.d1(o3), t4], 1))
        o5 = self.n4(torch.cat([self.d2(o4), p5], 1))
        return self.detect([o3, o4, o5])


def yolo_images(rng: np.random.Generator, n: int = 16, size: int = 320, block: int = 16) -> np.ndarray:
    low = rng.integers(0, 256, size=(n, 3, size // block, size // block)).astype(np.float32) / 256
    return np.repeat(np.repeat(low, block, axis=2), block, axis=3)


def export_yolo(path: Path) -> tuple[nn.Module, list[dict[str, np.ndarray]]]:
    net = YoloDfl()
    images = yolo_images(np.random.default_rng(3))
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():  # running statistics of a forward pass, so activations stay O(1) through the network
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
            m.momentum = 1.0
        for head in net.detect.cv2:  # box logits spread enough that the softmax over the bins is not flat
            head[-1].weight.mul_(BOX_LOGIT_GAIN)
        net.train()(torch.from_numpy(images[:8]))
    for m in bns:
        m.momentum = 0.03
    net.eval()
    np.savez_compressed(DATA / "yolo_dfl_calib.npz", images=images)
    torch.onnx.export(net, torch.from_numpy(images[:1]), str(path), input_names=["images"], output_names=["output"],
                      dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}}, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, dynamo=False)
    return net, [{"images": images[i:i + 1]} for i in range(len(images))]


EXPORTS = {"bert_mask": export_bert, "vad_state": export_vad, "yolo_dfl": export_yolo}


def check(name: str, path: Path, net: nn.Module, feeds: list[dict[str, np.ndarray]]) -> tuple[float, float]:
    """(max abs difference, max abs difference over the output's scale max(1, max |torch|)) between onnxruntime
    and torch over every feed and output; the second must stay under ``TOL``. For outputs within [-1, 1] (the
    embedding, the VAD probability and state, YOLO's class scores) the two are the same; YOLO's boxes are in
    pixels (up to ~1000), where float32 itself resolves only ~6e-5, so they are held to TOL relative to that scale."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = scaled = 0.0
    with torch.no_grad():
        for feed in feeds:
            ref = net(*(torch.from_numpy(v) for v in feed.values()))
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sess.run(None, feed)
            for r, g in zip(ref, got):
                r = r.numpy()
                assert r.shape == g.shape, (name, r.shape, g.shape)
                diff = float(np.abs(r - g).max())
                worst, scaled = max(worst, diff), max(scaled, diff / max(1.0, float(np.abs(r).max())))
    if not scaled < TOL:
        raise SystemExit(f"{name}: onnxruntime differs from torch by {worst:.3g} ({scaled:.3g} of the output scale, "
                         f">= {TOL})")
    return worst, scaled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(EXPORTS), help="write only this model and its data")
    args = parser.parse_args()
    torch.set_num_threads(2)
    DATA.mkdir(exist_ok=True)
    for name, export in EXPORTS.items():
        if args.only and name != args.only:
            continue
        torch.manual_seed(0)
        path = MODELS / f"{name}.onnx"
        net, feeds = export(path)
        worst, scaled = check(name, path, net, feeds)
        line = f"max abs diff {worst:.2g} over {len(feeds)} samples"
        if scaled != worst:
            line += f" ({scaled:.2g} of the output scale)"
        if name == "vad_state":  # the 8 kHz branch runs too, on a 256-sample chunk
            line += f"; 8 kHz branch {check(name, path, net, vad_feeds(np.random.default_rng(4), 4, 256, 8000))[0]:.2g}"
            line += " over 4 chunks of 256"
        params = sum(p.numel() for p in net.parameters())
        print(f"wrote {path.name}: {path.stat().st_size:,} B, {params:,} parameters, ORT vs torch {line}")


if __name__ == "__main__":
    main()
