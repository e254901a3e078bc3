"""Filter pruning side by side: accuracy, MACs, parameters and onnxruntime latency of ``prune_filters``.

Four tables, every figure from this run:

1. Bundled trained models (MNIST ResCNN / VGG / LeNet-300, digits Concat CNN) pruned to 50% fewer MACs
   (``target: flops``, ``flops: 0.5``): criterion ``activation`` (recipe ``slim``'s) without repair, with
   least-squares repair, and with repair and ``align: independent`` (only where the analysis finds residual
   Adds to align, i.e. the ResCNN; on the others it is the strict row again); on the ResCNN also every other
   criterion (``l1``, ``l2``, ``fpgm``, ``bn``) with repair; on the CNNs also with repair and ``round_to`` 4
   and 8 (kept channel
   counts a multiple of 8: onnxruntime's blocked NCHWc convolutions want them; other counts fall back to slower
   kernels; 8 is recipe ``slim``).
   The pass runs on the model as loaded (the ResCNN keeps its BatchNorms, which
   the ``bn`` criterion reads); repair and the activation criterion see ``*_calib.npz`` (batch 32). Accuracy is
   on ``*_test.npz``, never shown to the pass. Parameters exclude BN running statistics.
2. Architecture builders (``models/builders.py``, random weights, symbolic batch) pruned to 50% fewer MACs,
   ``l1``, no repair (no real data), kept channel counts rounded up to a multiple of 8 (``round_to: 8``, the
   multiple CPU kernels like); ResNet-18 also with ``round_to: 1``.
3. Index bookkeeping at full size: every prunable group of each builder loses half its channels (``target:
   ratio``, ``scope: layer``, no repair); the pruned graph's outputs are compared with the original graph in
   which the same channels are zeroed in every consumer (the ``in`` slots of the analysis). The removed atoms
   are the pass's own choice, replicated with its planner on a second analysis of the original (the analysis
   is deterministic, so atoms are numbered alike). Max relative error = ``max |a - b| / max |a|`` over outputs.
4. PP-OCRv4 Paddle exports from the ``rapidocr-onnxruntime`` wheel (``models.ppocr``: det, cls, rec; keys
   ``ppocr-det``, ``ppocr-cls``, ``ppocr-rec``) after the lossless cleanup (fold_constants, eliminate_identity,
   eliminate_dead; BatchNorms kept for the pass), pruned with recipe ``slim``'s pass settings (``activation``,
   ``align: strict``, ``round_to: 8``, least-squares repair, ``flops: 0.5``), the same without repair, with
   ``fpgm`` instead, and with repair at ``flops: 0.3``. Calibration (the pass's free input dims come from it
   too): ``ppocr.calibration`` seed 1, 32 pages 320x320 in batches of 4 (det) or 64 lines in batches of 8 (cls
   48x192, rec 48x320). Fidelity
   against the float (cleaned) model on held-out inputs the pass never sees (det: 16 pages from seed 10,000;
   cls/rec: 128 lines from seed 2), as in ``benchmarks/quantization.py``: det F1 of the probability map
   thresholded at 0.3 (rapidocr's DB ``thresh``) against the float map's; cls argmax agreement; rec
   per-timestep argmax agreement. MACs at batch 1 and the calibration input size. ``--quick``: 8 calibration
   inputs (batches of 4) and 8 held-out ones.

Latency (tables 1, 2 and 4): ``onnxcomp.measure.latency.benchmark``, all models of one row group interleaved in the
same rounds, medians, onnxruntime default threads (``--threads 0``: every core). Before timing, the original and
every pruned model go through the same lossless cleanup (fold_constants, eliminate_identity, fold_batchnorm,
eliminate_dead, as recipe ``cleanup``), so BatchNorm is folded on both sides. ``speedup`` = original median /
pruned median. Batch 64 (trained) and 8 (builders) keep both cores busy; PP-OCR is timed at batch 1 only (det on
the first held-out page, 1x3x320x320; cls 1x3x48x192; rec 1x3x48x320).

    python benchmarks/filter_pruning.py [--only rescnn,resnet18,ppocr-det,...] [--quick] [--rounds 30] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import builders, paths  # noqa: E402
from onnxcomp.analysis.channel_groups import analyze  # noqa: E402
from onnxcomp.analysis.channel_importance import importance  # noqa: E402
from onnxcomp.analysis.cost import tensor_shapes, total_macs  # noqa: E402
from onnxcomp.calibration.data import CalibrationData  # noqa: E402
from onnxcomp.ir.model import Model  # noqa: E402
from onnxcomp.measure.latency import benchmark  # noqa: E402
from onnxcomp.passes.base import PassContext  # noqa: E402
from onnxcomp.passes.eliminate_dead import EliminateDead  # noqa: E402
from onnxcomp.passes.eliminate_identity import EliminateIdentity  # noqa: E402
from onnxcomp.passes.fold_batchnorm import FoldBatchNorm  # noqa: E402
from onnxcomp.passes.fold_constants import FoldConstants  # noqa: E402
from onnxcomp.passes.prune_filters import FilterPruneConfig, PruneFilters, _Planner, zero_removal  # noqa: E402
from onnxcomp.runtime import session  # noqa: E402

TRAINED = {"rescnn": "mnist_rescnn", "vgg": "mnist_vgg", "concat": "digits_concat", "lenet": "mnist_lenet300"}
ALL_CRITERIA_ON = "rescnn"  # the bundled model with BatchNorms and residual Adds
CNNS = ("rescnn", "vgg", "concat")  # also timed with kept channels rounded to multiples of 8
TRAINED_BATCH = 64
# Builder sizes of tables 2 and 3 (full run); --quick uses builders.small_kwargs.
BUILDERS = {
    "resnet18": dict(size=224),
    "mobilenetv2": dict(size=224),
    "vgg16": dict(size=224, fc_dim=4096),
    "yolo_csp": dict(size=320),
    "shufflenetv2": dict(size=224),
    "csp_block": {},
    "densenet_block": {},
    "transformer_block": {},
}
BUILDER_BATCH = 8
ROUND_TO = 8
ROUND_TO_1_ALSO = ("resnet18",)
CHECK_TOLERANCE = 1e-5


@dataclass
class Row:
    model: str
    setting: str
    path: Path | None  # the pass's output (None: failed)
    timed: Path | None = None  # the cleaned copy that is timed
    macs: int = 0
    params: int = 0
    accuracy: float | None = None
    seconds: float | None = None
    note: str = ""
    ms: dict[int, float] | None = None  # batch -> median ms
    speedup: dict[int, float] | None = None  # batch -> original median / this median


# -- helpers ---------------------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def table(header: list[str]) -> None:
    print(" | ".join(header))
    print(" | ".join("---" for _ in header), flush=True)


def params(model: Model) -> int:
    return builders.count_parameters(model.to_proto(), bn_stats=False)


def cleaned(model: Model, path: Path) -> Path:
    """``model`` (a copy) through the lossless ``cleanup`` passes, saved at ``path``: what is timed."""
    m = model.copy()
    ctx = PassContext()
    for p in (FoldConstants(), EliminateIdentity(), FoldBatchNorm(), EliminateDead()):
        p.run(m, ctx)
    return m.save(path)


def prune(model: Model, cfg: FilterPruneConfig, ctx: PassContext) -> tuple[float, str]:
    """Run the pass in place; (seconds, the summary after 'MACs ...' is cut: channels and maps)."""
    start = time.perf_counter()
    result = PruneFilters(cfg).run(model, ctx)
    seconds = time.perf_counter() - start
    parts = [p.strip() for p in result.summary.split(";") if not p.strip().startswith("MACs")]
    return seconds, "; ".join(parts).replace("prunable channels removed", "channels removed")


def failed(model: str, setting: str, e: Exception) -> Row:
    traceback.print_exc(file=sys.stderr)
    first = str(e).splitlines()[0][:120] if str(e) else ""
    return Row(model, setting, None, note=f"FAILED: {type(e).__name__}: {first}")


def time_rows(rows: list[Row], feeds: dict[int, dict[str, np.ndarray]], rounds: int, threads: int) -> None:
    """Interleaved medians of every timed row (rows[0] is the original) at each batch of ``feeds``."""
    timed = [r for r in rows if r.timed is not None]
    for r in timed:
        r.ms, r.speedup = {}, {}
    for batch, feed in feeds.items():
        for r, b in zip(timed, benchmark([str(r.timed) for r in timed], feed, rounds=rounds, warmup=3,
                                         threads=threads)):
            r.ms[batch], r.speedup[batch] = b.median_ms, b.speedup


def change(before: int, after: int) -> str:
    return f"{before:,} -> {after:,} ({1 - after / before:.1%} fewer)"


def latency_cells(row: Row, batches: tuple[int, ...]) -> list[str]:
    out = []
    for b in batches:
        if row.ms is None:
            out += ["-", "-"]
        else:
            out += [f"{row.ms[b]:.3g}", f"{row.speedup[b]:.2f}x"]
    return out


# -- table 1: the bundled trained models -----------------------------------------------------------------------
TRAINED_HEADER = ["model", "setting", "MACs", "params", "test accuracy (drop, points)",
                  "ORT ms b1", "speedup b1", f"ORT ms b{TRAINED_BATCH}", f"speedup b{TRAINED_BATCH}", "pass s",
                  "notes"]


def accuracy(path: Path, test: dict[str, np.ndarray]) -> float:
    sess = session(str(path))
    x, labels = test["input"], test["labels"]
    out = np.concatenate([sess.run(None, {"input": x[i:i + 250]})[0] for i in range(0, len(x), 250)])
    return float((out.argmax(-1) == labels).mean())


def trained_settings(key: str, model: Model) -> list[tuple[str, FilterPruneConfig]]:
    base = dict(target="flops", flops=0.5)
    main = "activation"  # recipe slim's criterion
    out = [(f"{main}, strict, no repair", FilterPruneConfig(criterion=main, align="strict", repair=False, **base)),
           (f"{main}, strict, repair", FilterPruneConfig(criterion=main, align="strict", repair=True, **base))]
    if analyze(model.copy(), "independent").alignments:  # residual Adds whose shortcut can keep its channels
        out.append((f"{main}, independent, repair",
                    FilterPruneConfig(criterion=main, align="independent", repair=True, **base)))
    if key == ALL_CRITERIA_ON:
        out += [(f"{c}, strict, repair", FilterPruneConfig(criterion=c, align="strict", repair=True, **base))
                for c in ("l1", "l2", "fpgm", "bn")]
        out.append((f"{main}, independent, no repair",
                    FilterPruneConfig(criterion=main, align="independent", repair=False, **base)))
    if key in CNNS:
        for r in (4, ROUND_TO):
            out.append((f"{main}, strict, repair, round_to {r}" + (" (recipe slim)" if r == ROUND_TO else ""),
                        FilterPruneConfig(criterion=main, align="strict", repair=True, round_to=r, **base)))
    return out


def run_trained(key: str, tmp: Path, args: argparse.Namespace) -> list[Row]:
    name = TRAINED[key]
    source = paths.model_path(name)
    calib_name, test_name = paths.TRAINED[name]
    test = dict(np.load(paths.data_path(test_name)))
    original = Model.load(source)
    rows = [Row(key, "original", source, cleaned(original, tmp / f"{key}.timed.onnx"), total_macs(original),
                params(original), accuracy(source, test))]
    for setting, cfg in trained_settings(key, original):
        m = Model.load(source)
        calib = CalibrationData.from_source(str(paths.data_path(calib_name)), m, batch_size=32)
        stem = tmp / f"{key}.{setting.replace(', ', '_').replace(' ', '-')}"
        try:
            seconds, note = prune(m, cfg, PassContext(calibration=calib, seed=args.seed))
            out = m.save(stem.with_suffix(".onnx"))
            row = Row(key, setting, out, cleaned(m, Path(f"{stem}.timed.onnx")), total_macs(m), params(m),
                      accuracy(out, test), seconds, note)
        except Exception as e:  # a failure is a result: the row says so and the benchmark goes on
            row = failed(key, setting, e)
        rows.append(row)
        log(f"[{key}] {setting}: acc {row.accuracy if row.accuracy is not None else '-'} ({row.seconds or 0:.1f} s)")
    x = test["input"]
    time_rows(rows, {1: {"input": x[:1]}, TRAINED_BATCH: {"input": x[:TRAINED_BATCH]}}, args.trained_rounds,
              args.threads)
    return rows


def trained_cells(row: Row, base: Row) -> list[str]:
    if row.path is None:
        return [row.model, row.setting, "-", "-", "-", "-", "-", "-", "-", "-", row.note]
    if row is base:
        acc = f"{base.accuracy * 100:.2f}%"
        return [row.model, row.setting, f"{row.macs:,}", f"{row.params:,}", acc,
                *latency_cells(row, (1, TRAINED_BATCH)), "-", ""]
    acc = f"{base.accuracy * 100:.2f}% -> {row.accuracy * 100:.2f}% ({(base.accuracy - row.accuracy) * 100:+.2f})"
    return [row.model, row.setting, change(base.macs, row.macs), change(base.params, row.params), acc,
            *latency_cells(row, (1, TRAINED_BATCH)), f"{row.seconds:.1f}", row.note]


# -- table 2: architecture builders ----------------------------------------------------------------------------
BUILDER_HEADER = ["model", "setting", "MACs", "params", "ORT ms b1", "speedup b1", f"ORT ms b{BUILDER_BATCH}",
                  f"speedup b{BUILDER_BATCH}", "pass s", "notes"]


def builder_kwargs(name: str, quick: bool) -> dict:
    kwargs = builders.small_kwargs(name) if quick else dict(BUILDERS[name])
    return {**kwargs, "batch": None}


def describe(name: str, kwargs: dict) -> str:
    shown = {k: v for k, v in kwargs.items() if k != "batch"}
    return name + (f" ({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else " (defaults)")


def run_builder(name: str, tmp: Path, args: argparse.Namespace) -> list[Row]:
    kwargs = builder_kwargs(name, args.quick)
    proto = builders.build(name, **kwargs)
    label = describe(name, kwargs)
    original = Model.load(proto)
    rows = [Row(label, "original", None, cleaned(original, tmp / f"{name}.timed.onnx"), total_macs(original),
                params(original))]
    rows[0].path = rows[0].timed
    settings = [ROUND_TO] + ([1] if name in ROUND_TO_1_ALSO else [])
    for round_to in settings:
        setting = f"l1, flops 0.5, round_to {round_to}"
        m = Model.load(proto)
        cfg = FilterPruneConfig(criterion="l1", target="flops", flops=0.5, repair=False, round_to=round_to)
        try:
            seconds, note = prune(m, cfg, PassContext(seed=args.seed))
            timed = cleaned(m, tmp / f"{name}.r{round_to}.timed.onnx")
            row = Row(label, setting, timed, timed, total_macs(m), params(m), seconds=seconds, note=note)
        except Exception as e:
            row = failed(label, setting, e)
        rows.append(row)
        log(f"[{name}] {setting}: {row.note} ({row.seconds or 0:.1f} s)")
    feeds = {b: builders.default_feed(proto, seed=args.seed, batch=b) for b in (1, BUILDER_BATCH)}
    time_rows(rows, feeds, args.rounds, args.threads)
    return rows


def builder_cells(row: Row, base: Row) -> list[str]:
    if row.path is None:
        return [row.model, row.setting, "-", "-", "-", "-", "-", "-", "-", row.note]
    if row is base:
        return [row.model, row.setting, f"{row.macs:,}", f"{row.params:,}", *latency_cells(row, (1, BUILDER_BATCH)),
                "-", ""]
    return [row.model, row.setting, change(base.macs, row.macs), change(base.params, row.params),
            *latency_cells(row, (1, BUILDER_BATCH)), f"{row.seconds:.1f}", row.note]


# -- table 3: index bookkeeping against zeroed channels -----------------------------------------------------------
CHECK_HEADER = ["model", "prunable groups", "channels removed", "MACs", "params", "max rel error vs zeroed",
                "holds (<= 1e-5)", "pass s"]


def zeroed(model: Model, cfg: FilterPruneConfig) -> tuple[Model, int, int]:
    """``model`` with the channels the pass would remove zeroed (``prune_filters.zero_removal``); (that model,
    prunable groups, atoms removed)."""
    shapes = tensor_shapes(model)
    cg = analyze(model, cfg.align, shapes, cfg.exclude)
    removed = _Planner(cg, importance(cg, cfg.criterion), cfg).removed(cfg.ratio)
    zero_removal(model, cg, removed)
    return model, sum(1 for g in cg.groups if g.locked is None), len(removed)


def outputs(model: Model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model.to_proto()).run(None, feed)


def run_check(name: str, args: argparse.Namespace) -> list[str]:
    kwargs = builder_kwargs(name, args.quick)
    proto = builders.build(name, **kwargs)
    label = describe(name, kwargs)
    cfg = FilterPruneConfig(criterion="l1", target="ratio", ratio=0.5, scope="layer", repair=False)
    try:
        reference, groups, n_removed = zeroed(Model.load(proto), cfg)
        pruned = Model.load(proto)
        seconds, _ = prune(pruned, cfg, PassContext(seed=args.seed))
        feed = builders.default_feed(proto, seed=args.seed, batch=1)
        err = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-30))
                  for a, b in zip(outputs(reference, feed), outputs(pruned, feed)))
        original = Model.load(proto)
        row = [label, str(groups), f"{n_removed:,}", change(total_macs(original), total_macs(pruned)),
               change(params(original), params(pruned)), f"{err:.2e}", "yes" if err <= CHECK_TOLERANCE else "NO",
               f"{seconds:.1f}"]
    except Exception as e:
        failed(label, "check", e)
        row = [label, "-", "-", "-", "-", f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}", "NO", "-"]
    log(f"[{name}] check: {row[5]}")
    return row


# -- table 4: PP-OCRv4 Paddle exports ------------------------------------------------------------------------------
PPOCR = {"ppocr-det": "det", "ppocr-cls": "cls", "ppocr-rec": "rec"}
PPOCR_CALIB = {"det": (32, 4), "cls": (64, 8), "rec": (64, 8)}  # (calibration images, batch); --quick: 8 of each
PPOCR_TEST = {"det": 16, "cls": 128, "rec": 128}  # held-out inputs; --quick: 8
PPOCR_TIMED = {"cls": (1, 3, 48, 192), "rec": (1, 3, 48, 320)}  # det: the first test page (320x320)
DET_THRESH = 0.3  # rapidocr's DB ``thresh``, as in benchmarks/quantization.py
PPOCR_HEADER = ["model", "setting", "MACs", "params", "fidelity vs float (held-out)", "ORT ms b1", "speedup b1",
                "pass s", "notes"]


def ppocr_settings() -> list[tuple[str, FilterPruneConfig]]:
    base = dict(target="flops", align="strict", round_to=ROUND_TO)
    return [("activation, strict, repair, round_to 8, flops 0.5 (recipe slim)",
             FilterPruneConfig(criterion="activation", flops=0.5, repair=True, **base)),
            ("activation, strict, no repair, round_to 8, flops 0.5",
             FilterPruneConfig(criterion="activation", flops=0.5, repair=False, **base)),
            ("fpgm, strict, repair, round_to 8, flops 0.5",
             FilterPruneConfig(criterion="fpgm", flops=0.5, repair=True, **base)),
            ("activation, strict, repair, round_to 8, flops 0.3",
             FilterPruneConfig(criterion="activation", flops=0.3, repair=True, **base))]


def ppocr_cleanup(model: Model) -> Model:
    """The lossless cleanup the pass sees (BatchNorms kept; ``cleaned`` folds them for timing, on both sides)."""
    ctx = PassContext()
    for p in (FoldConstants(), EliminateIdentity(), EliminateDead()):
        p.run(model, ctx)
    return model


def ppocr_outputs(path: Path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    sess = session(str(path))
    return np.concatenate([sess.run(None, {"x": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def fidelity(kind: str, out: np.ndarray, reference: np.ndarray) -> tuple[float, str]:
    """As ``score`` in benchmarks/quantization.py: det F1 of the 0.3-thresholded map against the float model's;
    cls argmax agreement; rec per-timestep argmax agreement."""
    if kind == "det":
        a, b = out > DET_THRESH, reference > DET_THRESH
        value = 2 * float(np.sum(a & b)) / max(1, int(a.sum()) + int(b.sum()))
        return value, f"F1 {value:.4f}"
    value = float((out.argmax(-1) == reference.argmax(-1)).mean())
    return value, f"agree {value * 100:.2f}%"


def run_ppocr(key: str, tmp: Path, args: argparse.Namespace) -> list[Row]:
    from models import ppocr

    kind = PPOCR[key]
    n, batch = (8, 4) if args.quick else PPOCR_CALIB[kind]
    n_test = 8 if args.quick else PPOCR_TEST[kind]
    calib_x = ppocr.calibration(kind, n, seed=1)["x"]
    test_x = ppocr.calibration(kind, n_test, seed=10_000 if kind == "det" else 2)["x"]
    shapes = {"x": (1, *calib_x.shape[1:])}
    source = tmp / f"{key}.cleanup.onnx"
    original = ppocr_cleanup(Model.load(str(ppocr.model_paths()[kind])))
    original.save(source)
    reference = ppocr_outputs(source, test_x)
    label = f"{key} (x {'x'.join(map(str, calib_x.shape[1:]))})"
    rows = [Row(label, "original", source, cleaned(original, tmp / f"{key}.timed.onnx"),
                total_macs(original, shapes=shapes), params(original), 1.0)]
    for setting, cfg in ppocr_settings():
        m = Model.load(str(source))
        calib = CalibrationData.from_source({"x": calib_x}, m, batch_size=batch)
        stem = tmp / f"{key}.{setting.split(' (')[0].replace(', ', '_').replace(' ', '-')}"
        try:
            seconds, note = prune(m, cfg, PassContext(calibration=calib, seed=args.seed))
            out = m.save(stem.with_suffix(".onnx"))
            value, text = fidelity(kind, ppocr_outputs(out, test_x), reference)
            row = Row(label, setting, out, cleaned(m, Path(f"{stem}.timed.onnx")), total_macs(m, shapes=shapes),
                      params(m), value, seconds, f"{text}; {note}")
        except Exception as e:  # a failure is a result: the row says so and the benchmark goes on
            row = failed(label, setting, e)
        rows.append(row)
        log(f"[{key}] {setting}: {row.note} ({row.seconds or 0:.1f} s)")
    timed_x = test_x[:1]  # det: the first held-out page; cls/rec inputs are padded to the fixed rapidocr shape
    if kind in PPOCR_TIMED and timed_x.shape != PPOCR_TIMED[kind]:
        raise RuntimeError(f"{key}: held-out input {timed_x.shape}, expected {PPOCR_TIMED[kind]}")
    time_rows(rows, {1: {"x": timed_x}}, args.rounds, args.threads)
    return rows


def ppocr_cells(row: Row, base: Row) -> list[str]:
    if row.path is None:
        return [row.model, row.setting, "-", "-", "-", "-", "-", "-", row.note]
    if row is base:
        return [row.model, row.setting, f"{row.macs:,}", f"{row.params:,}", "reference",
                *latency_cells(row, (1,)), "-", ""]
    text, _, note = row.note.partition("; ")
    return [row.model, row.setting, change(base.macs, row.macs), change(base.params, row.params), text,
            *latency_cells(row, (1,)), f"{row.seconds:.1f}", note]


# -- main ------------------------------------------------------------------------------------------------------
def print_rows(rows: list[Row], cells) -> None:
    """One table's rows, the first (the original model) as the baseline of the others."""
    for row in rows:
        print(" | ".join(cells(row, rows[0])), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None,
                        help=f"comma-separated models: {', '.join(TRAINED)}, {', '.join(BUILDERS)}, "
                             f"{', '.join(PPOCR)}")
    parser.add_argument("--quick", action="store_true",
                        help="small builder sizes (builders.small_kwargs), 8 PP-OCR calibration and held-out "
                             "inputs, fewer rounds: a smoke test")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: every core)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="latency rounds for builders and PP-OCR (default 30, quick 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.rounds = args.rounds or (5 if args.quick else 30)
    args.trained_rounds = 4 * args.rounds  # the MNIST models run in well under a millisecond
    wanted = list(TRAINED) + list(BUILDERS) + list(PPOCR)
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(wanted))
        if unknown:
            parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(wanted)}")
        wanted = args.only.split(",")
    start = time.perf_counter()
    print(f"onnxruntime {ort.__version__}; {os.cpu_count()} CPUs; latency: onnxcomp.measure.latency, interleaved "
          f"rounds ({args.trained_rounds} trained, {args.rounds} builders and PP-OCR), medians, "
          f"{args.threads or 'default'} intra-op threads; BN folded (cleanup passes) in original and pruned "
          "models alike"
          + ("; QUICK: small builders, 8 PP-OCR inputs" if args.quick else ""))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trained = [k for k in TRAINED if k in wanted]
        if trained:
            print("\n## 1. Bundled trained models at 50% fewer MACs (target flops 0.5)\n")
            table(TRAINED_HEADER)
            for key in trained:
                print_rows(run_trained(key, tmp, args), trained_cells)
            if any(k != ALL_CRITERIA_ON for k in trained):
                print("\n`independent` is left out where the analysis finds no residual Add to align (VGG, Concat, "
                      "LeNet-300): there it is the strict setting.")
        built = [k for k in BUILDERS if k in wanted]
        if built:
            print("\n## 2. Architecture builders at 50% fewer MACs (l1, no repair, random weights)\n")
            table(BUILDER_HEADER)
            for name in built:
                print_rows(run_builder(name, tmp, args), builder_cells)
            print("\n## 3. Index bookkeeping: half of every prunable group removed vs the same channels zeroed\n")
            table(CHECK_HEADER)
            for name in built:
                print(" | ".join(run_check(name, args)), flush=True)
        ocr = [k for k in PPOCR if k in wanted]
        if ocr:
            print("\n## 4. PP-OCRv4 (Paddle exports) at 50% fewer MACs (activation, strict, round_to 8; also fpgm, "
                  "flops 0.3)\n")
            table(PPOCR_HEADER)
            for key in ocr:
                print_rows(run_ppocr(key, tmp, args), ppocr_cells)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
