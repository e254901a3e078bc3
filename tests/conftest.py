"""Shared fixtures: the repository root on sys.path (for ``models``), bundled models and data, tiny graphs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    """CLI tests check the one-line error contract, which ONNXCOMP_DEBUG=1 (tracebacks) would break."""
    monkeypatch.delenv("ONNXCOMP_DEBUG", raising=False)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``onnxcomp ARGS`` in process: (exit code, stdout, stderr)."""
    from onnxcomp.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = exc.value.code
    return (0 if code is None else code), out, err


def run_ort(model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnxcomp.runtime import session

    return session(model).run(None, feed)


def run_ort_unfused(model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's own meaning: onnxruntime with graph optimizations off (QDQ runs as float ops, no fused kernels)."""
    from onnxcomp.runtime import session

    return session(model, optimize=False).run(None, feed)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a| (0 when both are zero)."""
    scale = float(np.abs(a).max()) if a.size else 0.0
    diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
    return diff / scale if scale > 0 else diff


def parse(text: str) -> onnx.ModelProto:
    """A model from onnx.parser text, with the IR version onnxruntime reads."""
    model = onnx.parser.parse_model(text)
    return model
