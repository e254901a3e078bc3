"""Writes ``torch_patterns.onnx``: an untrained network built from the export patterns filter pruning must follow
in PyTorch's own ONNX (TorchScript exporter, opset 17, dynamic batch), for ``tests/test_channel_groups.py``.

MobileNetV3-style blocks (pointwise, depthwise, squeeze-excitation with sigmoid gating, hardswish, residual Add,
BatchNorm kept), ``torch.chunk`` on a dynamic-batch tensor (a Slice whose bounds are computed from ``Shape``), a
Concat of the halves in swapped order, nearest ``F.interpolate`` (Resize), a channel shuffle written as
``y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)`` with ``n, c, h, w = y.shape`` (shapes computed
at run time), a channel Slice ``[:, :32]``, ``view(n, -1)`` into a Linear, and a second graph output that reads
the residual stream. Development tool only (needs torch): ``python models/torch_patterns.py``.
"""

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = Path(__file__).resolve().parent / "torch_patterns.onnx"
torch.manual_seed(0)

class SE(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.pw = nn.Conv2d(c, 2 * c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * c)
        self.dw = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.se = SE(2 * c)
        self.proj = nn.Conv2d(2 * c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.hardswish(self.bn1(self.pw(x)))
        y = F.hardswish(self.bn2(self.dw(y)))
        return x + self.bn3(self.proj(self.se(y)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.b1, self.b2 = Block(16), Block(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.left, self.right = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 1)
        self.up = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu6(self.bn(self.stem(x)))
        x = self.b2(self.b1(x))
        y = self.down(x)  # 32 x 8 x 8
        a, b = torch.chunk(y, 2, dim=1)  # Slices with bounds computed from Shape
        a = F.leaky_relu(self.left(a), 0.1)
        b = torch.tanh(self.right(b))
        y = torch.cat([b, a], dim=1)
        x = x + F.interpolate(self.up(y), scale_factor=2.0, mode="nearest")
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        y = torch.cat([F.max_pool2d(y, 2), F.avg_pool2d(x, 4)], 1)[:, :32]
        return self.fc(y.view(y.size(0), -1)), x.mean(dim=(2, 3))


def main() -> None:
    net = Net().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
    torch.onnx.export(net, torch.randn(2, 3, 32, 32), str(OUT), input_names=["x"], output_names=["logits", "feat"],
                      dynamic_axes={"x": {0: "n"}}, opset_version=17, dynamo=False)
    print(f"wrote {OUT} ({OUT.stat().st_size:,} B)")


if __name__ == "__main__":
    main()
