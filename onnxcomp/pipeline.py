"""The pipeline: runs passes (:mod:`onnxcomp.passes.base`) in order on one model.

Every pass's requirements are checked before any pass runs, so a missing piece (calibration data, ...) stops
the run before any work is done, with a message naming the pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from onnxcomp.ir.model import Model
from onnxcomp.passes.base import Pass, PassContext, PassResult


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
            p.check_model(model, ctx)  # the model as earlier passes left it
            result = p.run(model, ctx)
            outcomes.append(StepOutcome(p.name, result, time.perf_counter() - start))
        return outcomes
