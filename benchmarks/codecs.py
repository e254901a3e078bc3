"""Storage codecs at scale: encode/decode time and bytes for a 25M-element Deep-Compression-style weight.

The weight: 25M float32 normals, the 90% smallest magnitudes set to 0, the rest snapped to 32 levels (16 per sign)
spread linearly over the surviving magnitudes (k-means' linear initialisation). Rows:
- ``encode_weight`` (cheapest exact stack) and ``decode_weight`` of the whole weight, blob bytes vs float32;
- the same with the sparse format off (dense codebook: 25M indices, Huffman coded);
- ``huffman.decode`` alone on the 25M dense codebook indices (throughput in symbols/s);
- ``pack_bits`` / ``unpack_bits`` of 25M 5-bit values.

With onnxcomp's native library each stack also gets a ``native`` row: the ``DecodeWeight`` kernel in a one-node
onnxruntime session, timed as session creation (the kernel decodes the constant blob there: protobuf parsing,
CRC, decoding) and one run (the copy out), with its throughput in MB/s of decoded weights.

``--load-resnet50`` times loading a packed ResNet-50 (builder weights, fixed 80% sparsity, 5-bit sharing, Huffman
packing, as ``benchmarks/deep_compression.py``'s ResNet-50 row) through ``onnxcomp.runtime.InferenceSession``,
with the numpy reference (``ONNXCOMP_NO_NATIVE=1``) and with the native kernel, interleaved, medians of R: the
whole load and its decoding part (``unpack_seconds``).

Run: ``python benchmarks/codecs.py [--elements N] [--repeat R] [--load-resnet50]`` (best of R for every timing).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from onnxcomp.codecs import huffman
from onnxcomp.codecs.bitpack import pack_bits, unpack_bits
from onnxcomp.codecs.stack import decode_weight, encode_weight, from_blob, to_blob


def make_weight(n: int, sparsity: float = 0.9, levels: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32)
    cut = np.quantile(np.abs(w), sparsity)
    keep = np.abs(w) > cut
    half = levels // 2  # levels spread linearly over each sign's surviving range
    mag = np.abs(w)
    top = mag.max()
    step = np.clip(np.rint((mag - cut) / (top - cut) * (half - 1)).astype(np.int64), 0, half - 1)
    centroids = np.linspace(cut, top, half).astype(np.float32)
    return np.where(keep, np.sign(w) * centroids[step], np.float32(0)).astype(np.float32)


def best_of(repeat: int, fn):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def native_decode(blob: np.ndarray, like: np.ndarray, repeat: int) -> tuple[float, float] | None:
    """(session creation s, run s) of a one-node DecodeWeight model in onnxruntime with the native library."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from onnxcomp.kernels import library, schema

    if library.library_path() is None:
        return None
    onnx_type = helper.np_dtype_to_tensor_dtype(like.dtype)
    node = helper.make_node(schema.DECODE_OP, ["blob"], ["W"], domain=schema.DOMAIN, dtype=onnx_type)
    node.attribute.append(helper.make_attribute("shape", list(like.shape), attr_type=onnx.AttributeProto.INTS))
    graph = helper.make_graph([node], "decode", [], [helper.make_tensor_value_info("W", onnx_type, None)],
                              [numpy_helper.from_array(blob, "blob")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(schema.DOMAIN, 1)])
    model.ir_version = 8
    data = model.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    library.register(so)
    t_create, sess = best_of(repeat, lambda: ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]))
    t_run, out = best_of(repeat, lambda: sess.run(None, {})[0])
    assert out.tobytes() == like.tobytes()
    return t_create, t_run


