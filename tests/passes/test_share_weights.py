"""share_weights: centroid refinement against the normal equations, the pass on tiny graphs (recorded errors match
onnxruntime, must-not-fire, float16 and shared weights, option errors), and on the trained MNIST models (accuracy,
refinement, compensated and sequential assignment, bits: auto, float16 codebooks and biases). The 1-D k-means itself
is ``tests/numerics/test_kmeans1d.py``'s."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.paths import data_path, model_path
from onnxcomp.api import compress, evaluate
from onnxcomp.calibration.data import CalibrationData
from onnxcomp.calibration.hessian import LayerHessian, collect_hessians
from onnxcomp.errors import RecipeError
from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import weight_table
from onnxcomp.numerics.retarget import layer_output_error
from onnxcomp.passes.base import PassContext
from onnxcomp.passes.share_weights import ShareWeights, _refine
from onnxcomp.recipe import load_recipe
from onnxcomp.runtime import unpack
from tests.conftest import run_ort

RNG = np.random.default_rng(0)
LENET = model_path("mnist_lenet300")
CALIB = data_path("mnist_calib")
TEST = data_path("mnist_test")
CLEANUP = ["fold_constants", "eliminate_identity", "fold_batchnorm", "eliminate_dead"]


# -- centroid refinement ---------------------------------------------------------------------------------
def test_refinement_is_the_least_squares_optimum() -> None:
    """Against the normal equations built from dense one-hot matrices, on a grouped conv with pruned zeros."""
    groups, rows, d, k = 2, 3, 8, 4
    shape = (groups * rows, d, 1, 1)
    w = RNG.standard_normal(shape)
    labels = RNG.integers(0, k, shape)
    labels[RNG.random(shape) < 0.3] = k  # zeros: no cluster
    w[labels == k] = 0.0
    x = RNG.standard_normal((groups, 50, d))
    h = LayerHessian("Conv", shape, groups, np.einsum("gnd,gne->gde", x, x) / 50)
    c = _refine(h, w, labels, np.zeros(k), ridge=0.0)

    wm, lm = h.to_matrix(w), h.to_matrix(labels)
    lhs, rhs = np.zeros((k, k)), np.zeros(k)
    for g in range(groups):
        for r in range(rows):
            a = (lm[g, r][:, None] == np.arange(k)[None, :]).astype(float)  # d x k one-hot
            lhs += a.T @ h.H[g] @ a
            rhs += a.T @ h.H[g] @ wm[g, r]
    np.testing.assert_allclose(c, np.linalg.solve(lhs, rhs), rtol=1e-8)


def _conv_model(w: np.ndarray, group: int) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=group)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_recorded_output_error_matches_onnxruntime() -> None:
    """trace(dW H dW^T) / trace(W H W^T) is the output change onnxruntime measures; refinement lowers it."""
    w = RNG.standard_normal((16, 4, 3, 3)).astype(np.float32)
    proto = _conv_model(w, group=2)
    feeds = [{"x": RNG.standard_normal((2, 8, 6, 6)).astype(np.float32)} for _ in range(4)]
    model = Model.load(proto)
    result = ShareWeights(ShareWeights.Config(bits=2)).run(model, PassContext(calibration=CalibrationData(feeds)))
    (record,) = result.records
    assert record["output_err"] < record["output_err_kmeans"]
    ref = np.concatenate([run_ort(proto, f)[0] for f in feeds]).astype(np.float64)
    new = np.concatenate([run_ort(model.to_proto(), f)[0] for f in feeds]).astype(np.float64)
    assert ((ref - new) ** 2).sum() / (ref ** 2).sum() == pytest.approx(record["output_err"], rel=1e-4)


# -- the pass on tiny graphs -----------------------------------------------------------------------------
def _gemm_model(weights: dict[str, np.ndarray], shared: bool = False) -> onnx.ModelProto:
    """x -> Gemm(a) -> Gemm(b or a again) ... one Gemm per weight (or two Gemms on one weight)."""
    names = list(weights) * (2 if shared else 1)
    nodes, x = [], "x"
    for i, name in enumerate(names):
        nodes.append(helper.make_node("Gemm", [x, name], [f"y{i}"], transB=1, name=f"gemm{i}"))
        x = f"y{i}"
    dtype = next(iter(weights.values())).dtype
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    d = next(iter(weights.values())).shape[1]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [4, d])],
                              [helper.make_tensor_value_info(x, elem, None)],
                              [numpy_helper.from_array(v, n) for n, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_must_not_fire_on_few_values_small_or_excluded_weights() -> None:
    few = RNG.choice(np.linspace(-1, 1, 10), size=(20, 20)).astype(np.float32)  # 10 distinct values
    small = RNG.standard_normal((10, 20)).astype(np.float32)  # 200 elements < 256
    kept = RNG.standard_normal((20, 20)).astype(np.float32)
    model = Model.load(_gemm_model({"few": few, "kept": kept, "small": small}))
    config = ShareWeights.Config(bits=4, exclude=("gemm1",))
    result = ShareWeights(config).run(model, PassContext())
    assert not result.modified and not result.records
    reasons = dict(result.skipped)
    assert "already has 10 distinct nonzero values <= k=16" in reasons["few"]
    assert "min_elements" in reasons["small"] and "excluded by name" in reasons["kept"]
    table = {w.name: w.array for w in weight_table(model)}
    for name, value in (("few", few), ("small", small), ("kept", kept)):
        assert table[name].tobytes() == value.tobytes()


def test_float16_weight_shared_by_two_nodes() -> None:
    w = (RNG.standard_normal((24, 24)) * 0.1).astype(np.float16)
    proto = _gemm_model({"w": w}, shared=True)
    model = Model.load(proto)
    feeds = [{"x": RNG.standard_normal((4, 24)).astype(np.float16)}]
    result = ShareWeights(ShareWeights.Config(bits=3)).run(model, PassContext(calibration=CalibrationData(feeds)))
    (record,) = result.records  # one tensor, clustered once
    assert record["distinct_after"] <= 8 and record["output_err"] is None
    assert any("shared by 2 nodes" in why for _, why in result.skipped)
    (weight,) = weight_table(model)
    assert weight.array.dtype == np.float16 and len(weight.uses) == 2
    # Only values changed: onnxruntime computes x @ W'^T @ W'^T with the shared values.
    shared = weight.array.astype(np.float32)
    expected = feeds[0]["x"].astype(np.float32) @ shared.T @ shared.T
    np.testing.assert_allclose(run_ort(model.to_proto(), feeds[0])[0].astype(np.float32), expected,
                               rtol=2e-2, atol=2e-2)


def test_refine_without_calibration_is_a_note() -> None:
    model = Model.load(_gemm_model({"w": RNG.standard_normal((20, 20)).astype(np.float32)}))
    result = ShareWeights().run(model, PassContext())
    assert result.modified and result.records[0]["output_err"] is None
    assert ("refinement", "no calibration data: centroids are the k-means means") in result.skipped


@pytest.mark.parametrize("options, word", [
    ({"bits": 0}, "bits must be an integer from 1 to 8"),
    ({"bits": 9}, "bits must be an integer from 1 to 8"),
    ({"bits_per_layer": {"fc*": 12}}, "bits_per_layer['fc*'] must be an integer from 1 to 8"),
    ({"init": "kmeans++"}, "init"),
    ({"min_elements": -1}, "min_elements"),
    ({"bits": "many"}, "bits"),
    ({"bits": "auto", "choices": [2, 9]}, "choices must be an integer from 1 to 8"),
    ({"bits": "auto", "budget": 0.5}, "budget"),
    ({"bits": "auto", "max_drop": -0.1}, "max_drop"),
])
def test_recipe_rejects_bad_options(options: dict, word: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe({"passes": [{"share_weights": options}]})
    assert "share_weights" in str(err.value) and word in str(err.value)


# -- the pass on trained models --------------------------------------------------------------------------
def _share(model, options: dict, calibration=CALIB, pre: tuple = ()):
    result = compress(model, recipe={"passes": [*pre, {"share_weights": options}]}, calibration=calibration)
    step = result.report.passes[-1]
    return result.model, step, evaluate(model, result.model.to_proto(), TEST)


def test_lenet_5_bits_keeps_accuracy() -> None:
    model, step, fidelity = _share(LENET, {"bits": 5})
    kernels = [w for w in weight_table(model) if w.role == "weight"]
    assert len(kernels) == 3 and len(step.records) == 3
    for w in kernels:
        assert np.unique(w.array[w.array != 0]).size <= 32  # plus 0.0, a free level (rule 6)
    assert fidelity.accuracy_drop <= 0.005


def test_lenet_pruned_zeros_stay_zero(tmp_path) -> None:
    proto = onnx.load(LENET)
    zeroed = {}
    for init in proto.graph.initializer:
        if init.name.endswith("weight"):
            value = numpy_helper.to_array(init).copy()
            value[np.abs(value) < np.quantile(np.abs(value), 0.6)] = 0.0  # 60% magnitude pruning
            init.CopyFrom(numpy_helper.from_array(value, init.name))
            zeroed[init.name] = value == 0
    path = tmp_path / "pruned.onnx"
    onnx.save(proto, path)
    model, step, _ = _share(path, {"bits": 5})
    for w in weight_table(model):
        if w.name in zeroed:
            np.testing.assert_array_equal(w.array == 0, zeroed[w.name])  # same zeros, no new ones
            assert np.unique(w.array[w.array != 0]).size <= 32
    assert all(r["distinct_after"] <= 32 for r in step.records)


def test_lenet_refinement_lowers_output_error_and_keeps_accuracy() -> None:
    options = {"bits": 3, "exclude": ["/fc3/*"], "bits_per_layer": {"fc2.weight": 2}}
    plain_model, plain, plain_fid = _share(LENET, {**options, "refine": False})
    refined_model, refined, refined_fid = _share(LENET, options)
    assert [r["bits"] for r in refined.records] == [3, 2]
    for row in refined.records:
        assert row["output_err"] < row["output_err_kmeans"]
    # Closer to the original model (SQNR, top-1 agreement); test accuracy within noise (5 of 1000 samples).
    assert refined_fid.outputs[0].sqnr_db > plain_fid.outputs[0].sqnr_db + 3
    assert refined_fid.outputs[0].top1_agreement >= plain_fid.outputs[0].top1_agreement
    assert refined_fid.accuracy_candidate >= plain_fid.accuracy_candidate - 0.005
    # The excluded layer is untouched bit for bit.
    original = {w.name: w.array for w in weight_table(Model.load(LENET))}
    for model in (plain_model, refined_model):
        fc3 = next(w for w in weight_table(model) if w.name == "fc3.weight")
        assert fc3.array.tobytes() == original["fc3.weight"].tobytes()
    assert ("fc3.weight", "excluded by name (pattern '/fc3/*')") in refined.skipped


def test_rescnn_refinement_recovers_2_bit_accuracy() -> None:
    """Conv kernels (im2col Hessians) after BN folding: at 2 bits refinement is worth several points."""
    rescnn = model_path("mnist_rescnn")
    calib = {"input": np.load(CALIB)["input"][:96]}  # 72 samples for the Hessians keep this test quick
    _, plain, plain_fid = _share(rescnn, {"bits": 2, "refine": False}, calib, tuple(CLEANUP))
    _, refined, refined_fid = _share(rescnn, {"bits": 2}, calib, tuple(CLEANUP))
    assert ("stem.0.weight", "144 elements < min_elements 256") in refined.skipped
    assert all(r["output_err"] < r["output_err_kmeans"] for r in refined.records)
    assert refined_fid.accuracy_candidate >= plain_fid.accuracy_candidate + 0.03


def test_hessians_come_from_the_unmodified_model() -> None:
    """Refinement reads collect_hessians on the original weights: the recorded k-means error is reproducible
    (on the centered statistics: the layer has a bias, which absorbs the change of the output mean)."""
    model = Model.load(LENET)
    data = CalibrationData.from_source(CALIB, model.to_proto()).take(4)
    kernels = [w for w in weight_table(model) if w.role == "weight"]
    h = collect_hessians(model, kernels, data)["fc2.weight"].centered()
    original = kernels[1].array.copy()
    result = ShareWeights(ShareWeights.Config(bits=2, init="exact")).run(model, PassContext(calibration=data))
    row = next(r for r in result.records if r["weight"] == "fc2.weight")
    assert row["method"] == "dp-histogram"  # 30000 distinct values > exact_limit
    e = h.to_matrix(original.astype(np.float64) - kernels[1].array)
    w = h.to_matrix(original.astype(np.float64))
    assert np.sum((e[0] @ h.H[0]) * e[0]) / np.sum((w[0] @ h.H[0]) * w[0]) == pytest.approx(row["output_err"])


def test_compensated_assignment_lowers_output_error() -> None:
    """GPTQ-style assignment (rule 5) against nearest-centroid assignment, both refined, at 2 bits."""
    errors = {}
    for comp in (False, True):
        recipe = {"passes": [{"share_weights": {"bits": 2, "refine": True, "compensate": comp}}]}
        result = compress(str(LENET), recipe=recipe, calibration=str(CALIB))
        records = next(p for p in result.report.passes if p.name == "share_weights").records
        errors[comp] = sum(r["output_err"] for r in records)
        kernels = [w.array for w in weight_table(result.model) if w.role == "weight"]
        assert all(np.unique(k[k != 0]).size <= 4 for k in kernels)
    assert errors[True] < errors[False]


@pytest.mark.parametrize("compensate", [False, True])
def test_width_search_scores_what_will_be_applied(compensate: bool, monkeypatch) -> None:
    """bits: auto prices each width with the assignment rule 5 will use: with compensate the GPTQ-style one (a
    lower output error than nearest centroids), without it nearest centroids; both equal the applied weights.
    What is priced is what the pass's candidate function gives ``width_search.search_widths``."""
    from onnxcomp.passes import share_weights

    priced = {}
    search = share_weights.search_widths

    def recording_search(model, items, ctx, result, choices, candidate, *args, **kwargs):
        def recorded(w, array, bits, h, c):
            values, nbytes = candidate(w, array, bits, h, c)
            priced[(w.name, bits)] = (values.copy(), h, array.copy())
            return values, nbytes
        return search(model, items, ctx, result, choices, recorded, *args, **kwargs)

    monkeypatch.setattr(share_weights, "search_widths", recording_search)
    data = CalibrationData.from_source(CALIB, Model.load(LENET).to_proto()).take(4)

    def share(comp: bool) -> tuple[np.ndarray, LayerHessian, np.ndarray, np.ndarray]:
        """fc2 alone shared with bits: auto at the single choice 3: (priced values, Hessian, original, applied)."""
        model = Model.load(LENET)
        config = ShareWeights.Config(bits="auto", choices=(3,), compensate=comp, codebook_dtype="weight",
                                     exclude=("fc1.weight", "fc3.weight"))
        ShareWeights(config).run(model, PassContext(calibration=data))
        values, h, original = priced.pop(("fc2.weight", 3))
        return values, h, original, next(k for k in weight_table(model) if k.name == "fc2.weight").array

    values, h, original, applied = share(compensate)
    plain = share(False)[0]
    assert h.is_centered  # fc2 has a bias: its fit is on the centered statistics (rule 9)
    assert (layer_output_error(h, original, values) < layer_output_error(h, original, plain)) == compensate
    np.testing.assert_array_equal(applied, values)


