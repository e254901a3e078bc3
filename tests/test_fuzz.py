"""A bounded, seeded fuzz run over onnxcomp's readers (the harness is ``benchmarks/fuzz.py``; its script runs more).

Byte flips and truncations of the bundled models and of packed weights (inside a packed model, and bare blobs,
half of them with a valid CRC) through ``inspect``, ``compress --recipe cleanup``, ``unpack``,
``onnxcomp.runtime.InferenceSession`` and ``kernels.reference.decode_weight``, each in a forked child capped at
2 GB of address space: every run ends with success or one line and exit 2, never exit 1, a traceback, a signal, a
MemoryError or files left by a refused run.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import ROOT

if not hasattr(__import__("os"), "fork"):  # pragma: no cover - the harness forks
    pytest.skip("needs os.fork", allow_module_level=True)


def _harness():
    spec = importlib.util.spec_from_file_location("onnxcomp_fuzz", ROOT / "benchmarks" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_mutated_inputs_end_in_success_or_one_line():
    fuzz = _harness()
    results = fuzz.fuzz(count=150, seed=7, memory=2 << 30)
    failures = [f"{r.entry} {r.case}: {r.status}: {r.detail[:300]}" for r in results if r.failed]
    assert not failures, "\n".join(failures)
    statuses = {r.status for r in results}
    assert statuses == {"ok", "refused"}  # both outcomes occur: the mutations reach past the first check
    assert {r.entry for r in results} == set(fuzz.ENTRY_POINTS)


def test_the_harness_sees_a_failure(monkeypatch, tmp_path):
    """The check itself can fail: a child whose entry point raises something other than an OnnxcompError (inherited
    through the fork) is reported as exit 1 with its traceback; an empty file is a one-line user error."""
    fuzz = _harness()
    assert fuzz.run_case("session", b"", "empty", tmp_path, memory=2 << 30).status == "refused"
    import onnxcomp.runtime

    def broken(*_args, **_kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(onnxcomp.runtime, "InferenceSession", broken)
    outcome = fuzz.run_case("session", b"", "bug", tmp_path, memory=2 << 30)
    assert outcome.status == "exit 1" and "TypeError: a bug" in outcome.detail