def load_resnet50(repeat: int) -> None:
    """Load time of a packed ResNet-50: numpy reference against the native kernel."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from models import builders
    from onnxcomp import compress
    from onnxcomp.kernels import library
    from onnxcomp.runtime import InferenceSession

    if library.library_path() is None:
        print(f"--load-resnet50: {library.absent_reason()}")
        return
    recipe = {"name": "fixed", "passes": [
        "fold_constants", "eliminate_identity", "fold_batchnorm", "eliminate_dead",
        {"prune_magnitude": {"mode": "layer", "sparsity": 0.8, "compensate": False}},
        {"share_weights": {"bits": 5, "refine": False}},
        {"pack_weights": {"format": "packed", "huffman": True}},
    ]}
    with tempfile.TemporaryDirectory() as tmp:
        src, packed = Path(tmp) / "resnet50.onnx", Path(tmp) / "resnet50.packed.onnx"
        src.write_bytes(builders.resnet50().SerializeToString())
        compress(str(src), recipe=recipe, output=packed, seed=0)
        times: dict[str, list[tuple[float, float]]] = {"python": [], "native": []}
        InferenceSession(str(packed))  # warm-up: library loading, page cache
        for _ in range(repeat):
            for path in ("python", "native"):
                if path == "python":
                    os.environ["ONNXCOMP_NO_NATIVE"] = "1"
                sess = InferenceSession(str(packed))
                os.environ.pop("ONNXCOMP_NO_NATIVE", None)
                assert (sess.native_weights > 0) == (path == "native")
                times[path].append((sess.load_seconds, sess.unpack_seconds))
                del sess
        med = {k: np.median(np.array(v), axis=0) for k, v in times.items()}
        print(f"packed ResNet-50 ({packed.stat().st_size:,} B) load, median of {repeat}: "
              f"numpy {med['python'][0]:.3f} s (decoding {med['python'][1]:.3f} s), "
              f"native {med['native'][0]:.3f} s (decoding {med['native'][1]:.3f} s): "
              f"{med['python'][0] / med['native'][0]:.1f}x load, {med['python'][1] / med['native'][1]:.1f}x decoding")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=25_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--load-resnet50", action="store_true", help="only the packed ResNet-50 load times")
    args = parser.parse_args()
    if args.load_resnet50:
        load_resnet50(max(args.repeat, 5))
        return
    n, r = args.elements, args.repeat
    w = make_weight(n)
    print(f"weight: {n:,} float32 ({w.nbytes:,} B), {np.mean(w == 0):.1%} zeros, "
          f"{np.unique(w[w != 0]).size} nonzero levels")
    print(f"{'case':<44} {'encode s':>9} {'decode s':>9} {'bytes':>12} {'vs float':>9}")
    for label, options in (("cheapest stack", {}), ("dense codebook + Huffman (sparse off)", {"allow_sparse": False}),
                           ("sparse, no Huffman", {"allow_huffman": False})):
        t_enc, enc = best_of(r, lambda o=options: to_blob(encode_weight(w, **o)))
        t_dec, out = best_of(r, lambda b=enc: decode_weight(from_blob(b)))
        assert np.array_equal(out.view(np.uint32), w.view(np.uint32))
        desc = from_blob(enc).describe()
        print(f"{label:<44} {t_enc:>9.3f} {t_dec:>9.3f} {enc.size:>12,} {w.nbytes / enc.size:>8.1f}x   {desc}")
        print(f"{'':<44} sections: {from_blob(enc).bytes_by_section()}")
        native = native_decode(enc, w, r)
        if native is not None:
            print(f"{'  native DecodeWeight (create / run)':<44} {native[0]:>9.3f} {native[1]:>9.3f} "
                  f"{'':>12} {'':>9}   {w.nbytes / native[0] / 1e6:,.0f} MB/s decoded at session creation")

    index = np.searchsorted(np.unique(w), w).astype(np.uint8)
    t_enc, (table, stream) = best_of(r, lambda: huffman.encode(index))
    t_dec, out = best_of(r, lambda: huffman.decode(table, stream))
    assert np.array_equal(out, index)
    label = f"huffman {n / 1e6:g}M indices ({np.unique(index).size} symbols)"
    print(f"{label:<44} {t_enc:>9.3f} {t_dec:>9.3f} "
          f"{table.size + stream.size:>12,} {'':>9}   decode {n / t_dec / 1e6:.1f} M symbols/s, "
          f"{8 * stream.size / n:.2f} bits/symbol")
    values = (index % 32).astype(np.uint8)
    t_enc, packed = best_of(r, lambda: pack_bits(values, 5))
    t_dec, out = best_of(r, lambda: unpack_bits(packed, 5, n))
    assert np.array_equal(out, values)
    print(f"{'bitpack 5-bit':<44} {t_enc:>9.3f} {t_dec:>9.3f} {packed.size:>12,}")


if __name__ == "__main__":
    main()