def test_sequential_sharing_corrects_upstream_error() -> None:
    """Sharing layer by layer on already-shared inputs (re-targeted to the original outputs) keeps the network's
    output closer to the original than sharing every layer against the unmodified model, at 2 bits."""
    cosines = {}
    for sequential in (False, True):
        recipe = {"holdout": 0.3, "passes": [{"share_weights": {"bits": 2, "sequential": sequential}}]}
        result = compress(str(LENET), recipe=recipe, calibration=str(CALIB))
        cosines[sequential] = result.report.fidelity.outputs[0].cosine
        kernels = [w.array for w in weight_table(result.model) if w.role == "weight"]
        assert all(np.unique(k[k != 0]).size <= 4 for k in kernels)
    assert cosines[True] > cosines[False]


# -- bits: auto ------------------------------------------------------------------------------------------
def test_auto_bits_meets_the_bound_with_mixed_widths() -> None:
    """The allocation gives different widths where layers differ in sensitivity, stays within the bound on the
    calibration data, and costs fewer index bits than the widest choice everywhere."""
    options = {"bits": "auto", "choices": [2, 3, 4, 6], "metric": "agreement", "max_drop": 0.01, "refine": True}
    model, step, fidelity = _share(LENET, options)
    widths = {r["weight"]: r["bits"] for r in step.records}
    assert len(widths) == 3 and min(widths.values()) < 6
    assert "bits: auto (agreement drop <= 0.01)" in step.summary
    calib = CalibrationData.from_source(str(CALIB), Model.load(LENET))
    agree = evaluate(LENET, model.to_proto(), calib)
    assert agree.outputs[0].top1_agreement >= 0.99 - 1e-9
    assert fidelity.accuracy_drop <= 0.01


