"""The compress report (``onnxcomp/measure/report.py``): a known ``CompressReport`` rendered as JSON (strict: no bare
Infinity/NaN, numpy values as numbers) reads back as the dict written out here by hand, and its Markdown and text
tables read back as the cells written out here by hand (sizes in B/KiB/MiB, renamed and new layers, skipped work
grouped by reason, pipes escaped)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from onnxcomp.measure.fidelity import FidelityReport, OutputFidelity
from onnxcomp.measure.report import CompressReport, PassSummary, dumps_json
from onnxcomp.measure.summary import SECTIONS, LayerRow

BEFORE = {"float weights": 3 << 20, "packed weights": 0, "codebook indices": 0, "quantized tensors": 0,
          "other tensors": 100, "metadata": 20, "graph": 980, "total": 3146828}
AFTER = {"float weights": 1024, "packed weights": 2048, "codebook indices": 0, "quantized tensors": 0,
         "other tensors": 100, "metadata": 20, "graph": 980, "total": 4172}


def _row(layer: str, weight: str, shape: list[int], nbytes: int, role: str = "weight", sparsity: float = 0.0,
         bits: int | None = None) -> LayerRow:
    return LayerRow(layer, "Gemm", weight, role, shape, int(np.prod(shape)), nbytes, "float32", sparsity, bits)


def _report(**changes) -> CompressReport:
    """fc1 keeps its weight's name, fc2's weight was renamed to 'a' (matched by layer), fc3's weight 'z' is new."""
    fields = dict(
        recipe="r", source="in.onnx", output="out.onnx", seed=3, size_before=BEFORE, size_after=AFTER,
        layers_before=[_row("/fc1/Gemm", "fc1.weight", [4, 3], 48), _row("/fc2/Gemm", "fc2.weight", [2, 4], 32),
                       _row("/fc1/Gemm", "fc1.bias", [4], 16, role="bias")],
        layers_after=[_row("/fc1/Gemm", "fc1.weight", [4, 3], 6, sparsity=0.5, bits=2),
                      _row("/fc2/Gemm", "a", [2, 4], 8, bits=4), _row("/fc1/Gemm", "fc1.bias", [4], 16, role="bias"),
                      _row("/fc3/Gemm", "z", [5, 2], 40)],
        passes=[PassSummary("share_weights", True,
                            [{"weight": "fc1.weight", "sections": {"codebook": 8, "indices": 3},
                              "err": np.float32(0.25), "count": np.int64(2)},
                             {"weight": "a", "sections": {"codebook": 32, "indices": 4}, "err": math.nan}],
                            [("fc3.weight", "too small"), ("b1", "too small"), ("x|y", "pipe|why")], 0.5,
                            "shared 2 weights"),
                PassSummary("strip_defaults", False, [], [], 0.01)],
        fidelity=FidelityReport(10, [OutputFidelity("logits", 1.0, math.inf, 0.0, 0.0, 1.0)], 0.9, 0.9),
        fidelity_data="2 held-back feeds", notes=["a note"])
    fields.update(changes)
    return CompressReport(**fields)


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _table(lines: list[str], heading: str) -> list[list[str]]:
    """The cells of the Markdown table after ``heading`` (header row included, separator row left out)."""
    start = lines.index(heading) + 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_json_reads_back_as_the_known_dict() -> None:
    report = _report()
    layer = {"op": "Gemm", "dtype": "float32"}
    got = _strict(report.to_json())
    fidelity = got.pop("fidelity")
    (output,) = fidelity.pop("outputs")
    assert output.items() >= {"name": "logits", "cosine": 1.0, "sqnr_db": "inf", "max_abs_err": 0.0, "rel_err": 0.0,
                              "top1_agreement": 1.0}.items()
    assert fidelity == {"samples": 10, "accuracy_reference": 0.9, "accuracy_candidate": 0.9, "custom": None,
                        "extra": {}, "accuracy_drop": 0.0}
    assert got == {
        "recipe": "r", "source": "in.onnx", "output": "out.onnx", "seed": 3,
        "size_before": BEFORE, "size_after": AFTER,
        "packed_sections": {"codebook": 40, "indices": 7},
        "ratio": 3146828 / 4172,
        "layers": [
            {**layer, "layer": "/fc1/Gemm", "weight": "fc1.weight", "shape": [4, 3], "params": 12, "bytes_before": 48,
             "bytes_after": 6, "sparsity": 0.5, "bits": 2},
            {**layer, "layer": "/fc2/Gemm", "weight": "a", "shape": [2, 4], "params": 8, "bytes_before": 32,
             "bytes_after": 8, "sparsity": 0.0, "bits": 4},
            {**layer, "layer": "/fc3/Gemm", "weight": "z", "shape": [5, 2], "params": 10, "bytes_before": None,
             "bytes_after": 40, "sparsity": 0.0, "bits": None},
        ],
        "passes": [
            {"name": "share_weights", "modified": True, "seconds": 0.5, "summary": "shared 2 weights",
             "records": [{"weight": "fc1.weight", "sections": {"codebook": 8, "indices": 3}, "err": 0.25,
                          "count": 2},
                         {"weight": "a", "sections": {"codebook": 32, "indices": 4}, "err": "nan"}],
             "skipped": [["fc3.weight", "too small"], ["b1", "too small"], ["x|y", "pipe|why"]]},
            {"name": "strip_defaults", "modified": False, "records": [], "skipped": [], "seconds": 0.01,
             "summary": ""},
        ],
        "fidelity_data": "2 held-back feeds",
        "skipped": [{"pass": "share_weights", "what": "fc3.weight", "why": "too small"},
                    {"pass": "share_weights", "what": "b1", "why": "too small"},
                    {"pass": "share_weights", "what": "x|y", "why": "pipe|why"}],
        "notes": ["a note"],
    }
    assert report.skipped == [("share_weights", "fc3.weight", "too small"), ("share_weights", "b1", "too small"),
                              ("share_weights", "x|y", "pipe|why")]


