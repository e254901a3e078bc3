"""Storage codecs at scale: encode/decode time and bytes for a 25M-element Deep-Compression-style weight.

The weight: 25M float32 normals, the 90% smallest magnitudes set to 0, the rest snapped to 32 levels (16 per sign)
spread linearly over the surviving magnitudes (k-means' linear initialisation). Rows:
- ``encode_weight`` (cheapest exact stack) and ``decode_weight`` of the whole weight, blob bytes vs float32;
- the same with the sparse format off (dense codebook: 25M indices, Huffman coded);
- ``huffman.decode`` alone on the 25M dense codebook indices (throughput in symbols/s);
- ``pack_bits`` / ``unpack_bits`` of 25M 5-bit values.

Run: ``python benchmarks/codecs.py [--elements N] [--repeat R]`` (best of R for every timing).
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=25_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
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
