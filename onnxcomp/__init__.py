"""onnxcomp: compress exported ONNX models.

    import onnxcomp
    result = onnxcomp.compress("model.onnx", recipe="cleanup", output="out.onnx")
    print(result.report.to_text())

The public API is :mod:`onnxcomp.api`'s; its functions are importable from here. They load on first use, so
``import onnxcomp`` stays cheap and the packages below the API (``onnxcomp.ir``, ...) import without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compress", "evaluate", "inspect", "load", "save", "channel_groups", "OnnxcompError"]


def __getattr__(name: str) -> Any:
    if name == "OnnxcompError":
        from onnxcomp.errors import OnnxcompError

        return OnnxcompError
    if name in __all__:
        from onnxcomp import api

        return getattr(api, name)
    raise AttributeError(f"module 'onnxcomp' has no attribute {name!r}")
