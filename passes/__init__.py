"""The registry of passes: recipe name -> pass class. One pass per module in this package."""

from __future__ import annotations

from onnxcomp.passes.dedupe_constants import DedupeConstants
from onnxcomp.passes.eliminate_dead import EliminateDead
from onnxcomp.passes.eliminate_identity import EliminateIdentity
from onnxcomp.passes.fold_batchnorm import FoldBatchNorm
from onnxcomp.passes.fold_constants import FoldConstants
from onnxcomp.passes.pack_weights import PackWeights
from onnxcomp.passes.prune_filters import PruneFilters
from onnxcomp.passes.prune_magnitude import PruneMagnitude
from onnxcomp.passes.quantize_activations import QuantizeActivations
from onnxcomp.passes.quantize_weights import QuantizeWeights
from onnxcomp.passes.share_weights import ShareWeights
from onnxcomp.passes.shorten_names import ShortenNames
from onnxcomp.passes.strip_defaults import StripDefaults

PASSES = {
    cls.name: cls
    for cls in (
        FoldConstants,
        EliminateIdentity,
        FoldBatchNorm,
        EliminateDead,
        DedupeConstants,
        PruneMagnitude,
        PruneFilters,
        ShareWeights,
        QuantizeWeights,
        QuantizeActivations,
        PackWeights,
        ShortenNames,
        StripDefaults,
    )
}

__all__ = [
    "PASSES",
    "DedupeConstants",
    "EliminateDead",
    "EliminateIdentity",
    "FoldBatchNorm",
    "FoldConstants",
    "PackWeights",
    "PruneFilters",
    "PruneMagnitude",
    "QuantizeActivations",
    "QuantizeWeights",
    "ShareWeights",
    "ShortenNames",
    "StripDefaults",
]