def test_auto_bits_budget_sets_the_mean_width() -> None:
    model, step, _ = _share(LENET, {"bits": "auto", "choices": [2, 3, 4, 5, 6], "budget": 3.0})
    counts = {w.name: np.count_nonzero(w.array) for w in weight_table(model) if w.role == "weight"}
    widths = {r["weight"]: r["bits"] for r in step.records}
    mean = sum(counts[n] * b for n, b in widths.items()) / sum(counts[n] for n in widths)
    assert mean <= 3.0 and max(widths.values()) > 2  # the budget is spent unevenly


def test_auto_bits_needs_calibration() -> None:
    from onnxcomp.errors import PassError

    with pytest.raises(PassError, match="bits: auto"):
        compress(LENET, recipe={"passes": [{"share_weights": {"bits": "auto"}}]})


def test_bits_per_layer_is_not_reallocated() -> None:
    _, step, _ = _share(LENET, {"bits": "auto", "choices": [2, 3], "budget": 2.0, "bits_per_layer": {"fc3*": 7}})
    widths = {r["weight"]: r["bits"] for r in step.records}
    assert widths["fc3.weight"] == 7 and {widths["fc1.weight"], widths["fc2.weight"]} <= {2, 3}


def test_zero_is_a_level_for_near_zero_weights() -> None:
    """A channel of ~0 weights (a BN-folded channel with gamma ~0) must stay ~0, not jump to the smallest
    centroid (rule 6): values nearer to 0.0 than to every centroid become exactly 0.0."""
    from onnxcomp.passes.share_weights import _snap, _values

    centroids = np.array([-1.0, -0.2, 0.3, 1.0])
    values = np.array([1e-30, -0.09, 0.16, -0.11, 0.9])
    labels = _snap(values, centroids)
    np.testing.assert_array_equal(labels, [4, 4, 2, 1, 3])
    out = _values(values, np.ones(5, bool), centroids, labels, np.float32, half=False)
    np.testing.assert_array_equal(out, np.float32([0.0, 0.0, 0.3, -0.2, 1.0]))
    half = _values(values, np.ones(5, bool), centroids, labels, np.float32, half=True)  # rule 8
    np.testing.assert_array_equal(half, np.float16([0.0, 0.0, 0.3, -0.2, 1.0]).astype(np.float32))
    assert half[2] != out[2]  # 0.3 is not a float16
    big = _values(values, np.ones(5, bool), centroids * 1e6, labels, np.float32, half=True)
    np.testing.assert_array_equal(big, np.float32([0.0, 0.0, 3e5, -2e5, 1e6]))  # beyond float16: not rounded


