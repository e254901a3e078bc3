"""Quantization side by side: onnxcomp's int8 / int8-weights / int4-weights / mixed recipes vs onnxruntime's quantizer.

For each model, every row starts from the SAME prepared float model and the SAME calibration feeds:

- prepared model: onnxcomp's ``cleanup`` recipe (Paddle exports keep weights in Constant nodes, which
  ``quantize_dynamic`` refuses); PP-OCRv4 det/rec/cls are then converted to ai.onnx opset 21 with
  ``onnx.version_converter`` (outputs within 1e-5 of the cleaned model's: checked at run time). Without it neither tool
  gives per-channel weights on them: onnxcomp's ``quantize_weights`` will not raise opset 11/12 to 13 (Softmax,
  Squeeze, Resize change meaning or signature) and skips every per-channel weight, and onnxruntime's
  ``quantize_static(per_channel=True)`` writes per-axis ``DequantizeLinear`` under opset 11, which onnxruntime
  itself then refuses to load. onnxcomp's recipes run their own cleanup again (a no-op here).
- calibration feeds: the bundled ``*_calib.npz`` (PP-OCR: ``models.ppocr.calibration`` lines/pages rendered with
  seed 1, held-out ones with seed 2 / pages from 10,000; MobileNetV2 builder: standard-normal images, the
  distribution its BatchNorm statistics were computed on, seeds 1 and 2), batched and split exactly as
  ``onnxcomp.api.compress`` does; onnxruntime's ``CalibrationDataReader`` gets the part onnxcomp's passes see,
  the held-back quarter is left out of both.

Rows:
- ``float``: the prepared model;
- ``ort static minmax`` / ``ort static entropy``: ``quantize_static`` QDQ, ``per_channel=True``, uint8 activations,
  int8 weights (U8S8: the scheme onnxcomp's ``int8`` writes; quantize_static's default is int8 activations).
  onnxruntime 1.32's entropy calibrator runs with 128 histogram bins and 128 quantized bins, which
  ``quantize_static`` cannot change, so its threshold search has a single candidate, the full range: its
  entropy rows come out identical to its minmax rows;
- ``ort dynamic``: ``quantize_dynamic``, ``per_channel=True``, int8 weights (no calibration);
- ``int8 <method>``: recipe ``int8`` (W8A8 static QDQ) with each activation-range method; the recipe's own method
  is marked ``*``;
- ``int8-avx2 (7-bit weights)``: recipe ``int8-avx2``, the one for x86 CPUs without VNNI, where onnxruntime's fused
  kernels saturate with 8-bit weights (the header line says which kind of CPU ran the table);
- ``int8-weights``: weight-only 8 bits; ``int4-weights gptq`` (the recipe) and ``int4-weights rtn`` (rounded to
  nearest, same grids); stored as int4 (opset 21), stock onnxruntime;
- ``mixed avg4``: recipe ``mixed`` (a width per layer in 2..8 bits, GPTQ, mean 4 bits per weight, bit-packed /
  Huffman-coded codes) and ``uniform 4 (mixed chain)``: the same chain with every layer at 4 bits, for the
  same-bytes comparison. On the opset-21 PP-OCR models codes of up to 4 bits are stored as int4 (2- and 3-bit
  ones too: ``pack_weights`` leaves int4 codes as they are) and only the 5-8 bit layers are packed.

Columns: file bytes (and the ratio to the float file); quality on held-out data never given to either tool:
test accuracy for the trained models (``*_test.npz``); PP-OCR rec: per-timestep argmax agreement with the float
model (and the share of lines whose greedy CTC string equals the float model's); cls: agreement with float (and
accuracy against the rendered rotation labels); det: F1 of the probability map thresholded at 0.3 (rapidocr's DB
``thresh``) against the float map's, and its mean absolute error; MobileNetV2 builder (random weights, 1000 close
logits): logit cosine with float (and top-1 agreement); SQNR of the held-out outputs against the float model's;
onnxruntime latency at batch 1 (``onnxcomp.measure.latency``: all rows of a model interleaved, medians,
``--threads`` intra-op threads, default 1) and its ratio to float; the kernels onnxruntime runs after its graph
optimizer (integer / float weighted kernels, MatMulNBits called out); seconds spent quantizing.
A last table checks the targets of issue 4.

    python benchmarks/quantization.py [--models rescnn,lenet,vgg,concat,ppocr-det,ppocr-rec,ppocr-cls,mobilenetv2]
                                      [--skip-latency] [--quick] [--threads 1] [--rounds 30]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import builders, paths  # noqa: E402
from onnxcomp.api import compress  # noqa: E402
from onnxcomp.calibration.data import CalibrationData  # noqa: E402
from onnxcomp.ir.model import Model  # noqa: E402
from onnxcomp.measure.latency import benchmark  # noqa: E402
from onnxcomp.recipe import load_recipe  # noqa: E402
from onnxcomp.runtime import int8_pairs_saturate, session, session_options, unpack  # noqa: E402

MODELS = ("rescnn", "lenet", "vgg", "concat", "ppocr-det", "ppocr-rec", "ppocr-cls", "mobilenetv2")
TRAINED = {"rescnn": "mnist_rescnn", "lenet": "mnist_lenet300", "vgg": "mnist_vgg", "concat": "digits_concat"}
CNNS = ("rescnn", "vgg", "concat")  # the bundled CNNs of the W4 target (LeNet-300 is an MLP)
METHODS = ("minmax", "entropy", "mse", "percentile", "auto")
QUICK_METHODS = ("mse", "entropy")
DET_THRESH = 0.3  # rapidocr DB postprocess thresh
# Kernels of onnxruntime's optimized graph: integer ones, and float ones that carry layer weights.
INT_KERNELS = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits", "QAttention")
FLOAT_KERNELS = ("Conv", "FusedConv", "NchwcConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


@dataclass
class Case:
    """One model: its prepared float file, its calibration feeds and its held-out data."""

    key: str
    float_path: Path
    calib: CalibrationData  # batched as compress batches it; the recipes split off the held-back quarter
    test: dict[str, np.ndarray]  # held-out inputs ('labels' too where there are labels)
    input_name: str
    characters: list[str] | None = None


@dataclass
class Row:
    model: str
    method: str
    path: Path | None
    seconds: float | None = None
    note: str = ""
    score: float = float("nan")  # the figure the targets compare (accuracy, agreement or F1)
    sqnr: float | None = None  # dB of the held-out outputs against the float model's
    quality: str = ""
    latency_ms: float | None = None
    latency_ratio: float | None = None
    kernels: str = ""


# -- models and data -------------------------------------------------------------------------------------------
def prepare(key: str, tmp: Path, quick: bool) -> Case:
    out = tmp / f"{key}.float.onnx"
    if key in TRAINED:
        name = TRAINED[key]
        calib_name, test_name = paths.TRAINED[name]
        compress(str(paths.model_path(name)), recipe="cleanup", output=out)
        calib_npz = dict(np.load(paths.data_path(calib_name)))
        calib_npz.pop("labels", None)
        if quick:
            calib_npz = {k: v[:160] for k, v in calib_npz.items()}
        test = dict(np.load(paths.data_path(test_name)))
        calib = CalibrationData.from_source(calib_npz, Model.load(out), batch_size=16)
        return Case(key, out, calib, test, "input")
    if key == "mobilenetv2":
        model = builders.mobilenetv2(batch=None, size=224, num_classes=1000, seed=0)
        src = tmp / "mobilenetv2.onnx"
        src.write_bytes(model.SerializeToString())
        compress(str(src), recipe="cleanup", output=out)
        n_calib, n_test = (16, 16) if quick else (48, 128)
        x = np.random.default_rng(1).standard_normal((n_calib, 3, 224, 224)).astype(np.float32)
        test = {"input": np.random.default_rng(2).standard_normal((n_test, 3, 224, 224)).astype(np.float32)}
        return Case(key, out, CalibrationData.from_source({"input": x}, Model.load(out), batch_size=8), test, "input")
    from models import ppocr

    kind = key.split("-")[1]
    source = ppocr.model_paths()[kind]
    cleaned = tmp / f"{key}.cleaned.onnx"
    compress(str(source), recipe="cleanup", output=cleaned)
    converted = onnx.version_converter.convert_version(onnx.load(str(cleaned)), 21)
    onnx.checker.check_model(converted)
    onnx.save(converted, str(out))
    sizes = {"det": (48, 24, 4), "rec": (128, 128, 8), "cls": (128, 256, 8)}[kind]
    if quick:
        sizes = (16, 16, 4)
    n_calib, n_test, batch = sizes
    calib_x = ppocr.calibration(kind, n_calib, seed=1)["x"]
    if kind == "det":
        test = {"x": ppocr.calibration(kind, n_test, seed=10_000)["x"]}  # pages seed+i: disjoint from calibration
    else:
        test = ppocr.calibration(kind, n_test, seed=2)
    probe = test["x"][:2]
    a = session(str(cleaned)).run(None, {"x": probe})[0]
    b = session(str(out)).run(None, {"x": probe})[0]
    if not np.allclose(a, b, rtol=0, atol=1e-5):
        raise RuntimeError(f"{key}: opset-21 conversion changed the outputs (max |diff| {np.abs(a - b).max():.3g})")
    chars = ppocr.characters_from_model(source) if kind == "rec" else None
    calib = CalibrationData.from_source({"x": calib_x}, Model.load(out), batch_size=batch)
    return Case(key, out, calib, test, "x", chars)


def held_in(case: Case, holdout: float) -> CalibrationData:
    """The feeds onnxcomp's passes see (``compress`` keeps the last ``holdout`` share back)."""
    return case.calib.split(holdout)[0]


