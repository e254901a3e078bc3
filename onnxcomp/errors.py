"""The one exception family of onnxcomp.

Every error a user can cause (a bad file, a bad recipe, calibration data that does not fit the model, an
output path that cannot be written) is an :class:`OnnxcompError` whose message says what is wrong and what to
do. The CLI prints it as one line and exits with code 2; anything else is a bug.
"""

from __future__ import annotations


class OnnxcompError(Exception):
    """Base class: a problem the user can act on."""


class ModelLoadError(OnnxcompError):
    """The input model is missing, unreadable, corrupt or structurally invalid."""


class RecipeError(OnnxcompError):
    """A recipe names an unknown pass or option, or an option has the wrong type or value."""


class CalibrationError(OnnxcompError):
    """Calibration data does not match the model (input names, ranks, fixed dimensions) or cannot be read."""


class OutputError(OnnxcompError):
    """The output path cannot be written (same as the input, folder missing or not writable)."""


class PassError(OnnxcompError):
    """A pass cannot run on this model (a requirement is missing)."""


class ComparisonError(OnnxcompError):
    """Two models cannot be compared: their outputs differ in names, count or shapes."""


class RunError(OnnxcompError):
    """onnxruntime failed while running the model on the given feeds (shapes or values it cannot compute)."""


class CodecError(OnnxcompError):
    """A packed weight cannot be encoded or decoded (a corrupt or truncated blob, an invalid Huffman table)."""
