"""The pass protocol: a pass, its result and its context (the pipeline that runs passes is onnxcomp.pipeline).

A pass is a small object built from a frozen config dataclass. ``run(model, ctx)`` changes the model in place
and returns a :class:`PassResult`: whether anything changed, one record per layer it touched (for the report),
and what it skipped and why. A pass declares what it needs (``requires``: calibration data, ...) and
``check_requirements`` refuses, with a message naming the pass and the missing piece, before any pass runs.

This module is not a pass: it is what every pass module of this package builds on.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from onnxcomp.errors import PassError, RecipeError
from onnxcomp.ir.model import Model


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

    calibration: Any = None  # onnxcomp.calibration.data.CalibrationData
    seed: int = 0
    progress: bool = False


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 open_min: bool = False, open_max: bool = False, integer: bool = False) -> None:
    """Raise RecipeError unless ``value`` is a finite number (an integer with ``integer``) within the bounds."""
    kind = "an integer" if integer else "a number"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if open_min else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if open_max else value <= maximum
    if not ok:
        lo = "" if minimum is None else f"{'>' if open_min else '>='} {minimum:g}"
        hi = "" if maximum is None else f"{'<' if open_max else '<='} {maximum:g}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise RecipeError(f"{name} must be {kind}{' ' + bounds if bounds else ''}, got {value!r}")


@dataclass(frozen=True)
class Requirement:
    """A precondition of a pass: ``what`` it needs, ``why`` (the part of its configuration that needs it) and what
    the user can do ``instead`` of supplying it (a config change), for the message."""

    what: str  # one of REQUIREMENTS
    why: str = ""
    instead: str = ""


# requirement -> (what is missing, how to supply it)
REQUIREMENTS = {
    "calibration": ("calibration data", "pass --calib DATA (an .npz or a folder)"),
    "shapes": ("concrete input shapes",
               "pass --calib DATA (its first feed gives free dimensions) or export the model with fixed input "
               "dimensions other than the batch"),
    "opset10": ("ai.onnx opset >= 10 (QuantizeLinear)", "convert the model to opset 10 or newer"),
}


class Pass:
    """Base class. Subclasses set ``name``, ``Config`` and implement ``run``; what a configuration needs is
    :meth:`requirements`, checked before any pass of a pipeline runs (:meth:`check_requirements`: what the run
    context must supply) and again on the model the pass receives (:meth:`check_model`)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    requires: ClassVar[frozenset[str]] = frozenset()  # requirements of every configuration (keys of REQUIREMENTS)
    description: ClassVar[str] = ""

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def requirements(self) -> list[Requirement]:
        """Every precondition of this configuration; passes whose needs depend on options extend it."""
        return [Requirement(what) for what in sorted(self.requires)]

    def check_requirements(self, ctx: PassContext) -> None:
        """Fail before any work when the context lacks what the configuration needs (calibration data)."""
        for req in self.requirements():
            if req.what == "calibration" and ctx.calibration is None:
                raise self._missing(req)

    def check_model(self, model: Model, ctx: PassContext) -> None:
        """Fail before the pass changes anything when the model it receives lacks what it needs."""
        for req in self.requirements():
            if req.what == "opset10" and model.opset < 10:
                raise self._missing(req, f"; the model has {model.opset}")
            if req.what == "shapes" and ctx.calibration is None:
                free = _free_input(model)
                if free:
                    raise self._missing(req, f"; input {free}")

    def _missing(self, req: Requirement, detail: str = "") -> PassError:
        what, supply = REQUIREMENTS[req.what]
        why = f" for {req.why}" if req.why else ""
        instead = f" (or {req.instead})" if req.instead else ""
        return PassError(f"pass '{self.name}' needs {what}{why}{detail}: {supply}{instead}")

    def run(self, model: Model, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"{self.name}({opts})"


def _free_input(model: Model) -> str | None:
    """The first graph input with a free dimension past the batch axis, described, or None."""
    for t in model.graph.inputs:
        dims = list(t.shape or [])
        if t.shape is None or any(not isinstance(d, int) or d < 0 for d in dims[1:]):
            return f"'{t.name}' has shape {dims if t.shape is not None else 'unknown'}"
    return None
