"""Sparse and codebook compute ops against onnxruntime dense, per layer and end to end (issue targets).

    python benchmarks/sparse_kernels.py [--rounds 30] [--only layers,e2e] [--threads 1,2]

Every row times the dense model and its ``ai.onnxcomp`` counterpart side by side in one process, interleaved
(``onnxcomp.measure.latency.benchmark``), medians; the ratio is dense / sparse. The dense FC baseline is the faster
of ``MatMul(x, W[K, N])`` and ``Gemm(x, W[N, K], transB=1)``. End to end: the ResNet-18 and MobileNetV2 builders
(224x224) with 90% unstructured sparsity in every prunable layer, and the bundled VGG-style and LeNet-300 after the
``deep-compression`` recipe's pruning step, each written by ``pack_weights: {format: sparse}`` (a layer becomes a
compute op only where its probe measured it faster) against the same pruned weights dense, at batch 1 and 4; the
outputs must agree (rel err <= 1e-5). Needs the native library (``onnxcomp.kernels.library``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import builders, paths  # noqa: E402
from onnxcomp.api import compress  # noqa: E402
from onnxcomp.emit import onnx_sparse  # noqa: E402
from onnxcomp.ir.model import Model  # noqa: E402
from onnxcomp.ir.weights import weight_table  # noqa: E402
from onnxcomp.kernels import library  # noqa: E402
from onnxcomp.measure.latency import benchmark  # noqa: E402
from onnxcomp.runtime import session  # noqa: E402

RNG = np.random.default_rng(0)


def _pruned(shape, sparsity: float, levels: int | None = None) -> np.ndarray:
    w = RNG.standard_normal(shape).astype(np.float32) * 0.05
    if levels:
        book = np.linspace(-0.1, 0.1, levels).astype(np.float32)
        w = book[RNG.integers(0, levels, shape)]
    w[RNG.random(shape) < sparsity] = 0
    return w


def _model(node: onnx.NodeProto, x: list[int], inits: list[onnx.TensorProto], opset: int = 21) -> onnx.ModelProto:
    graph = h.make_graph([node], "layer", [h.make_tensor_value_info("x", T.FLOAT, x)],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _compute_model(dense: onnx.ModelProto, xshape: tuple[int, ...], opset: int = 21) -> onnx.ModelProto:
    m = Model.load(dense)
    (w,) = [w for w in weight_table(m) if w.role == "weight"]
    c = onnx_sparse.candidate(m.graph, w.primary.node, w)
    assert not isinstance(c, str), c
    return onnx_sparse.layer_models(c, xshape, opset)[1], c.name


def _time(models: list, feed: dict, threads: int, rounds: int) -> list[float]:
    rows = benchmark(models, feed, rounds=rounds, warmup=3, threads=threads)
    return [r.median_ms for r in rows]


def layer_rows(rounds: int, threads_list: list[int]) -> None:
    print("\nper layer, batch 1 (ms: medians; ratio = dense / compute op)")
    print(f"{'layer':<44} {'thr':>3} {'dense':>8} {'op':>8} {'ratio':>6}  target")
    specs = []
    for size in (56, 14):
        for sparsity, target in ((0.9, 2.5), (0.8, 1.6), (0.7, 1.2)):
            specs.append((f"conv3x3 256->256 @{size} {sparsity:.0%}", "conv", (256, 256, 3, 3), size, sparsity,
                          None, target))
    specs.append(("conv1x1 256->256 @56 90%", "conv", (256, 256, 1, 1), 56, 0.9, None, 2.0))
    for n in (4096, 1024):
        specs.append((f"fc {n}x{n} 90% sparse", "fc", (n, n), None, 0.9, None, 3.0))
        specs.append((f"fc {n}x{n} 4-bit codebook", "fc", (n, n), None, 0.0, 16, 3.0))
        specs.append((f"fc {n}x{n} 90% sparse + 4-bit codebook", "fc", (n, n), None, 0.9, 16, 5.0))
    for label, kind, shape, size, sparsity, levels, target in specs:
        w = _pruned(shape, sparsity, levels)
        if kind == "conv":
            pad = shape[2] // 2
            xshape = (1, shape[1], size, size)
            dense = [_model(h.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4), list(xshape),
                            [nh.from_array(w, "w")])]
        else:
            xshape = (1, shape[0])
            dense = [_model(h.make_node("MatMul", ["x", "w"], ["y"]), list(xshape), [nh.from_array(w, "w")]),
                     _model(h.make_node("Gemm", ["x", "wt"], ["y"], transB=1), list(xshape),
                            [nh.from_array(np.ascontiguousarray(w.T), "wt")])]
        op_model, op = _compute_model(dense[0], xshape)
        feed = {"x": RNG.standard_normal(xshape).astype(np.float32)}
        ref = session(dense[0]).run(None, feed)[0]
        got = session(op_model).run(None, feed)[0]
        err = float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-30))
        for threads in threads_list:
            times = _time([*dense, op_model], feed, threads, rounds)
            base = min(times[:-1])
            ratio = base / times[-1]
            mark = "ok" if ratio >= target else "SHORT"
            print(f"{label:<44} {threads:>3} {base:>8.3f} {times[-1]:>8.3f} {ratio:>6.2f}  >= {target:g} {mark}"
                  f"  ({op}, rel err {err:.1e})")


def _prune_all(proto: onnx.ModelProto, sparsity: float) -> onnx.ModelProto:
    recipe = {"name": "prune", "passes": ["fold_constants", "eliminate_identity", "fold_batchnorm", "eliminate_dead",
                                          {"prune_magnitude": {"mode": "layer", "sparsity": sparsity,
                                                               "compensate": False, "min_elements": 64}}]}
    return compress(proto, recipe=recipe).model.to_proto()


def _dc_pruned(name: str) -> onnx.ModelProto:
    """The bundled model after the deep-compression recipe's cleanup and pruning steps (its own options)."""
    from onnxcomp.recipe import load_recipe

    steps = load_recipe("deep-compression").to_dict()["passes"]
    upto = next(i for i, s in enumerate(steps) if "prune_magnitude" in s) + 1
    recipe = {"name": "dc-prune", "holdout": 0.25, "passes": steps[:upto]}
    calib = paths.data_path(paths.TRAINED[name][0])
    return compress(str(paths.model_path(name)), recipe=recipe, calibration=str(calib)).model.to_proto()


