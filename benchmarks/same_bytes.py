"""Same seed, same bytes: sha256 of what the CLI writes for the README main command and the built-in recipes on
every bundled model. Run it before and after a refactor that must not change results and diff the two tables.

    python benchmarks/same_bytes.py [--recipes int8,slim] [--models mnist_vgg] [--json OUT.json]

torch_patterns has no data of its own: it is calibrated on 64 seeded normal samples written to a temporary file.
Prints one row per run: model, recipe, seconds, output bytes, sha256 of the model file (reports carry timings
and are not compared).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import paths  # noqa: E402

RECIPES = ("int8", "slim", "int8-weights", "mixed")
MODELS = (*sorted(paths.TRAINED), "torch_patterns")


def _calibration(model: str, tmp: pathlib.Path) -> pathlib.Path:
    if model in paths.TRAINED:
        return paths.data_path(paths.TRAINED[model][0])
    out = tmp / f"{model}_calib.npz"
    if not out.exists():
        np.savez(out, x=np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32))
    return out


def _run(model: str, recipe: str, calib: pathlib.Path, tmp: pathlib.Path) -> dict:
    out = tmp / f"{model}.{recipe}.onnx"
    cmd = [sys.executable, "-m", "onnxcomp", "compress", str(paths.model_path(model)), "-o", str(out),
           "--recipe", recipe, "--calib", str(calib), "--seed", "0"]
    start = time.perf_counter()
    # not in ROOT: onnxcomp/ there lacks passes/ and kernels/, which the install maps into the package
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"model": model, "recipe": recipe, "seconds": seconds, "bytes": 0,
                "sha256": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    data = out.read_bytes()
    return {"model": model, "recipe": recipe, "seconds": seconds, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-main", action="store_true", help="skip the README main command (LeNet-300 deep-compression)")
    ap.add_argument("--json", help="also write the rows as JSON")
    args = ap.parse_args()
    runs = [] if args.no_main else [("mnist_lenet300", "deep-compression")]
    runs += [(m, r) for m in args.models.split(",") for r in args.recipes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        print(f"{'model':<16} {'recipe':<17} {'s':>6} {'bytes':>10}  sha256")
        for model, recipe in runs:
            row = _run(model, recipe, _calibration(model, tmp), tmp)
            rows.append(row)
            print(f"{model:<16} {recipe:<17} {row['seconds']:>6.1f} {row['bytes']:>10,}  {row['sha256']}", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