def test_a_channel_of_near_zero_weights_stays_zero() -> None:
    """Rule 6 through the pass: an output channel of ~0 weights (a BN-folded channel with gamma ~0) becomes exactly
    0.0 instead of jumping to the smallest centroid; the other channels get the codebook's values."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((20, 20)).astype(np.float32)
    w[5] = rng.standard_normal(20).astype(np.float32) * 1e-6
    model = Model.load(_gemm_model({"w": w}))
    result = ShareWeights(ShareWeights.Config(bits=2, refine=False, codebook_dtype="weight")).run(model, PassContext())
    (record,) = result.records
    shared = weight_table(model)[0].array
    assert np.all(shared[5] == 0.0)
    levels = np.unique(shared[shared != 0])
    assert levels.size == record["distinct_after"] <= 4
    assert np.abs(levels).min() > 1e3 * np.abs(w[5]).max()  # the nearest centroid is far from the channel's values


def test_float16_codebooks_pack_at_half_size() -> None:
    """Rule 8 with pack_weights: the codebook takes 2 bytes per entry and the packed file decodes to the very
    values the pass wrote."""
    recipe = {"name": "s", "passes": [{"share_weights": {"bits": 4, "refine": False}},
                                      {"pack_weights": {"format": "packed", "huffman": True}}]}
    sizes = {}
    for dtype in ("float16", "weight"):
        recipe["passes"][0]["share_weights"]["codebook_dtype"] = dtype
        result = compress(LENET, recipe=recipe)
        records = result.report.passes[-1].records
        sizes[dtype] = sum(r["sections"]["codebook"] for r in records if r["format"] == "packed")
        shared = {w.name: w.array for w in weight_table(result.model) if w.role == "weight"}
        plain = onnx.load_from_string(unpack(result.model.to_proto()).SerializeToString())
        for init in plain.graph.initializer:
            if init.name in shared and init.name.endswith("weight"):
                np.testing.assert_array_equal(numpy_helper.to_array(init), shared[init.name])
    assert sizes["float16"] * 2 == sizes["weight"]


def test_biases_of_shared_layers_are_rounded_to_float16_and_stored_half() -> None:
    """Rule 8's ``bias_dtype`` with pack_weights' rule 6: the biases become exact float16s, are stored as float16
    behind Cast (standard ONNX), and the packed model computes exactly what the shared one does."""
    recipe = {"name": "s", "passes": [{"share_weights": {"bits": 4, "refine": False}},
                                      {"pack_weights": {"format": "standard"}}]}
    original = {w.name: w.array for w in weight_table(Model.load(LENET)) if w.role == "bias"}
    for dtype in ("float16", "weight"):
        recipe["passes"][0]["share_weights"]["bias_dtype"] = dtype
        shared = compress(LENET, recipe={"passes": recipe["passes"][:1]}).model
        biases = {w.name: w.array for w in weight_table(shared) if w.role == "bias"}
        assert biases.keys() == original.keys() == {"fc1.bias", "fc2.bias", "fc3.bias"}
        for name, b in biases.items():
            exact = np.array_equal(b.astype(np.float16).astype(np.float32), b)
            assert exact == (dtype == "float16"), name
            if dtype == "weight":
                np.testing.assert_array_equal(b, original[name])
            else:
                np.testing.assert_allclose(b, original[name], rtol=2**-11, atol=1e-7)
        packed = compress(LENET, recipe=recipe)
        half = [r["weight"] for r in packed.report.passes[-1].records if r["format"] == "float16"]
        # fc3.bias has 10 values: 20 bytes saved do not pay for the Cast node. fc3.weight (1000 values, below
        # min_elements: not packed) holds float16 centroids either way.
        assert half == (["fc1.bias", "fc2.bias", "fc3.weight"] if dtype == "float16" else ["fc3.weight"])
        x = {"input": np.load(TEST)["input"][:64].astype(np.float32)}
        np.testing.assert_array_equal(run_ort(packed.model.to_proto(), x)[0], run_ort(shared.to_proto(), x)[0])