def _sparse_target(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    result = compress(proto, recipe={"name": "sparse", "passes": [{"pack_weights": {"format": "sparse"}}]})
    step = next(p for p in result.report.passes if p.name == "pack_weights")
    return result.model.to_proto(), f"{len(step.records)} layers as ops, {len(step.skipped)} dense"


def e2e_rows(rounds: int) -> None:
    print("\nend to end (ms: medians; ratio = pruned dense / sparse target)")
    print(f"{'model':<34} {'batch':>5} {'dense':>9} {'sparse':>9} {'ratio':>6}  target  layers")
    cases = [(f"{b} 90% unstructured", lambda b=b: _prune_all(builders.build(b), 0.9), 1.5)
             for b in ("resnet18", "mobilenetv2")]
    cases += [(f"{n} deep-compression pruning", lambda n=n: _dc_pruned(n), None)
              for n in ("mnist_vgg", "mnist_lenet300")]
    for label, make, target in cases:
        dense = make()
        sparse, layers = _sparse_target(dense)
        shape = [d.dim_value or 1 for d in dense.graph.input[0].type.tensor_type.shape.dim]
        for batch in (1, 4):
            dims = [batch, *shape[1:]]
            d_model, s_model = dense, sparse
            if batch != shape[0]:
                d_model, s_model = _with_batch(dense, batch), _with_batch(sparse, batch)
            feed = {dense.graph.input[0].name: RNG.standard_normal(dims).astype(np.float32)}
            a = session(d_model).run(None, feed)[0]
            b = session(s_model).run(None, feed)[0]
            err = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
            times = _time([d_model, s_model], feed, 0, rounds)
            ratio = times[0] / times[1]
            goal = f">= {target:g}" if target else "report"
            print(f"{label:<34} {batch:>5} {times[0]:>9.2f} {times[1]:>9.2f} {ratio:>6.2f}  {goal:<7} {layers}"
                  f" (rel err {err:.1e})")


def _with_batch(proto: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for vi in (*out.graph.input, *out.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--only", default="layers,e2e")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    why = library.absent_reason()
    if why:
        sys.exit(f"benchmarks/sparse_kernels.py: {why}")
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, library {library.library_path().name}; the machine is shared: "
          "ratios are from interleaved medians in one process")
    if "layers" in args.only:
        layer_rows(args.rounds, [int(t) for t in args.threads.split(",")])
    if "e2e" in args.only:
        e2e_rows(args.rounds)


if __name__ == "__main__":
    main()