def test_strict_json_of_non_finite_numbers() -> None:
    assert _strict(dumps_json({"a": [math.inf, -math.inf, math.nan, 1.5], "b": (np.int64(2),)})) == {
        "a": ["inf", "-inf", "nan", 1.5], "b": [2]}
    assert _report(size_after={**AFTER, "total": 0}).ratio == math.inf
    assert _strict(_report(size_after={**AFTER, "total": 0}).to_json())["ratio"] == "inf"


def test_markdown_tables_read_back_as_the_known_cells() -> None:
    md = _report().to_markdown()
    lines = md.splitlines()
    assert lines[0] == "# onnxcomp report: recipe 'r'"
    assert "source: in.onnx  ->  output: out.onnx  (seed 3)" in lines
    assert _table(lines, "## Size by section") == [
        ["section", "before", "after"], ["float weights", "3.00 MiB", "1.0 KiB"], ["packed weights", "0 B", "2.0 KiB"],
        ["codebook indices", "0 B", "0 B"], ["quantized tensors", "0 B", "0 B"], ["other tensors", "100 B", "100 B"],
        ["metadata", "20 B", "20 B"], ["graph", "980 B", "980 B"], ["total", "3.00 MiB", "4.1 KiB"]]
    assert [r[0] for r in _table(lines, "## Size by section")[1:-1]] == list(SECTIONS)
    assert "compression ratio: 754.27x" in lines
    assert _table(lines, "## Packed weights by section") == [["section", "bytes"], ["codebook", "40 B"],
                                                            ["indices", "7 B"]]
    assert _table(lines, "## Passes") == [["pass", "changed", "layers", "skipped", "seconds"],
                                         ["share_weights", "yes", "2", "3", "0.50"],
                                         ["strip_defaults", "no", "0", "0", "0.01"]]
    assert "share_weights: shared 2 weights" in lines and not any(x.startswith("strip_defaults:") for x in lines)
    assert _table(lines, "## Layers (3 with kernels)") == [
        ["layer", "op", "shape", "params", "before", "after", "sparsity", "bits"],
        ["/fc1/Gemm", "Gemm", "4x3", "12", "48 B", "6 B", "50.0%", "2"],
        ["/fc2/Gemm", "Gemm", "2x4", "8", "32 B", "8 B", "0.0%", "4"],
        ["/fc3/Gemm", "Gemm", "5x2", "10", "new", "40 B", "0.0%", "float"]]
    at = lines.index("## Fidelity (2 held-back feeds)")
    assert lines[at + 1] == "logits: cosine 1.000000  SQNR inf dB  max|err| 0  rel 0  top1-agree 100.00%"
    assert lines[at + 2] == "accuracy: reference 90.00%  candidate 90.00%  drop +0.00 points"
    assert _table(lines, "## Skipped") == [["pass", "count", "why", "example"],
                                          ["share_weights", "2", "too small", "fc3.weight"],
                                          ["share_weights", "1", "pipe|why", "x|y"]]
    assert lines[-1] == "note: a note" and md.endswith("\n")


def test_text_is_the_same_report_with_a_layer_limit() -> None:
    report = _report()
    text = report.to_text(max_layers=2)
    lines = text.splitlines()
    assert lines[0] == "onnxcomp report: recipe 'r'" and not any(x.startswith(("#", "|")) for x in lines)

    def cells(first: str) -> list[str]:
        return re.split(r"\s{2,}", next(x for x in lines if x.startswith(first)).strip())

    assert cells("float weights") == ["float weights", "3.00 MiB", "1.0 KiB"]
    assert cells("/fc2/Gemm") == ["/fc2/Gemm", "Gemm", "2x4", "8", "32 B", "8 B", "0.0%", "4"]
    assert not any(x.startswith("/fc3/Gemm") for x in lines)
    assert "... 1 more layers in the .report.md / .report.json" in lines
    assert "/fc3/Gemm" in report.to_text()  # 40 layers by default


def test_a_report_without_fidelity_or_skips() -> None:
    report = _report(passes=[PassSummary("strip_defaults", False, [], [], 0.01)], fidelity=None, notes=[])
    lines = report.to_markdown().splitlines()
    assert lines[lines.index("## Fidelity (2 held-back feeds)") + 1] == "not measured"
    assert lines[lines.index("## Skipped") + 1] == "nothing"
    assert "## Packed weights by section" not in lines and report.packed_sections() == {}
    assert _strict(report.to_json())["fidelity"] is None


@pytest.mark.parametrize("nbytes, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                          ((1 << 20) - 1, "1024.0 KiB"), (1 << 20, "1.00 MiB"),
                                          (5 * (1 << 20) // 2, "2.50 MiB")])
def test_sizes_are_shown_in_bytes_kib_and_mib(nbytes: int, text: str) -> None:
    lines = _report(size_after={**AFTER, "graph": nbytes}).to_markdown().splitlines()
    assert dict((r[0], r[2]) for r in _table(lines, "## Size by section"))["graph"] == text
