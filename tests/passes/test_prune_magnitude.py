"""Magnitude pruning on real trained models: modes, exclusion, compensation, the automatic search."""

from __future__ import annotations

import numpy as np
import pytest

from models import paths
from onnxcomp.api import compress, evaluate
from onnxcomp.errors import PassError, RecipeError
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table

LENET = str(paths.model_path("mnist_lenet300"))
CALIB = str(paths.data_path("mnist_calib"))
TEST = str(paths.data_path("mnist_test"))


def _prune(options: dict, model: str = LENET, calibration=CALIB, holdout: float = 0.25):
    recipe = {"holdout": holdout, "passes": [{"prune_magnitude": options}]}
    return compress(model, recipe=recipe, calibration=calibration)


def _kernels(model) -> dict[str, np.ndarray]:
    return {w.name: w.array for w in weight_table(model) if w.role == "weight"}


def test_global_threshold_and_exclusion() -> None:
    original = _kernels(Model.load(LENET))
    result = _prune({"mode": "global", "sparsity": 0.6, "compensate": False, "exclude": ["fc3*", "*fc.2*"]})
    after = _kernels(result.model)
    excluded = [n for n in after if np.array_equal(after[n], original[n])]
    assert len(excluded) == 1  # the excluded head is bit-identical ...
    pruned = [n for n in after if n not in excluded]
    zeros = sum(int((after[n] == 0).sum()) for n in pruned)
    total = sum(after[n].size for n in pruned)
    assert abs(zeros / total - 0.6) < 0.01
    threshold = max(np.abs(original[n][after[n] == 0]).max() for n in pruned)
    assert all(np.abs(after[n][after[n] != 0]).min() >= threshold for n in pruned)  # one global threshold
    assert ("fc" in str(result.report.skipped)) and any("excluded" in why for _, _, why in result.report.skipped)


def test_layer_mode_quality_rule() -> None:
    original = _kernels(Model.load(LENET))
    after = _kernels(_prune({"mode": "layer", "quality": 0.5, "compensate": False}).model)
    for name, w in original.items():
        expected = np.abs(w) < 0.5 * np.std(w)
        np.testing.assert_array_equal(after[name] == 0, expected)


def test_compensation_halves_the_accuracy_drop() -> None:
    """Issue target: at equal sparsity, the drop with compensation is at most half the drop without."""
    drops = {}
    for compensate in (False, True):
        result = _prune({"mode": "layer", "sparsity": 0.7, "compensate": compensate})
        fidelity = evaluate(LENET, result.model.to_proto(), TEST)
        drops[compensate] = fidelity.accuracy_drop
    assert drops[False] > 0.02  # plain pruning hurts here ...
    assert drops[True] <= 0.5 * drops[False]  # ... compensation recovers most of it


def test_layers_fitted_on_few_samples_are_noted() -> None:
    """384 fitting samples: fc1 (784 inputs) and fc2 (300) are fitted on fewer than 2 per input, fc3 (100) is not."""
    notes = _prune({"mode": "layer", "sparsity": 0.5}).report.notes
    noted = {n.split(":")[1].strip() for n in notes if n.startswith("prune_magnitude:")}
    assert noted == {"/fc1/Gemm", "/fc2/Gemm"}, notes
    assert "input vectors of width 784" in " ".join(notes)
    assert not _prune({"mode": "layer", "sparsity": 0.5, "compensate": False}).report.notes  # nothing fitted
    # Two passes fitting the same layer on the same samples raise one note, naming both.
    recipe = {"holdout": 0.25, "passes": [{"prune_magnitude": {"mode": "layer", "sparsity": 0.5}},
                                          {"share_weights": {"bits": 4}}]}
    both = compress(LENET, recipe=recipe, calibration=CALIB).report.notes
    assert len(both) == 2 and all(n.startswith("prune_magnitude, share_weights: /fc") for n in both), both


@pytest.mark.parametrize("start", ["scaled", "allocation"])
def test_auto_search_respects_the_bound(start: str) -> None:
    result = _prune({"mode": "auto", "metric": "agreement", "max_drop": 0.02, "compensate": False,
                     "population": 3, "generations": 3, "start": start}, holdout=0.1)
    kernels = _kernels(result.model)
    sparsity = sum(int((w == 0).sum()) for w in kernels.values()) / sum(w.size for w in kernels.values())
    assert sparsity > 0.3
    fidelity = evaluate(LENET, result.model.to_proto(), TEST)
    # The bound (2% of top-1 changed on calibration data) carries over to unseen test data, with a margin
    # for 256 calibration samples against 1000 test samples.
    assert 1.0 - fidelity.outputs[0].top1_agreement <= 0.02 + 0.01
    assert fidelity.accuracy_drop <= 0.02 + 1e-9  # 0.979 - 0.959 = 0.020000000000000018 in floats
    step = next(p for p in result.report.passes if p.name == "prune_magnitude")
    assert len({round(r["sparsity"], 2) for r in step.records}) > 1  # per-layer thresholds, not one ratio
    assert f"{start} start" in step.summary


