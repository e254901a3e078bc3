"""The deep-compression recipe end to end on a real trained model: smaller, accurate, loadable, deterministic."""

from __future__ import annotations

import numpy as np

from models import paths
from onnxcomp.api import compress, evaluate
from onnxcomp.recipe import load_recipe
from onnxcomp.runtime import InferenceSession, unpack
from tests.conftest import run_ort

MODEL = str(paths.model_path("digits_concat"))
CALIB = str(paths.data_path("digits_calib"))
TEST = str(paths.data_path("digits_test"))


def _quick_recipe() -> dict:
    """The built-in recipe with a shorter search, to keep the test fast."""
    recipe = load_recipe("deep-compression").to_dict()
    for step in recipe["passes"]:
        if "prune_magnitude" in step:
            step["prune_magnitude"].update(population=3, generations=3)
    return recipe


def test_deep_compression_recipe(tmp_path) -> None:
    outs = []
    for run in range(2):
        out = tmp_path / f"run{run}.onnx"
        result = compress(MODEL, recipe=_quick_recipe(), calibration=CALIB, output=out, seed=3)
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()  # same seed, same bytes

    report = result.report
    assert report.ratio >= 4.0
    assert report.size_after["packed weights"] > 0 and report.size_after["float weights"] < 4096
    names = [p.name for p in report.passes]
    assert names[-6:] == ["prune_magnitude", "share_weights", "pack_weights", "dedupe_constants", "strip_defaults",
                          "shorten_names"]

    fidelity = evaluate(MODEL, unpack(str(outs[0])), TEST)
    assert fidelity.accuracy_drop <= 0.02

    # The packed file runs through onnxcomp's runtime exactly like its unpacked equivalent.
    x = np.load(TEST)["input"][:32]
    packed = InferenceSession(str(outs[0])).run(None, {"input": x})[0]
    plain = run_ort(unpack(str(outs[0])), {"input": x})[0]
    np.testing.assert_array_equal(packed, plain)
    assert (report.to_dict()["layers"])  # per-layer rows survive packing
