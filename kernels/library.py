"""onnxcomp's native custom-op library (``kernels/native/*.cc``, built at install as ``onnxcomp.kernels._native``).

:func:`register` adds it to an onnxruntime ``SessionOptions`` (``register_custom_ops_library``), so that the
``ai.onnxcomp`` ops of a model run on the native kernels. Without it (no C++ compiler or onnxruntime headers at
install time, or a library onnxruntime refuses) every onnxcomp model still runs: packed weights are decoded in
Python, and sparse and codebook ops run their model-local ONNX functions (the dense equivalent, in stock
onnxruntime). :func:`absent_reason` is the one line that says so and how to get the library.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

REBUILD = ("reinstall with a C++17 compiler present (apt-get install g++) and network access to Debian's "
           "archive, or ONNXCOMP_ORT_INCLUDE pointing at onnxruntime's headers: pip install --force-reinstall .")


_refused: str | None = None  # onnxruntime's refusal of the library, once seen: then it counts as absent


def library_path() -> Path | None:
    """The built library's file, or None when the install built none or onnxruntime refused it
    (``ONNXCOMP_NO_NATIVE=1`` hides it; read at every call, so that one run or test can turn it off)."""
    if os.environ.get("ONNXCOMP_NO_NATIVE") or _refused is not None:
        return None
    return _built()


@functools.lru_cache(maxsize=1)
def _built() -> Path | None:
    spec = importlib.util.find_spec("onnxcomp.kernels._native")
    return Path(spec.origin) if spec is not None and spec.origin else None


def absent_reason() -> str | None:
    """None when the library is there, else one line: what is missing and how to get it."""
    if os.environ.get("ONNXCOMP_NO_NATIVE"):
        return "onnxcomp's native kernels are off (ONNXCOMP_NO_NATIVE is set)"
    if _refused is not None:
        return f"onnxcomp's native kernels are off: onnxruntime refused the library ({_refused}); {REBUILD}"
    if library_path() is None:
        return f"onnxcomp's native kernels were not built at install time; {REBUILD}"
    return None


def register(options) -> bool:
    """Add the library to ``options`` (an ``onnxruntime.SessionOptions``); False when it is absent or onnxruntime
    refuses it (a library built against other headers): the caller then runs without it."""
    global _refused
    path = library_path()
    if path is None:
        return False
    try:
        options.register_custom_ops_library(str(path))
    except Exception as e:  # onnxruntime's own exception types: Fail, InvalidArgument, ...
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        _refused = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return False
    return True


_INPUT_TYPES = {"A": 1, "X": 1, "values": 1, "bias": 1, "codebook": 1, "indices": 6, "codes": 2}  # FLOAT, INT32, UINT8


@functools.cache
def provides(op: str) -> bool:
    """Whether the library has a native kernel for the compute op ``op`` (kernels/schema.py): onnxruntime is asked
    to build a session holding only that op, with no function to fall back to."""
    if library_path() is None:
        return False
    import onnxruntime as ort
    from onnx import helper

    from onnxcomp.kernels import schema

    base, _ = schema.base_op(op)
    if base not in schema.INPUTS:
        return False
    inputs = [helper.make_tensor_value_info(n, _INPUT_TYPES[n], None) for n in schema.INPUTS[base]]
    attrs = {schema.ATTR_SHAPE: [1, 1] if base != schema.SPARSE_CONV else [1, 1, 1, 1]}
    node = helper.make_node(op, [i.name for i in inputs], ["Y"], domain=schema.DOMAIN, **attrs)
    graph = helper.make_graph([node], "probe", inputs, [helper.make_tensor_value_info("Y", 1, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(schema.DOMAIN, 1)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    register(options)
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime's Fail: the op is not registered
        return False
    return True
