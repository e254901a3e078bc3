"""The report every compress run ends with: size by section, per-layer table, fidelity, skipped work.

One :class:`CompressReport` renders three ways: a plain-text table for the terminal, Markdown
(``OUT.report.md``) and JSON (``OUT.report.json``). All figures come from the written model (real serialized
bytes) and from the fidelity run on held-back feeds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from onnxcomp.measure.fidelity import FidelityReport
from onnxcomp.measure.summary import SECTIONS, LayerRow


@dataclass
class PassSummary:
    name: str
    modified: bool
    records: list[dict[str, Any]]
    skipped: list[tuple[str, str]]
    seconds: float
    summary: str = ""


@dataclass
class CompressReport:
    recipe: str
    source: str | None
    output: str | None
    seed: int
    size_before: dict[str, int]
    size_after: dict[str, int]
    layers_before: list[LayerRow]
    layers_after: list[LayerRow]
    passes: list[PassSummary]
    fidelity: FidelityReport | None
    fidelity_data: str  # what the fidelity figures were measured on
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        after = self.size_after["total"]
        return self.size_before["total"] / after if after else math.inf

    def packed_sections(self) -> dict[str, int]:
        """Bytes of the encoded weights by section (values, indices, codebook, gaps, Huffman tables, headers)."""
        totals: dict[str, int] = {}
        for p in self.passes:
            for record in p.records:
                for key, value in record.get("sections", {}).items():
                    totals[key] = totals.get(key, 0) + int(value)
        return totals

    @property
    def skipped(self) -> list[tuple[str, str, str]]:
        return [(p.name, what, why) for p in self.passes for what, why in p.skipped]

    # -- rendering -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "source": self.source,
            "output": self.output,
            "seed": self.seed,
            "size_before": self.size_before,
            "size_after": self.size_after,
            "packed_sections": self.packed_sections(),
            "ratio": self.ratio,
            "layers": self._layer_table(),
            "passes": [asdict(p) for p in self.passes],
            "fidelity": self.fidelity.to_dict() if self.fidelity else None,
            "fidelity_data": self.fidelity_data,
            "skipped": [{"pass": p, "what": w, "why": y} for p, w, y in self.skipped],
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return dumps_json(self.to_dict())

    def to_text(self, max_layers: int = 40) -> str:
        return "\n".join(self._blocks(markdown=False, max_layers=max_layers)) + "\n"

    def to_markdown(self) -> str:
        return "\n".join(self._blocks(markdown=True, max_layers=None)) + "\n"

    def _layer_table(self) -> list[dict[str, Any]]:
        before = {r.weight: r for r in self.layers_before}
        by_layer = {r.layer: r for r in self.layers_before if r.role == "weight"}  # when tensors were renamed
        rows = []
        for r in self.layers_after:
            if r.role != "weight":
                continue
            b = before.get(r.weight) or by_layer.get(r.layer)
            rows.append({"layer": r.layer, "op": r.op, "weight": r.weight, "shape": r.shape, "params": r.params,
                         "bytes_before": b.bytes if b else None, "bytes_after": r.bytes, "dtype": r.dtype,
                         "sparsity": r.sparsity, "bits": r.bits})
        return rows

    def _blocks(self, markdown: bool, max_layers: int | None) -> list[str]:
        table = _md_table if markdown else _text_table
        head = "## " if markdown else ""
        out = [f"{'# ' if markdown else ''}onnxcomp report: recipe '{self.recipe}'", ""]
        out.append(f"source: {self.source}  ->  output: {self.output}  (seed {self.seed})")
        out.append("")
        out.append(f"{head}Size by section")
        rows = [[s, _kb(self.size_before[s]), _kb(self.size_after[s])] for s in SECTIONS]
        rows.append(["total", _kb(self.size_before["total"]), _kb(self.size_after["total"])])
        out += table(["section", "before", "after"], rows)
        out.append(f"compression ratio: {self.ratio:.2f}x")
        packed = self.packed_sections()
        if packed:
            out.append("")
            out.append(f"{head}Packed weights by section")
            out += table(["section", "bytes"], [[k, _kb(v)] for k, v in packed.items()])
        out.append("")
        out.append(f"{head}Passes")
        out += table(["pass", "changed", "layers", "skipped", "seconds"],
                     [[p.name, "yes" if p.modified else "no", str(len(p.records)), str(len(p.skipped)),
                       f"{p.seconds:.2f}"] for p in self.passes])
        out += [f"{p.name}: {p.summary}" for p in self.passes if p.summary]
        out.append("")
        layers = self._layer_table()
        out.append(f"{head}Layers ({len(layers)} with kernels)")
        shown = layers if max_layers is None else layers[:max_layers]
        out += table(["layer", "op", "shape", "params", "before", "after", "sparsity", "bits"],
                     [[r["layer"], r["op"], "x".join(map(str, r["shape"])), str(r["params"]),
                       _kb(r["bytes_before"]) if r["bytes_before"] is not None else "new", _kb(r["bytes_after"]),
                       f"{r['sparsity'] * 100:.1f}%", str(r["bits"]) if r["bits"] is not None else "float"]
                      for r in shown])
        if len(shown) < len(layers):
            out.append(f"... {len(layers) - len(shown)} more layers in the .report.md / .report.json")
        out.append("")
        out.append(f"{head}Fidelity ({self.fidelity_data})")
        out += self.fidelity.lines() if self.fidelity else ["not measured"]
        out.append("")
        out.append(f"{head}Skipped")
        skipped = self.skipped
        if not skipped:
            out.append("nothing")
        else:
            counts = Counter((p, why) for p, _, why in skipped)
            examples = {}
            for p, what, why in skipped:
                examples.setdefault((p, why), what)
            out += table(["pass", "count", "why", "example"],
                         [[p, str(n), why, examples[(p, why)]] for (p, why), n in counts.most_common()])
        for note in self.notes:
            out.append(f"note: {note}")
        return out


def _kb(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(x).replace("|", "\\|") for x in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in esc]


def dumps_json(data: Any) -> str:
    """Strict JSON (jq, JavaScript): infinities and NaN become the strings "inf", "-inf", "nan"."""
    return json.dumps(_finite(data), indent=2, default=_jsonable, allow_nan=False) + "\n"


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist") and getattr(x, "size", 1) != 1:  # an array: .item() works on one element only
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
