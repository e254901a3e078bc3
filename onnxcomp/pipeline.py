"""Passes and the pipeline that runs them.

A pass is a small object built from a frozen config dataclass. ``run(model, ctx)`` changes the model in place
and returns a :class:`PassResult`: whether anything changed, one record per layer it touched (for the report),
and what it skipped and why. A pass declares what it needs (``requires``: calibration data, ...) and the
pipeline refuses to start it without that, with a message naming the pass and the missing piece, before any
work is done.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from onnxcomp.errors import PassError
from onnxcomp.model import Model


@dataclass(frozen=True)
class EmptyConfig:
    """For passes without options."""


@dataclass
class PassResult:
    modified: bool
    records: list[dict[str, Any]] = field(default_factory=list)  # one row per layer touched
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    notes: list[str] = field(default_factory=list)  # what the user should know that is not a skip (report notes)
    summary: str = ""
    renamed: dict[str, str] = field(default_factory=dict)  # tensor name -> new name (reports show the old ones)
    renamed_nodes: dict[str, str] = field(default_factory=dict)  # node name -> new name


@dataclass
class PassContext:
    """What passes may use besides the model: calibration data, the seed, a progress callback."""

    calibration: Any = None  # onnxcomp.calibration.CalibrationData
    seed: int = 0
    progress: bool = False


class Pass:
    """Base class. Subclasses set ``name``, ``Config`` and implement ``run``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    requires: ClassVar[frozenset[str]] = frozenset()  # subset of {"calibration"}
    description: ClassVar[str] = ""

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def check_requirements(self, ctx: PassContext) -> None:
        if "calibration" in self.requires and ctx.calibration is None:
            raise PassError(f"pass '{self.name}' needs calibration data: pass --calib DATA (an .npz or a folder)")

    def run(self, model: Model, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"{self.name}({opts})"


@dataclass
class StepOutcome:
    name: str
    result: PassResult
    seconds: float


class Pipeline:
    """Runs passes in order; the model changes in place."""

    def __init__(self, passes: Sequence[Pass]):
        self.passes = list(passes)

    def run(
        self,
        model: Model,
        ctx: PassContext,
        on_step: Callable[[int, Pass], None] | None = None,
    ) -> list[StepOutcome]:
        for p in self.passes:  # fail before any work when something is missing
            p.check_requirements(ctx)
        outcomes = []
        for i, p in enumerate(self.passes):
            if on_step is not None:
                on_step(i, p)
            start = time.perf_counter()
            result = p.run(model, ctx)
            outcomes.append(StepOutcome(p.name, result, time.perf_counter() - start))
        return outcomes