# -- scoring ---------------------------------------------------------------------------------------------------
def outputs(path: Path, case: Case, batch: int = 16) -> np.ndarray:
    sess = session(str(path))
    x = case.test[case.input_name]
    return np.concatenate([sess.run(None, {case.input_name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def score(case: Case, path: Path, reference: np.ndarray | None) -> tuple[float, str, np.ndarray]:
    """(target figure, table text, outputs) of ``path`` on the held-out data; ``reference``: the float outputs."""
    out = outputs(path, case)
    key = case.key
    if key in TRAINED:
        acc = float((out.argmax(-1) == case.test["labels"]).mean())
        return acc, f"acc {acc * 100:.2f}%", out
    if reference is None:
        reference = out
    if key == "ppocr-rec":
        from models import ppocr

        agree = float((out.argmax(-1) == reference.argmax(-1)).mean())
        same = np.mean([a == b for a, b in zip(ppocr.ctc_decode(out, case.characters),
                                               ppocr.ctc_decode(reference, case.characters))])
        return agree, f"agree {agree * 100:.2f}% (lines {same * 100:.1f}%)", out
    if key == "ppocr-cls":
        agree = float((out.argmax(-1) == reference.argmax(-1)).mean())
        acc = float((out.argmax(-1) == case.test["labels"]).mean())
        return agree, f"agree {agree * 100:.2f}% (acc {acc * 100:.1f}%)", out
    if key == "ppocr-det":
        a, b = out > DET_THRESH, reference > DET_THRESH
        f1 = 2 * float(np.sum(a & b)) / max(1, int(a.sum()) + int(b.sum()))
        mae = float(np.abs(out - reference).mean())
        return f1, f"F1 {f1:.4f} (MAE {mae:.4f})", out
    # Random weights and 1000 close logits: top-1 flips on small noise, so the target figure is the cosine.
    agree = float((out.argmax(-1) == reference.argmax(-1)).mean())
    o, r = out.reshape(len(out), -1).astype(np.float64), reference.reshape(len(out), -1).astype(np.float64)
    cos = float(np.mean(np.sum(o * r, 1) / (np.linalg.norm(o, axis=1) * np.linalg.norm(r, axis=1))))
    return cos, f"cos {cos:.4f} (top1 {agree * 100:.1f}%)", out


def sqnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum ref^2 / sum (cand - ref)^2)``."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((candidate.astype(np.float64) - ref) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref**2)) / noise)


def kernels(path: Path, tmp: Path) -> str:
    """Integer and float weighted kernels in onnxruntime's optimized graph (default optimization level)."""
    proto = unpack(str(path))  # packed weights: the plain-ONNX equivalent onnxruntime runs
    so = session_options()
    so.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node)
    integer = sum(c for op, c in ops.items() if op.startswith(INT_KERNELS))
    floating = sum(c for op, c in ops.items() if op in FLOAT_KERNELS)
    text = f"{integer} int / {floating} float"
    if ops.get("MatMulNBits"):
        text += f" ({ops['MatMulNBits']} MatMulNBits)"
    return text


# -- the quantizers --------------------------------------------------------------------------------------------
class _Reader(CalibrationDataReader):
    def __init__(self, data: CalibrationData):
        self._feeds = iter(data.feeds)

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def ort_static(case: Case, method: str, out: Path, holdout: float) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # the entropy calibrator prints its progress
        quantize_static(str(case.float_path), str(out), _Reader(held_in(case, holdout)),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method))


def ort_dynamic(case: Case, out: Path) -> None:
    quantize_dynamic(str(case.float_path), str(out), per_channel=True, weight_type=QuantType.QInt8)


def recipe_with(name: str, options: dict, drop: tuple[str, ...] = ()) -> dict:
    """Built-in recipe ``name`` with options of its quantize_* steps replaced (``drop``: reset to default)."""
    recipe = copy.deepcopy(load_recipe(name).to_dict())
    for step in recipe["passes"]:
        for pass_name, opts in step.items():
            if pass_name in options:
                opts.update(options[pass_name])
                for key in drop:
                    opts.pop(key, None)
    return recipe


def bits_note(result) -> str:
    """Mean stored width and the layer count per width, from quantize_weights' records."""
    records = next(p.records for p in result.report.passes if p.name == "quantize_weights")
    if not records:
        return ""
    n = np.array([r["bytes_before"] // 4 for r in records], dtype=np.float64)
    bits = np.array([r["bits"] for r in records], dtype=np.float64)
    hist = Counter(int(b) for b in bits)
    return f"W{float((n * bits).sum() / n.sum()):.2f}: " + " ".join(f"{b}b x{hist[b]}" for b in sorted(hist))


def variants(quick: bool) -> list[tuple[str, str, dict | None, tuple[str, ...]]]:
    """(row label, recipe or ort kind, quantize_* options, options reset) in table order."""
    int8_default = load_recipe("int8").to_dict()["passes"][-1]["quantize_activations"]["method"]
    rows = [("ort static minmax", "ort:MinMax", None, ()), ("ort static entropy", "ort:Entropy", None, ()),
            ("ort dynamic", "ort:dynamic", None, ())]
    for method in QUICK_METHODS if quick else METHODS:
        star = "*" if method == int8_default else ""
        rows.append((f"int8 {method}{star}", "int8", {"quantize_activations": {"method": method}}, ()))
    rows += [
        ("int8-avx2 (7-bit weights)", "int8-avx2", {}, ()),
        ("int8-weights", "int8-weights", {}, ()),
        ("int4-weights gptq", "int4-weights", {}, ()),
        ("int4-weights rtn", "int4-weights", {"quantize_weights": {"rounding": "nearest"}}, ()),
        ("mixed avg4", "mixed", {}, ()),
        ("uniform 4 (mixed chain)", "mixed", {"quantize_weights": {"bits": 4}}, ("budget",)),
    ]
    return rows


def run_model(key: str, tmp: Path, args: argparse.Namespace) -> list[Row]:
    start = time.perf_counter()
    case = prepare(key, tmp, args.quick)
    holdout = load_recipe("int8").holdout
    base_score, base_text, reference = score(case, case.float_path, None)
    if key not in TRAINED:
        base_text = "reference" + (f" ({base_text.split('(')[1]}" if key == "ppocr-cls" else "")
    rows = [Row(key, "float", case.float_path, score=base_score, quality=base_text)]
    seen = held_in(case, holdout).num_samples
    print(f"  [{key}] prepared in {time.perf_counter() - start:.0f} s; calibration {seen} samples, held-out "
          f"{len(case.test[case.input_name])}", file=sys.stderr, flush=True)
    for label, kind, options, drop in variants(args.quick):
        if args.rows and not any(part in label for part in args.rows.split(",")):
            continue
        out = tmp / f"{key}.{label.replace(' ', '_').replace('*', '').replace('(', '').replace(')', '')}.onnx"
        row = Row(key, label, out)
        start = time.perf_counter()
        try:
            if kind.startswith("ort:"):
                method = kind.split(":")[1]
                ort_dynamic(case, out) if method == "dynamic" else ort_static(case, method, out, holdout)
            else:
                result = compress(str(case.float_path), recipe=recipe_with(kind, options, drop),
                                  calibration=case.calib, output=out, seed=args.seed)
                row.note = bits_note(result)
            row.seconds = time.perf_counter() - start
            row.score, row.quality, got = score(case, out, reference)
            row.sqnr = sqnr(reference, got)
            row.kernels = kernels(out, tmp)
        except Exception as e:  # a refusal is a result: the row says so and the benchmark goes on
            row.path = None
            row.quality = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        rows.append(row)
        print(f"  [{key}] {label}: {row.quality} ({row.seconds or 0:.0f} s)", file=sys.stderr, flush=True)
    rows[0].kernels = kernels(case.float_path, tmp)
    if not args.skip_latency:
        timed = [r for r in rows if r.path is not None]
        feed = {case.input_name: case.test[case.input_name][:1]}
        for r, b in zip(timed, benchmark([str(r.path) for r in timed], feed, rounds=args.rounds, warmup=3,
                                         threads=args.threads)):
            r.latency_ms, r.latency_ratio = b.median_ms, 1.0 / b.speedup
    return rows


# -- the tables ------------------------------------------------------------------------------------------------
HEADER = ["model", "method", "bytes", "ratio", "quality (held-out)", "SQNR dB", "ORT ms", "vs float", "kernels", "s",
          "notes"]


def cells(row: Row, float_bytes: int) -> list[str]:
    size = row.path.stat().st_size if row.path is not None else None
    return [
        row.model, row.method,
        f"{size:,}" if size else "-",
        f"{float_bytes / size:.2f}x" if size else "-",
        row.quality,
        f"{row.sqnr:.1f}" if row.sqnr is not None else "-",
        f"{row.latency_ms:.3g}" if row.latency_ms is not None else "-",
        f"{row.latency_ratio:.2f}x" if row.latency_ratio is not None else "-",
        row.kernels,
        f"{row.seconds:.0f}" if row.seconds is not None else "-",
        row.note,
    ]


def fig(key: str, value: float) -> str:
    """A target figure as the table shows it: a percentage, or det's F1 / MobileNetV2's cosine."""
    if key == "ppocr-det":
        return f"F1 {value:.4f}"
    if key == "mobilenetv2":
        return f"cos {value:.4f}"
    return f"{value * 100:.2f}%"


def targets(key: str, rows: list[Row]) -> list[list[str]]:
    by = {r.method.rstrip("*"): r for r in rows if r.path is not None}
    ours = next((r for r in rows if r.method.startswith("int8 ") and r.method.endswith("*")), None)
    out = []
    orts = [by[m] for m in ("ort static minmax", "ort static entropy", "ort dynamic") if m in by]
    if ours is not None and ours.path is not None and orts:
        best = max(orts, key=lambda r: r.score)
        out.append([key, "W8A8 quality >= best onnxruntime",
                    f"{ours.method} {fig(key, ours.score)} vs {best.method} {fig(key, best.score)}",
                    "yes" if ours.score >= best.score else "NO"])
        static = [r for r in orts if r.method.startswith("ort static") and r.latency_ms is not None]
        if static and ours.latency_ms is not None:
            fastest = min(static, key=lambda r: r.latency_ms)
            ratio = ours.latency_ms / fastest.latency_ms
            out.append([key, "W8A8 latency <= 1.05x onnxruntime QDQ",
                        f"{ours.latency_ms:.3g} / {fastest.latency_ms:.3g} ms ({fastest.method}) = {ratio:.2f}x",
                        "yes" if ratio <= 1.05 else "NO"])
    gptq, rtn, base = by.get("int4-weights gptq"), by.get("int4-weights rtn"), rows[0]
    if gptq is not None and rtn is not None:
        if key in TRAINED:
            drop = (base.score - gptq.score) * 100
            target = "W4 GPTQ drop <= 1 point" + ("" if key in CNNS else " (MLP, not a target)")
            out.append([key, target, f"{drop:+.2f} points (rtn {(base.score - rtn.score) * 100:+.2f})",
                        "yes" if drop <= 1 else "NO"])
        out.append([key, "W4 GPTQ better than RTN (quality; SQNR)",
                    f"{fig(key, gptq.score)} vs {fig(key, rtn.score)}; {gptq.sqnr:.1f} vs {rtn.sqnr:.1f} dB",
                    _verdict(gptq, rtn)])
    mixed, uniform = by.get("mixed avg4"), by.get("uniform 4 (mixed chain)")
    if mixed is not None and uniform is not None:
        mb, ub = mixed.path.stat().st_size, uniform.path.stat().st_size
        out.append([key, "mixed avg 4 > uniform 4 at <= bytes (quality; SQNR)",
                    f"{fig(key, mixed.score)} vs {fig(key, uniform.score)}; {mixed.sqnr:.1f} vs {uniform.sqnr:.1f} dB; "
                    f"{mb:,} vs {ub:,} B", _verdict(mixed, uniform) if mb <= ub else "NO (more bytes)"])
    if key in ("mobilenetv2", "ppocr-cls") and ours is not None and ours.path is not None:
        what = "logit cosine" if key == "mobilenetv2" else "agreement"
        out.append([key, f"W8A8 does not collapse ({what} >= 0.95)", fig(key, ours.score),
                    "yes" if ours.score >= 0.95 else "NO"])
    return out


def _verdict(a: Row, b: Row) -> str:
    """``a`` better than ``b``: higher SQNR and no lower quality figure; "mixed" when they disagree."""
    if a.sqnr > b.sqnr and a.score >= b.score:
        return "yes"
    if a.sqnr <= b.sqnr and a.score <= b.score:
        return "NO"
    return "mixed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="fewer calibration/test samples, two activation methods (mse, entropy), 10 rounds")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for the latency runs")
    parser.add_argument("--rounds", type=int, default=None, help="latency rounds (default 30, quick 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default="", help="only rows whose label contains one of these (comma-separated), "
                                                   "e.g. 'mixed,uniform'")
    args = parser.parse_args()
    args.rounds = args.rounds or (10 if args.quick else 30)
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's pre-processing advice
    kind = ("SATURATE with 8-bit weights (x86 without VNNI: the int8-avx2 row is the one for this CPU)"
            if int8_pairs_saturate() else "exact (VNNI, or not x86)")
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, latency: batch 1, {args.threads} intra-op "
          f"thread(s), {args.rounds} interleaved rounds, medians; {os.cpu_count()} CPUs; fused int8 kernels {kind}")
    print(" | ".join(HEADER), flush=True)
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            rows = run_model(key, Path(tmp), args)
            float_bytes = rows[0].path.stat().st_size
            for row in rows:
                print(" | ".join(cells(row, float_bytes)), flush=True)
            checks += targets(key, rows)
    print()
    print("model | target | measured | holds")
    for check in checks:
        print(" | ".join(check))


if __name__ == "__main__":
    main()
