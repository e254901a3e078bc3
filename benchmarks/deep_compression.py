"""Deep Compression without retraining, side by side: the full chain, without compensation, uniform sparsity.

For each bundled model: original bytes, packed bytes, ratio, accuracy before/after on the held-out TEST data
(never seen by the passes), for three chains that differ only in the pruning step:
- ``auto+comp``: per-layer thresholds by negatively correlated search, OBS compensation (the recipe);
- ``auto``: the same search, compensation off;
- ``uniform+comp``: one sparsity for all layers, the largest under the same fidelity bound, compensated;
- ``alloc+comp`` (only when named): ``auto+comp`` with ``start: allocation``, the search warm-started from a
  rate-distortion allocation instead of the scaled sensitivity limits (figures below);
- ``same-sparsity-no-comp``: the per-layer sparsities that ``auto+comp`` chose, without compensation (the
  equal-sparsity comparison of compensation against plain magnitude pruning);
- ``share-only``: no pruning step (what PP-OCRv4 rec, which bears little pruning at 0.99 agreement, is run with).
Then k-means sharing with least-squares centroid refinement and Huffman-coded packing (recipe
``deep-compression``). Each chain with a pruning step also packs its pruned model alone, without sharing
("pruned alone": the pruning step's own stored size and test accuracy, where the automatic thresholds are compared
with uniform sparsity under the same bound without the sharing step's own bound in between). ``--seed 0,1,2``
runs every chain at each seed and ends with a table of medians (the search's result depends on the seed).
PP-OCRv4 rec is scored by per-timestep argmax agreement with the original on rendered text lines. A last table
times a ResNet-50-sized graph (25M weights, fixed per-layer sparsity + sharing + Huffman) and loading its packed
file through ``onnxcomp.runtime.InferenceSession``, and checks determinism.

    python benchmarks/deep_compression.py [--models lenet,rescnn,...] [--skip-resnet] [--seed S[,S...]]
                                          [--max-drop PRUNE,SHARE] [--small-calib] [--share-bits BITS]
                                          [--rec-fresh K] [--rec-fresh-seed S]

The MNIST and digits models are calibrated on 2000 (1200) images of their training split
(``paths.TRAIN_CALIB``): the compensated fits need about two samples per input of a layer, and LeNet-300's first
layer has 784 (``--small-calib``: the 500/200-sample held-out calibration files, as the README command uses).

ResCNN over seeds (``--models rescnn --chains auto+comp,uniform+comp --seed 0,1,2``): auto+comp 9,162 / 9,547 /
11,118 B (76.0 / 72.5 / 70.0% pruned), uniform+comp 11,126 B at every seed (67.5%); auto / uniform 1.21 / 1.17 /
1.00x packed (median 1.17x) and 1.32 / 1.16 / 1.08x pruned alone (median 1.16x). The search's end point depends
on the seed: at seed 2 it never gets below its warm start.

``--chains alloc+comp`` (``start: allocation``: the search starts from a rate-distortion allocation over the layers'
curves of kept weights against model-output distortion) at 2000 training-split images:
- ResCNN, seeds 0 / 1 / 2: 8,925 / 8,652 / 8,964 B (18.1 / 18.7 / 18.0x, 79.6 / 78.4 / 78.2% pruned, -0.4 / -0.5 /
  -0.5); against uniform+comp 1.25 / 1.29 / 1.24x packed, 1.51 / 1.44 / 1.42x pruned alone. The start alone keeps
  8,198 weights (78.3% pruned) at every seed, the scaled limits 11,927 (68.4%).
- LeNet-300, seeds 0 / 1 / 2: 51.8x (-0.3) / 57.3x (-1.0) / 51.8x (-0.6). The allocation prunes the 784-wide first
  layer to 90%; the calibration check (training images, which the model fits better than test images) accepts it
  and the test set does not. With bounds matched to a 0.5-point budget (``--max-drop 0.005,0.0025``): seed 0
  38.0x at -0.3 (uniform+comp 17.8x, +0.0), seed 1 31.7x at -0.3 (short of 35x).
- ResCNN with bounds matched to its 1-point budget, split 2:1 like the recipe's (``--max-drop 0.0067,0.0033``),
  seed 2: 10,787 B (14.97x) at +0.0, uniform+comp 11,186 B; pruned alone 48,964 B against 61,120 B (1.25x).
  With budget-matched bounds the allocation keeps both accuracy budgets but misses both size targets at one
  seed each (LeNet-300 31.7x, ResCNN 14.97x).
- The README command (500 held-out calibration images): 29.0x at -0.1, against 34.1x at -0.2 from the scaled start
  (there the search from the scaled start gets further than the allocation's start).
So it is an option, not the default.

``--max-drop`` replaces the recipe's fidelity bounds of the pruning and sharing steps (e.g. ``0.004,0.003`` for
a target of 0.99 agreement, where the recipe's 0.01 + 0.005 would allow ~0.985). PP-OCRv4 rec, share-only: the
sharing bound is checked on non-sequential candidates, and the sequential application does better, so looser bounds
hold on the 64 test lines: ``--models ppocr-rec --chains share-only --max-drop 0,0.016`` gives 8.7x at 0.9906 there,
but that bound was picked on those lines (0.008, 0.012, 0.016, 0.02 tried), and on three fresh sets of 64 lines
(``--rec-fresh 3``) it holds only 0.9865 (min 0.9859). 0.012 gives 7.2x at 0.9945 on the test lines and 0.9931
(min 0.9926) on the fresh ones; 0.014 gives 7.9x at 0.9918, and 0.9913 (min 0.9887) on six fresh sets. Since
biases are stored at float16 and duplicate constants merged (lossless, same agreement), 0.014 gives 1,355,750 B,
8.0x (8.009), at 0.9918 on the test lines and, confirming the bound on lines it was not chosen on,
``--max-drop 0,0.014 --rec-fresh 6 --rec-fresh-seed 100``: 0.9924 (min 0.9902) on six sets of seeds 100-105.
On an AVX2-only AMD EPYC the same command gives 1,362,695 B (7.97x) at 0.9910, and so does 0266571, the commit
that recorded 1,355,750 B: the width search's bound checks read onnxruntime's float outputs, which differ between
machines, and candidates near the bound fall the other way (``docs/architecture.md``, same seed, same bytes).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import builders, paths  # noqa: E402
from onnxcomp.api import compress  # noqa: E402
from onnxcomp.calibration.data import CalibrationData  # noqa: E402
from onnxcomp.ir.model import Model  # noqa: E402
from onnxcomp.recipe import load_recipe  # noqa: E402
from onnxcomp.runtime import InferenceSession, session  # noqa: E402

MODELS = {
    "lenet": "mnist_lenet300",
    "rescnn": "mnist_rescnn",
    "vgg": "mnist_vgg",
    "concat": "digits_concat",
    "ppocr-rec": None,
}
CHAINS = {
    "auto+comp": {"mode": "auto", "compensate": True},
    "auto": {"mode": "auto", "compensate": False},
    "uniform+comp": {"mode": "uniform", "compensate": True},
    "alloc+comp": {"mode": "auto", "compensate": True, "start": "allocation"},
    "share-only": None,  # the recipe without its pruning step
}
OPT_IN = ("alloc+comp",)  # chains run only when named in --chains


def recipe_with(prune: dict | None, max_drop: tuple[float, float] | None = None, share_bits: int | None = None
                ) -> dict:
    """The deep-compression recipe with its pruning step's config updated by ``prune`` (None: no pruning step), its
    bounds replaced by ``max_drop`` and its sharing width fixed at ``share_bits`` (None: the recipe's ``auto``)."""
    recipe = copy.deepcopy(load_recipe("deep-compression").to_dict())
    if prune is None:
        recipe = without(recipe, "prune_magnitude")
    for step in recipe["passes"]:
        if "prune_magnitude" in step:
            step["prune_magnitude"].update(prune)
            if max_drop:
                step["prune_magnitude"]["max_drop"] = max_drop[0]
        if "share_weights" in step and max_drop:
            step["share_weights"]["max_drop"] = max_drop[1]
        if "share_weights" in step and share_bits:
            step["share_weights"]["bits"] = share_bits
    return recipe


def accuracy(model, data: CalibrationData) -> float:
    sess = session(model) if not isinstance(model, InferenceSession) else model
    name = sess.get_inputs()[0].name
    correct = total = 0
    for feed, labels in zip(data.feeds, data.labels):
        out = sess.run(None, {name: feed[name]})[0]
        correct += int((out.argmax(-1) == labels).sum())
        total += labels.size
    return correct / total


def timestep_agreement(reference, candidate, xs: list[np.ndarray]) -> list[float]:
    """Per-timestep argmax agreement of ``candidate`` with ``reference`` on each batch of lines in ``xs`` (each
    model loaded once)."""
    ref, cand = session(reference), session(candidate)
    return [float((ref.run(None, {"x": x})[0].argmax(-1) == cand.run(None, {"x": x})[0].argmax(-1)).mean())
            for x in xs]


def run_model(key: str, tmp: Path, seed: int, wanted: list[str],
              max_drop: tuple[float, float] | None = None, small_calib: bool = False,
              share_bits: int | None = None, rec_fresh: int = 0, rec_fresh_seed: int = 3) -> list[dict]:
    rows = []
    if key == "ppocr-rec":
        from models import ppocr

        source = ppocr.model_paths()["rec"]
        calib = ppocr.calibration("rec", 96, seed=1)
        test_x = ppocr.calibration("rec", 64, seed=2)["x"]
        # lines that no bound was ever chosen on (seeds rec_fresh_seed, rec_fresh_seed + 1, ...; 64 lines each)
        fresh_x = [ppocr.calibration("rec", 64, seed=rec_fresh_seed + i)["x"] for i in range(rec_fresh)]
    else:
        source = paths.model_path(MODELS[key])
        calib_name, test_name = paths.TRAINED[MODELS[key]]
        calib = str(paths.data_path(calib_name if small_calib else paths.TRAIN_CALIB[MODELS[key]]))
        test = CalibrationData.from_source(str(paths.data_path(test_name)), Model.load(source),
                                           batch_size=250)
        base = accuracy(str(source), test)
    original = Path(source).stat().st_size
    chains = dict(CHAINS)
    chosen: dict[str, float] = {}

    def quality(path: Path) -> tuple[str, float]:
        """(text, change): agreement on rec's test (and fresh) lines, else test accuracy and its change."""
        if key == "ppocr-rec":
            test_agree, *fresh = timestep_agreement(str(source), str(path), [test_x, *fresh_x])
            text = f"agree {test_agree:.4f}"
            if fresh:
                text += f", fresh lines {np.mean(fresh):.4f} (min {min(fresh):.4f} over {len(fresh)} x 64)"
            return text, test_agree
        acc = accuracy(InferenceSession(str(path)), test)
        return f"{base * 100:.2f} -> {acc * 100:.2f} ({(acc - base) * 100:+.2f})", (acc - base) * 100

    for chain in list(chains) + ["same-sparsity-no-comp"]:
        if chain not in wanted:
            continue
        prune = (chains[chain] if chain in chains
                 else {"mode": "layer", "layer_sparsity": chosen, "compensate": False})
        recipe = recipe_with(prune, max_drop, share_bits)
        out = tmp / f"{key}-{chain}.onnx"
        start = time.perf_counter()
        row = {"model": key, "chain": chain, "original": original, "seed": seed}
        if prune is None:
            compress(str(source), recipe=recipe, calibration=calib, output=out, seed=seed)
        else:
            # In two runs, so that the pruned model can also be packed alone (no sharing): the pruning step's own
            # stored size. Sharing is checked against its input model, so the chain's bytes are those of one run.
            head, tail = split_after_pruning(recipe)
            pruned, alone = tmp / f"{key}-{chain}-pruned.onnx", tmp / f"{key}-{chain}-pruned-packed.onnx"
            result = compress(str(source), recipe=head, calibration=calib, output=pruned, seed=seed)
            compress(str(pruned), recipe=without(tail, "share_weights"), calibration=calib, output=alone,
                     seed=seed)
            row["pruned"] = alone.stat().st_size
            row["pruned quality"] = quality(alone)[0]
            step = next(p for p in result.report.passes if p.name == "prune_magnitude")
            row["pruning"] = step.summary.split(";")[0]
            if chain == "auto+comp":
                chosen = {r["weight"]: r["sparsity"] for r in step.records}
            compress(str(pruned), recipe=tail, calibration=calib, output=out, seed=seed)
        row["seconds"] = time.perf_counter() - start
        row["packed"] = out.stat().st_size
        row["quality"], row["change"] = quality(out)
        rows.append(row)
        print(" | ".join(format_row(row)), flush=True)
    return rows


HEADER = ["model", "chain", "seed", "original B", "packed B", "ratio", "test accuracy / agreement",
          "pruned alone B (test)", "pruning", "s"]


def format_row(row: dict) -> list[str]:
    pruned = f"{row['pruned']:,} ({row['pruned quality']})" if "pruned" in row else "-"
    return [row["model"], row["chain"], str(row["seed"]), f"{row['original']:,}", f"{row['packed']:,}",
            f"{row['original'] / row['packed']:.2f}x", row["quality"], pruned, row.get("pruning", "no pruning"),
            f"{row['seconds']:.0f}"]


def medians(rows: list[dict]) -> list[list[str]]:
    """Per model and chain, the medians over seeds of packed bytes, ratio, accuracy change and pruned-alone bytes;
    and auto+comp's ratio to uniform+comp (each seed's pair, then the median)."""
    out = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["chain"]), []).append(r)
    for (model, chain), rs in groups.items():
        packed = float(np.median([r["packed"] for r in rs]))
        line = [model, chain, str(len(rs)), f"{packed:,.0f}", f"{rs[0]['original'] / packed:.2f}x",
                f"{np.median([r['change'] for r in rs]):+.2f}",
                f"{np.median([r['pruned'] for r in rs]):,.0f}" if "pruned" in rs[0] else "-", "-", "-"]
        uniform = {r["seed"]: r for r in groups.get((model, "uniform+comp"), [])}
        pairs = [(uniform[r["seed"]], r) for r in rs if r["seed"] in uniform]
        if chain == "auto+comp" and pairs:
            line[-2] = f"{np.median([u['packed'] / a['packed'] for u, a in pairs]):.2f}x"
            line[-1] = f"{np.median([u['pruned'] / a['pruned'] for u, a in pairs]):.2f}x"
        out.append(line)
    return out


