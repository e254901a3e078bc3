"""Acceptance: load -> save and the ``cleanup`` recipe leave onnxruntime outputs equal (rel err <= 1e-5) on every
bundled trained model, every architecture builder, and the PP-OCRv4 det/rec/cls Paddle exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models import builders, paths
from onnxcomp.api import compress
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table
from tests.conftest import rel_err, run_ort

TOL = 1e-5


def _check(proto_or_path, feed: dict[str, np.ndarray]) -> Model:
    """Round trip and cleanup both match the original; returns the cleaned model."""
    reference = run_ort(proto_or_path, feed)
    saved = Model.load(proto_or_path).to_proto()
    for a, b in zip(reference, run_ort(saved, feed)):
        assert rel_err(a, b) <= TOL
    cleaned = compress(proto_or_path, recipe="cleanup").model
    for a, b in zip(reference, run_ort(cleaned.to_proto(), feed)):
        assert rel_err(a, b) <= TOL
    return cleaned


@pytest.mark.parametrize("name", sorted(paths.TRAINED))
def test_trained_models(name: str) -> None:
    _, test = paths.TRAINED[name]
    with np.load(paths.data_path(test)) as z:
        feed = {"input": z["input"][:64]}
    cleaned = _check(str(paths.model_path(name)), feed)
    ops = [n.op for n in cleaned.graph.nodes]
    assert "BatchNormalization" not in ops and "Identity" not in ops and "Dropout" not in ops


@pytest.mark.parametrize("name", sorted(builders.BUILDERS))
def test_builders(name: str) -> None:
    proto = builders.build(name, **builders.small_kwargs(name))
    cleaned = _check(proto, builders.default_feed(proto))
    assert "BatchNormalization" not in [n.op for n in cleaned.graph.nodes if n.inputs[0].inputs
                                        and n.inputs[0].inputs[0].op in ("Conv", "Gemm")]


def _ppocr():
    from models import ppocr

    try:
        return ppocr, ppocr.model_paths()
    except RuntimeError as e:  # pragma: no cover - CI installs it
        pytest.skip(str(e))


@pytest.mark.parametrize("kind", ["det", "rec", "cls"])
def test_ppocr(kind: str) -> None:
    ppocr, model_paths = _ppocr()
    path: Path = model_paths[kind]
    feed = {"x": ppocr.calibration(kind, 4, seed=0)["x"]}
    original = onnx.load(str(path))
    constant_weights = {w.name for w in weight_table(Model.load(path)) if w.role == "weight"}
    assert constant_weights and all(w.source == "constant" for w in weight_table(Model.load(path)))

    cleaned = _check(str(path), feed)
    after = [w for w in weight_table(cleaned) if w.role == "weight"]
    assert {w.name for w in after} >= constant_weights  # every Paddle Constant weight is a table entry...
    assert all(w.source == "initializer" for w in after)  # ... held as an initializer after cleanup
    assert "Constant" not in [n.op for n in cleaned.graph.nodes]
    assert cleaned.metadata == {p.key: p.value for p in original.metadata_props}
