"""Time `onnxcomp inspect` and the `cleanup` recipe on a ~100 MB model (the ResNet-50 builder at 224x224).

Target (issue 2): inspect of a 100 MB model in under 10 s. Prints a table of medians over --repeat runs.

    python benchmarks/inspect_large.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import builders  # noqa: E402


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.onnx"
        path.write_bytes(builders.resnet50().SerializeToString())
        size_mb = path.stat().st_size / 1e6
        cli = [sys.executable, "-m", "onnxcomp"]
        rows = [
            ("onnxcomp inspect", cli + ["inspect", str(path)]),
            ("onnxcomp inspect --json", cli + ["inspect", "--json", str(path)]),
            ("onnxcomp compress --recipe cleanup", cli + ["compress", str(path), "-o", str(Path(tmp) / "out.onnx"),
                                                          "--quiet"]),
        ]
        print(f"model: ResNet-50 builder, 224x224, {size_mb:.1f} MB")
        print(f"{'command':<40} {'median s':>9} {'min s':>7} {'target':>8}")
        for label, cmd in rows:
            times = [_timed(cmd) for _ in range(args.repeat)]
            target = "< 10 s" if "inspect" in label else "-"
            print(f"{label:<40} {statistics.median(times):>9.2f} {min(times):>7.2f} {target:>8}")


if __name__ == "__main__":
    main()
