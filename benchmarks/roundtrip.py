"""Issue-2 acceptance figures: max relative error of load->save and of the `cleanup` recipe against the original,
in onnxruntime, for every bundled trained model, every architecture builder (small configs) and PP-OCRv4.

    python benchmarks/roundtrip.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import builders, paths  # noqa: E402
from onnxcomp.api import compress  # noqa: E402
from onnxcomp.ir.model import Model  # noqa: E402
from onnxcomp.ir.weights import weight_table  # noqa: E402
from onnxcomp.runtime import session  # noqa: E402


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.abs(a).max())
    diff = float(np.abs(a.astype(np.float64) - b).max())
    return diff / scale if scale > 0 else diff


def figures(name: str, source, feed: dict) -> list[str]:
    ref = session(source).run(None, feed)
    saved = session(Model.load(source).to_proto()).run(None, feed)
    cleaned_model = compress(source, recipe="cleanup").model
    cleaned = session(cleaned_model.to_proto()).run(None, feed)
    before = Model.load(source)
    const_before = sum(w.source == "constant" for w in weight_table(before))
    const_after = sum(w.source == "constant" for w in weight_table(cleaned_model))
    nodes = (len(before.graph.nodes), len(cleaned_model.graph.nodes))
    return [name, f"{max(rel_err(a, b) for a, b in zip(ref, saved)):.1e}",
            f"{max(rel_err(a, b) for a, b in zip(ref, cleaned)):.1e}", f"{nodes[0]} -> {nodes[1]}",
            f"{const_before} -> {const_after}"]


def main() -> None:
    rows = []
    for name, (_, test) in sorted(paths.TRAINED.items()):
        with np.load(paths.data_path(test)) as z:
            rows.append(figures(name, str(paths.model_path(name)), {"input": z["input"][:64]}))
    for name in sorted(builders.BUILDERS):
        proto = builders.build(name, **builders.small_kwargs(name))
        rows.append(figures(name, proto, builders.default_feed(proto)))
    try:
        from models import ppocr

        for kind, path in ppocr.model_paths().items():
            rows.append(figures(f"PP-OCRv4 {kind}", str(path), {"x": ppocr.calibration(kind, 4, seed=0)["x"]}))
    except RuntimeError as e:
        print(f"PP-OCR skipped: {e}")
    header = ["model", "load->save rel err", "cleanup rel err", "nodes", "Constant-node weights"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))


if __name__ == "__main__":
    main()