def split_after_pruning(recipe: dict) -> tuple[dict, dict]:
    """The recipe cut after its pruning step: (cleanup and pruning, the rest), each with the recipe's holdout."""
    cut = next(i for i, s in enumerate(recipe["passes"]) if isinstance(s, dict) and "prune_magnitude" in s) + 1
    return ({**recipe, "passes": recipe["passes"][:cut]}, {**recipe, "passes": recipe["passes"][cut:]})


def without(recipe: dict, name: str) -> dict:
    return {**recipe, "passes": [s for s in recipe["passes"] if s != name and not (isinstance(s, dict) and name in s)]}


def resnet_speed(tmp: Path, seed: int) -> list[list[str]]:
    model = builders.resnet50()
    src = tmp / "resnet50.onnx"
    src.write_bytes(model.SerializeToString())
    recipe = {"name": "fixed", "passes": [
        "fold_constants", "eliminate_identity", "fold_batchnorm", "eliminate_dead",
        {"prune_magnitude": {"mode": "layer", "sparsity": 0.8, "compensate": False}},
        {"share_weights": {"bits": 5, "refine": False}},
        {"pack_weights": {"format": "packed", "huffman": True}},
    ]}
    digests, times = [], []
    for run in range(2):
        out = tmp / f"resnet50-{run}.onnx"
        start = time.perf_counter()
        compress(str(src), recipe=recipe, output=out, seed=seed)
        times.append(time.perf_counter() - start)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    loads = []
    for _ in range(3):
        start = time.perf_counter()
        InferenceSession(str(tmp / "resnet50-0.onnx"))
        loads.append(time.perf_counter() - start)
    size_in, size_out = src.stat().st_size, (tmp / "resnet50-0.onnx").stat().st_size
    return [
        ["compress (fixed sparsity 0.8 + 5-bit sharing + Huffman)", f"{min(times):.1f} s", "<= 60 s"],
        ["load packed file (onnxcomp.runtime.InferenceSession)", f"{float(np.median(loads)):.2f} s", "<= 2 s"],
        ["size", f"{size_in:,} -> {size_out:,} B ({size_in / size_out:.1f}x)", "-"],
        ["same seed, same bytes", "yes" if digests[0] == digests[1] else "NO", "yes"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--chains", default=",".join([c for c in CHAINS if c not in OPT_IN]
                                                     + ["same-sparsity-no-comp"]),
                        help="comma-separated subset of the chains")
    parser.add_argument("--resnet-only", action="store_true")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--seed", default="0", help="seed, or comma-separated seeds: each chain is run at every seed "
                        "and a table of medians follows")
    parser.add_argument("--small-calib", action="store_true",
                        help="calibrate on the small held-out calibration files (mnist_calib: 500, digits_calib: 200) "
                             "instead of the larger training-split ones (mnist_train2k: 2000, digits_train: 1200)")
    parser.add_argument("--max-drop", help="PRUNE,SHARE: the pruning and sharing steps' bounds (default: the recipe's)")
    parser.add_argument("--share-bits", type=int, help="share every layer at this width instead of bits: auto")
    parser.add_argument("--rec-fresh", type=int, default=0, metavar="K",
                        help="PP-OCRv4 rec: also score agreement on K fresh sets of 64 rendered lines")
    parser.add_argument("--rec-fresh-seed", type=int, default=3, metavar="S",
                        help="the seed of the first fresh set (the others follow: S+1, ...)")
    args = parser.parse_args()
    max_drop = tuple(float(x) for x in args.max_drop.split(",")) if args.max_drop else None
    if max_drop is not None and len(max_drop) != 2:
        parser.error("--max-drop takes two numbers: PRUNE,SHARE")
    seeds = [int(x) for x in args.seed.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(" | ".join(HEADER))
        rows = []
        for key in [] if args.resnet_only else args.models.split(","):
            for seed in seeds:
                rows += run_model(key, tmp, seed, args.chains.split(","), max_drop, args.small_calib,
                                  args.share_bits, args.rec_fresh, args.rec_fresh_seed)
        if len(seeds) > 1 and rows:
            print()
            print(" | ".join(["model", "chain", "seeds", "median packed B", "ratio", "median test change (points)",
                              "median pruned alone B", "auto / uniform packed", "auto / uniform pruned alone"]))
            for line in medians(rows):
                print(" | ".join(line))
        if not args.skip_resnet:
            print()
            print("ResNet-50 builder (25.6M weights) | measured | target")
            for row in resnet_speed(tmp, seeds[0]):
                print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
