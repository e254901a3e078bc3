"""The pass protocol and the pipeline: every precondition a configuration has is declared and checked before work."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import PassError
from onnxcomp.ir.model import Model
from onnxcomp.passes import PruneFilters, PruneMagnitude, QuantizeActivations, QuantizeWeights, ShareWeights
from onnxcomp.passes.base import PassContext
from onnxcomp.passes.prune_filters import FilterPruneConfig
from onnxcomp.passes.prune_magnitude import MagnitudePruneConfig
from onnxcomp.passes.quantize_weights import QuantizeWeightsConfig
from onnxcomp.passes.share_weights import ShareWeightsConfig
from onnxcomp.pipeline import Pipeline


def _conv_model(spatial, opset: int = 17) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(np.random.default_rng(1).standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, *spatial])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_requirements_follow_the_configuration() -> None:
    def needs(p):
        return {r.what for r in p.requirements()}

    assert needs(PruneFilters(FilterPruneConfig(repair=False, criterion="l1"))) == {"shapes"}
    assert needs(PruneFilters()) >= {"shapes", "calibration"}
    assert needs(PruneMagnitude(MagnitudePruneConfig(mode="layer", compensate=False))) == set()
    assert needs(PruneMagnitude(MagnitudePruneConfig(mode="auto"))) == {"calibration"}
    assert needs(QuantizeWeights(QuantizeWeightsConfig(bits=8))) == set()
    assert needs(QuantizeWeights(QuantizeWeightsConfig(bits="auto"))) == {"calibration"}
    assert needs(ShareWeights(ShareWeightsConfig(bits="auto"))) == {"calibration"}
    assert needs(QuantizeActivations()) == {"calibration", "opset10"}


def test_free_spatial_dims_stop_filter_pruning_before_it_runs() -> None:
    model = Model.load(_conv_model(["h", "w"]))
    before = model.to_proto().SerializeToString()
    pipeline = Pipeline([PruneFilters(FilterPruneConfig(repair=False, criterion="l1", round_to=1))])
    with pytest.raises(PassError, match="needs concrete input shapes for MACs and channel shapes; input 'x'") as e:
        pipeline.run(model, PassContext())
    assert "\n" not in str(e.value)
    assert model.to_proto().SerializeToString() == before


def test_fixed_dims_need_no_calibration() -> None:
    """Must not fire: the same graph with fixed spatial dims prunes without calibration data."""
    model = Model.load(_conv_model([8, 8]))
    outcome = Pipeline([PruneFilters(FilterPruneConfig(repair=False, criterion="l1", round_to=1))]).run(
        model, PassContext())
    assert outcome[0].result.modified


def test_old_opset_stops_activation_quantization() -> None:
    model = Model.load(_conv_model([8, 8], opset=9))
    calibration = [{"x": np.zeros((1, 3, 8, 8), np.float32)}]
    with pytest.raises(PassError, match=r"opset >= 10 \(QuantizeLinear\); the model has 9"):
        Pipeline([QuantizeActivations()]).run(model, PassContext(calibration=calibration))


def test_calibration_is_checked_before_any_pass_runs() -> None:
    model = Model.load(_conv_model([8, 8]))
    before = model.to_proto().SerializeToString()
    first = PruneMagnitude(MagnitudePruneConfig(mode="layer", compensate=False, sparsity=0.5))
    with pytest.raises(PassError, match="'quantize_weights' needs calibration data for bits: auto.*give fixed bits"):
        Pipeline([first, QuantizeWeights(QuantizeWeightsConfig(bits="auto"))]).run(model, PassContext())
    assert model.to_proto().SerializeToString() == before  # the first pass did not run either