def test_auto_search_same_seed_same_bytes() -> None:
    """The compensated, cross-fitted search (NCS from a sensitivity scan, cached layers, memoised factors) gives the
    same model for the same seed."""
    options = {"mode": "auto", "metric": "agreement", "max_drop": 0.02, "compensate": True, "validation": 0.5,
               "population": 2, "generations": 2}
    model, calib = str(paths.model_path("digits_concat")), str(paths.data_path("digits_calib"))
    runs = [_prune(options, model, calib).model for _ in range(2)]
    assert any((w == 0).mean() > 0.3 for w in _kernels(runs[0]).values())  # it did prune
    assert runs[0].to_proto().SerializeToString() == runs[1].to_proto().SerializeToString()


def test_requirements_and_validation() -> None:
    with pytest.raises(PassError, match="needs calibration"):
        _prune({"mode": "auto"}, calibration=None)
    with pytest.raises(RecipeError, match="sparsity"):
        _prune({"mode": "layer", "sparsity": 1.5})
    with pytest.raises(RecipeError, match="start"):
        _prune({"mode": "auto", "start": "best"})
    result = _prune({"mode": "layer", "sparsity": 0.5, "compensate": False}, calibration=None)
    assert result.report.fidelity is not None  # seeded random feeds stand in


def test_search_cache_drops_least_recently_used_layers() -> None:
    from onnxcomp.passes.prune_magnitude import _LayerCache

    cache = _LayerCache(limit=3 * 800)
    for k in range(3):
        cache.put((0, 0, k), {"w": np.zeros(100)})  # 800 B each
    assert cache.get((0, 0, 0)) is not None  # now the most recently used
    cache.put((0, 0, 3), {"w": np.zeros(100)})
    assert cache.get((0, 0, 1)) is None and cache.get((0, 0, 0)) is not None
    assert cache.nbytes == 3 * 800


def test_large_layers_are_searched_compensated() -> None:
    """VGG's 128x3136 classifier is too costly for exact per-row solves per candidate, but its sequential
    compensation with the memoised factor is cheap: the search scores compensated candidates."""
    from onnxcomp.passes.base import PassResult
    from onnxcomp.passes.prune_magnitude import _CHEAP_FLOPS, MagnitudePruneConfig, _prunable, _Pruner

    model = Model.load(paths.model_path("mnist_vgg"))
    pruner = _Pruner(_prunable(model, MagnitudePruneConfig(), PassResult(modified=False)))
    assert pruner.compensation_flops(0.8) < _CHEAP_FLOPS
    assert pruner.compensation_flops(0.0) > 0


def _allocated(violation, max_sparsity=0.95):
    """``_allocated_start`` on three layers whose model-output distortion is ``weights @ sparsities``."""
    from onnxcomp.passes.prune_magnitude import _allocated_start

    weights = np.array([0.01, 1.0, 1.0])  # layer 0 is ten times larger and a hundred times less sensitive
    sizes = np.array([1000.0, 100.0, 100.0])
    x0, high = _allocated_start(sizes, max_sparsity, lambda x: (violation(x), float(weights @ x)), violation,
                                range(3))
    return x0, high, float(np.sum(sizes * (1 - x0)))


def test_allocated_start_spends_the_bound_where_it_buys_most() -> None:
    """Distortions that add up: the allocation prunes the large, insensitive layer to the top of the grid and
    the sensitive ones only as far as the bound allows, where scaling every layer's limit alike prunes each a
    little."""
    def violation(x):
        return float(np.array([0.01, 1.0, 1.0]) @ x) - 0.6

    x0, high, kept = _allocated(violation)
    assert violation(x0) <= 0 and x0[0] == 0.95 and x0[0] > x0[1] >= x0[2]
    assert kept < 300  # the scaled limits (0.95, 0.6, 0.6) feasible at ~0.3 of them keep ~ 850 weights
    assert np.all(high >= x0) and high[0] == 0.95  # the search's box holds the start


def test_allocated_start_falls_back_when_distortions_do_not_add_up() -> None:
    """No grid sparsity is feasible in combination: the scaled limits start the search; nothing feasible: no
    pruning."""
    x0, _, _ = _allocated(lambda x: float(np.max(x)) - 0.45)  # the walk's first step (0 -> 0.95) fails
    assert np.allclose(x0, x0[0]) and 0.29 < x0[0] <= 0.3  # every layer's limit, 0.3, scaled to feasibility
    x0, _, _ = _allocated(lambda x: float(np.max(x)) - 0.0)
    assert not x0.any()
