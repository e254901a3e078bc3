"""The Python API: load, save, compress, evaluate, inspect.

    import onnxcomp
    result = onnxcomp.compress("model.onnx", recipe="cleanup", calibration="calib.npz", output="out.onnx")
    print(result.report.to_text())

``compress`` never changes its input (a path is read, a ModelProto is copied). Calibration data is split:
passes see the first part, and fidelity is measured on the held-back rest (``holdout`` in the recipe). Without
calibration data, fidelity is measured on seeded random feeds where the input shapes allow it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxcomp.calibration.data import CalibrationData, calibration_files, input_specs
from onnxcomp.errors import CalibrationError, ModelLoadError, RecipeError, RunError
from onnxcomp.ir.fileio import staged_dir
from onnxcomp.ir.model import Model, check_output_files, needs_external_data, save_proto, write_model
from onnxcomp.measure.fidelity import FidelityReport, Metric, compare
from onnxcomp.measure.report import CompressReport, PassSummary
from onnxcomp.measure.summary import LayerRow, layer_rows, size_by_section, summarize
from onnxcomp.passes.base import Pass, PassContext
from onnxcomp.recipe import Recipe, load_recipe, recipe_files
from onnxcomp.runtime import session

ModelSource = str | os.PathLike | onnx.ModelProto | Model


@dataclass
class CompressResult:
    model: Model
    report: CompressReport

    def save(self, path: str | os.PathLike) -> Path:
        return self.model.save(path)


def load(source: ModelSource) -> Model:
    return Model.load(source)


def save(model: Model | onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    if isinstance(model, Model):
        return model.save(path, external_data=external_data)
    return save_proto(model, path, external_data=external_data)


def inspect(source: ModelSource) -> dict:
    return summarize(Model.load(source))


def channel_groups(source: ModelSource, shapes: dict[str, Sequence[int]] | None = None,
                   align: str = "strict") -> list[dict]:
    """The channel groups filter pruning works with: members, size, and why a group is locked.
    ``shapes`` gives graph input shapes where they have free dims other than the batch."""
    from onnxcomp.analysis.channel_groups import analyze
    from onnxcomp.analysis.cost import tensor_shapes

    model = Model.load(source)
    return analyze(model, align, tensor_shapes(model, shapes=shapes)).describe()


def compress(
    source: ModelSource,
    recipe: str | os.PathLike | dict | Recipe = "cleanup",
    calibration: Any = None,
    output: str | os.PathLike | None = None,
    seed: int = 0,
    metric: Metric | None = None,
    progress: bool = False,
    on_step: Callable[[int, Pass], None] | None = None,
    allow_constant_calibration: bool = False,
) -> CompressResult:
    """Run a recipe on a model; with ``output``, write the model and its ``.report.json``/``.report.md``.
    Calibration data that is constant throughout (all zeros) is refused unless ``allow_constant_calibration``
    (then the report says so)."""
    reads = [(p, "the recipe") for p in recipe_files(recipe)] + [(p, "the calibration data")
                                                                  for p in calibration_files(calibration)]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise RecipeError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
    recipe = load_recipe(recipe)
    source_path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    model = Model.load(source)
    if output is not None:  # fail before the work, not after it
        output = check_output_files(output, False, model.source_files, reports=True, reads=reads)
    reference = model.to_proto()
    size_before = size_by_section(reference)
    layers_before = layer_rows(model)

    calib = held_back = None
    constant_note = None
    if calibration is not None:
        data = CalibrationData.from_source(calibration, reference, allow_constant=allow_constant_calibration)
        if allow_constant_calibration:
            try:
                data.check_informative(input_specs(reference))
            except CalibrationError as e:
                constant_note = f"{e.args[0].split(';')[0]}: allowed on request; its fidelity figures say little"
        calib, held_back = data.split(recipe.holdout)
    ctx = PassContext(calibration=calib, seed=seed, progress=progress)
    outcomes = recipe.pipeline().run(model, ctx, on_step=on_step)

    result = model.to_proto()
    raised: dict[str, dict[str, None]] = {}  # note -> the passes that raised it (a layer fitted by several)
    for o in outcomes:
        for n in o.result.notes:
            raised.setdefault(n, {})[o.name] = None
    notes = [f"{', '.join(passes)}: {n}" for n, passes in raised.items()]
    if constant_note:
        notes.append(constant_note)
    if held_back is not None:
        fidelity_data = f"{held_back.num_samples} held-back calibration samples"
    else:
        held_back = synthetic_feeds(reference, seed)
        fidelity_data = f"{held_back.num_samples} seeded random samples (no calibration data)" if held_back else ""
        if held_back is None:
            notes.append("fidelity not measured: no calibration data and the inputs have free dimensions")
    fidelity = None
    if held_back is not None:
        try:
            fidelity = compare(reference, result, held_back, metric, progress)
        except ModelLoadError:
            refusal = _onnxruntime_refusal(reference)  # an op onnxruntime does not know: passes leave it alone
            if refusal is None:
                raise
            notes.append(f"fidelity not measured: {refusal}")
            fidelity_data = ""
        except (RunError, CalibrationError) as e:
            if calib is not None:  # the user's data: their problem to hear about
                raise
            notes.append(f"fidelity not measured: seeded random feeds do not fit the model ({e})")
            fidelity_data = ""

    report = CompressReport(
        recipe=recipe.name,
        source=str(source_path) if source_path else None,
        output=str(output) if output else None,
        seed=seed,
        size_before=size_before,
        size_after=size_by_section(result),
        layers_before=layers_before,
        layers_after=_original_names(layer_rows(model), outcomes),
        passes=[PassSummary(o.name, o.result.modified, o.result.records, o.result.skipped, o.seconds, o.result.summary)
                for o in outcomes],
        fidelity=fidelity,
        fidelity_data=fidelity_data or "not measured",
        notes=notes,
    )
    if output is not None:
        external = needs_external_data(result)
        check_output_files(output, external, model.source_files, reports=True, reads=reads)
        with staged_dir(output) as stage:  # model, data and reports appear together or not at all
            write_model(result, stage / output.name, external)
            (stage / f"{output.name}.report.json").write_text(report.to_json(), encoding="utf-8")
            (stage / f"{output.name}.report.md").write_text(report.to_markdown(), encoding="utf-8")
    return CompressResult(model, report)


def evaluate(reference: ModelSource, candidate: ModelSource, data: Any, metric: Metric | None = None,
             allow_constant: bool = False) -> FidelityReport:
    """Fidelity (and accuracy, when the data has labels) of ``candidate`` against ``reference``."""
    ref, cand = Model.load(reference).to_proto(), Model.load(candidate).to_proto()
    calib = CalibrationData.from_source(data, ref, allow_constant=allow_constant)
    return compare(ref, cand, calib, metric)


def _onnxruntime_refusal(proto: onnx.ModelProto) -> str | None:
    """Why onnxruntime cannot load the original model (an unknown custom op), or None."""
    try:
        session(proto)
    except ModelLoadError as e:
        return str(e)
    return None


def synthetic_feeds(proto: onnx.ModelProto, seed: int, samples: int = 4) -> CalibrationData | None:
    """Seeded standard-normal feeds (batch 1, or the fixed batch) when every other dimension is fixed."""
    rng = np.random.default_rng(seed)
    feeds = []
    specs = input_specs(proto)
    inits = {t.name for t in proto.graph.initializer}
    if any(not vi.type.tensor_type.HasField("shape") for vi in proto.graph.input if vi.name not in inits):
        return None  # unknown rank: no shape to draw from
    for _ in range(samples):
        feed = {}
        for spec in specs:
            dims = list(spec.shape)
            if dims and not isinstance(dims[0], int):
                dims[0] = 1
            if not all(isinstance(d, int) and d > 0 for d in dims):
                return None
            if np.issubdtype(spec.dtype, np.floating):
                feed[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
            elif spec.dtype == np.bool_:
                feed[spec.name] = rng.integers(0, 2, dims).astype(np.bool_)
            else:
                return None  # integer inputs are usually ids or shapes: random values would be meaningless
        feeds.append(feed)
    return CalibrationData(feeds)


def _original_names(rows: list[LayerRow], outcomes) -> list[LayerRow]:
    """Layer rows of the compressed model under the names the source model gave them (passes that rename
    tensors or nodes record what they renamed), so that the report speaks the user's names."""
    tensors: dict[str, str] = {}
    nodes: dict[str, str] = {}
    for outcome in outcomes:
        for table, renamed in ((tensors, outcome.result.renamed), (nodes, outcome.result.renamed_nodes)):
            back = {new: table.get(old, old) for old, new in renamed.items() if new}
            for new, old in back.items():
                table[new] = old
    if not tensors and not nodes:
        return rows
    return [replace(r, layer=nodes.get(r.layer, r.layer), weight=tensors.get(r.weight, r.weight)) for r in rows]
