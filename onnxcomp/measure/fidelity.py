"""How close a transformed model stays to the original, measured on held-back feeds.

Per output, accumulated over all feeds (so memory holds one batch):
- ``cosine``: <ref, cand> / (|ref| |cand|) over all elements;
- ``sqnr_db``: 10 log10(sum ref^2 / sum (ref - cand)^2), infinite when equal;
- ``max_abs_err`` and ``rel_err`` = max |ref - cand| / max |ref|;
- ``top1_agreement``: share of positions whose argmax over the last axis agrees, for float outputs of rank >= 2
  whose last axis has more than one entry (class scores [N, C], per-timestep scores [N, T, C]).
With labels, ``accuracy`` of both models: argmax of the first output's last axis against the labels.
Non-finite values: a reference output that is NaN or infinite on the data is an error (the data is outside the
range the original model computes in, so nothing can be compared); a candidate's NaN/infinite values are counted
(``nonfinite``), make cosine and SQNR NaN and count as disagreement, so they never read as a perfect score.
A user callback ``metric(ref_outputs, cand_outputs, labels) -> float`` adds a custom figure (its mean over feeds).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from onnxcomp.calibration.data import CalibrationData
from onnxcomp.errors import CalibrationError, ComparisonError
from onnxcomp.runtime import session


@dataclass
class OutputFidelity:
    name: str
    cosine: float
    sqnr_db: float
    max_abs_err: float
    rel_err: float
    top1_agreement: float | None
    nonfinite: int = 0  # candidate values that are NaN or infinite


@dataclass
class FidelityReport:
    samples: int
    outputs: list[OutputFidelity]
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    custom: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_reference is None or self.accuracy_candidate is None:
            return None
        return self.accuracy_reference - self.accuracy_candidate

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accuracy_drop"] = self.accuracy_drop
        return d

    def lines(self) -> list[str]:
        out = []
        for o in self.outputs:
            top1 = f"  top1-agree {o.top1_agreement * 100:.2f}%" if o.top1_agreement is not None else ""
            broken = f"  NaN/infinite values: {o.nonfinite:,}" if o.nonfinite else ""
            out.append(f"{o.name}: cosine {o.cosine:.6f}  SQNR {_db(o.sqnr_db)}  max|err| {o.max_abs_err:.3g}"
                       f"  rel {o.rel_err:.3g}{top1}{broken}")
        if self.accuracy_reference is not None:
            out.append(f"accuracy: reference {self.accuracy_reference * 100:.2f}%  candidate "
                       f"{self.accuracy_candidate * 100:.2f}%  drop {self.accuracy_drop * 100:+.2f} points")
        if self.custom is not None:
            out.append(f"custom metric: {self.custom:.6g}")
        return out


class _Acc:
    """Streaming sums for one output."""

    def __init__(self) -> None:
        self.dot = self.ref2 = self.cand2 = self.err2 = 0.0
        self.max_err = self.max_ref = 0.0
        self.agree = self.positions = 0
        self.classes = True
        self.nonfinite = 0

    def update(self, name: str, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.shape != cand.shape:
            raise ComparisonError(f"output shapes differ: {ref.shape} vs {cand.shape}")
        if np.issubdtype(ref.dtype, np.inexact) and not np.all(np.isfinite(ref)):
            raise CalibrationError(f"the original model's output '{name}' holds {int(np.isnan(ref).sum()):,} NaN and "
                                   f"{int(np.isinf(ref).sum()):,} infinite values on these feeds: the data is outside "
                                   "the range the model computes in (check its scale and preprocessing)")
        if np.issubdtype(cand.dtype, np.inexact):
            bad = ~np.isfinite(cand)
            if bad.any():
                self.nonfinite += int(bad.sum())
                cand = np.where(bad, np.nan, cand)
        r = ref.astype(np.float64).ravel()
        c = cand.astype(np.float64).ravel()
        self.dot += float(r @ c)
        self.ref2 += float(r @ r)
        self.cand2 += float(c @ c)
        d = r - c
        self.err2 += float(d @ d)
        if d.size:
            self.max_err = max(self.max_err, float(np.abs(d).max()))
            self.max_ref = max(self.max_ref, float(np.abs(r).max()))
        if ref.ndim >= 2 and ref.shape[-1] > 1 and np.issubdtype(ref.dtype, np.floating):
            broken = np.isnan(cand).any(-1) if np.issubdtype(cand.dtype, np.floating) else False
            self.agree += int(((ref.argmax(-1) == cand.argmax(-1)) & ~broken).sum())
            self.positions += int(np.prod(ref.shape[:-1]))
        else:
            self.classes = False

    def result(self, name: str) -> OutputFidelity:
        if self.nonfinite:
            top1 = self.agree / self.positions if self.classes and self.positions else None
            return OutputFidelity(name, math.nan, math.nan, math.inf, math.inf, top1, self.nonfinite)
        norm = math.sqrt(self.ref2 * self.cand2)
        cosine = self.dot / norm if norm > 0 else (1.0 if self.err2 == 0 else 0.0)
        sqnr = math.inf if self.err2 == 0 else 10 * math.log10(max(self.ref2, 1e-300) / self.err2)
        rel = self.max_err / self.max_ref if self.max_ref > 0 else (0.0 if self.max_err == 0 else math.inf)
        top1 = self.agree / self.positions if self.classes and self.positions else None
        return OutputFidelity(name, cosine, sqnr, self.max_err, rel, top1)


Metric = Callable[[list[np.ndarray], list[np.ndarray], "np.ndarray | None"], float]


def compare(
    reference,
    candidate,
    data: CalibrationData,
    metric: Metric | None = None,
    progress: bool = False,
) -> FidelityReport:
    """Run both models (paths, ModelProtos or Models) on every feed and accumulate the figures above."""
    ref_sess, cand_sess = session(reference), session(candidate)
    names = [o.name for o in ref_sess.get_outputs()]
    cand_names = [o.name for o in cand_sess.get_outputs()]
    if sorted(names) != sorted(cand_names):
        raise ComparisonError(f"the models' outputs differ: {names} vs {cand_names}")
    ref_in = sorted((i.name, len(i.shape)) for i in ref_sess.get_inputs())
    cand_in = sorted((i.name, len(i.shape)) for i in cand_sess.get_inputs())
    if ref_in != cand_in:
        raise ComparisonError(f"the models' inputs differ (name, rank): {ref_in} vs {cand_in}")
    accs = {n: _Acc() for n in names}
    correct_ref = correct_cand = labelled = 0
    custom = []
    bar = tqdm(data, desc="fidelity", unit="batch", leave=False, file=sys.stderr, disable=None if progress else True)
    for i, feed in enumerate(bar):
        ref = ref_sess.run(names, feed)
        cand = cand_sess.run(names, feed)
        with np.errstate(over="ignore", invalid="ignore"):
            for n, r, c in zip(names, ref, cand):
                accs[n].update(n, r, c)
        labels = data.labels[i] if data.labels else None
        if labels is not None:
            correct_ref += int((ref[0].argmax(-1).reshape(labels.shape) == labels).sum())
            correct_cand += int((cand[0].argmax(-1).reshape(labels.shape) == labels).sum())
            labelled += labels.size
        if metric is not None:
            custom.append(float(metric(ref, cand, labels)))
    return FidelityReport(
        samples=data.num_samples,
        outputs=[accs[n].result(n) for n in names],
        accuracy_reference=correct_ref / labelled if labelled else None,
        accuracy_candidate=correct_cand / labelled if labelled else None,
        custom=float(np.mean(custom)) if custom else None,
    )


def _db(x: float) -> str:
    return "inf dB" if math.isinf(x) else f"{x:.1f} dB"
