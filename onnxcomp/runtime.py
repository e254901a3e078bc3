"""onnxruntime sessions for what onnxcomp reads and writes.

:func:`session` builds a CPU session from a path, a ModelProto or a :class:`~onnxcomp.model.Model`, with
onnxruntime's usual optimisations, and turns onnxruntime's refusal of a model into an :class:`OnnxcompError`.
Models larger than protobuf's 2 GB limit are handed to onnxruntime by path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from onnxcomp.errors import ModelLoadError
from onnxcomp.model import EXTERNAL_DATA_THRESHOLD, Model, save_proto


def session_options(threads: int = 0, optimize: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def session(
    model: str | os.PathLike | onnx.ModelProto | Model,
    threads: int = 0,
    optimize: bool = True,
) -> ort.InferenceSession:
    so = session_options(threads, optimize)
    try:
        if isinstance(model, (str, os.PathLike)):
            return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        proto = model.to_proto() if isinstance(model, Model) else model
        if proto.ByteSize() > EXTERNAL_DATA_THRESHOLD:
            with tempfile.TemporaryDirectory() as tmp:
                path = save_proto(proto, Path(tmp) / "model.onnx", external_data=True)
                return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):  # onnxruntime's Fail, NoSuchFile, InvalidGraph ...
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"onnxruntime cannot load the model: {first}") from None

