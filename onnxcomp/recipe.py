"""Recipes: an ordered list of passes with typed, validated options, written in YAML or given as a dict.

```yaml
name: my-recipe
description: what it is for
holdout: 0.25            # share of the calibration samples kept back to measure fidelity
passes:
  - fold_constants
  - fold_batchnorm: {}
  - some_pass: {option: 3}
```

Each pass's options are the fields of its frozen config dataclass; an unknown pass, an unknown option or a
value of the wrong type is a :class:`RecipeError` naming it and what is allowed. Built-in recipes live as YAML
files in ``onnxcomp/recipes/`` and are listed by ``onnxcomp recipes``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from onnxcomp.errors import RecipeError
from onnxcomp.ir.fileio import exists
from onnxcomp.passes import PASSES
from onnxcomp.passes.base import Pass
from onnxcomp.pipeline import Pipeline

BUILTIN_DIR = Path(__file__).parent / "recipes"
_TOP_KEYS = ("name", "description", "holdout", "passes")


@dataclass(frozen=True)
class Step:
    name: str
    config: Any

    def build(self) -> Pass:
        return PASSES[self.name](self.config)


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[Step, ...]
    description: str = ""
    holdout: float = 0.25

    def pipeline(self) -> Pipeline:
        return Pipeline([s.build() for s in self.steps])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "holdout": self.holdout,
            "passes": [{s.name: dataclasses.asdict(s.config)} for s in self.steps],
        }


def builtin_recipes() -> dict[str, str]:
    """Name -> description of every built-in recipe."""
    out = {}
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        out[path.stem] = load_recipe(path).description
    return out


def load_recipe(spec: str | os.PathLike | dict | Recipe) -> Recipe:
    """A built-in name, a YAML file, a dict, or a Recipe (returned as is). Names joined by ``+`` chain recipes
    (``slim+int8``: the passes of each in order, the largest holdout)."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, dict):
        return parse_recipe(spec, "recipe")
    if not isinstance(spec, (str, os.PathLike)):
        raise RecipeError(f"a recipe is a built-in name, a YAML path, a dict or a Recipe, not a {type(spec).__name__}")
    if isinstance(spec, str) and "+" in spec and not exists(spec):
        parts = [load_recipe(part) for part in spec.split("+") if part]
        if not parts:
            raise RecipeError(f"recipe '{spec}' names no recipe")
        return Recipe(name=spec, steps=tuple(s for r in parts for s in r.steps),
                      description=" + ".join(r.name for r in parts), holdout=max(r.holdout for r in parts))
    path = Path(spec)
    if not path.suffix and exists(BUILTIN_DIR / f"{spec}.yaml"):
        path = BUILTIN_DIR / f"{spec}.yaml"
    elif not exists(path):
        known = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml")))
        raise RecipeError(f"unknown recipe '{spec}': not a built-in recipe ({known}) nor an existing file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe {path}: {e}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping with a 'passes' list")
    data.setdefault("name", path.stem)
    return parse_recipe(data, f"recipe {path}")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (YAML itself keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def recipe_files(spec: str | os.PathLike | dict | Recipe) -> list[Path]:
    """The recipe files (not built-ins) that loading ``spec`` reads: outputs must not land on them."""
    if not isinstance(spec, (str, os.PathLike)):
        return []
    parts = [spec] if exists(spec) or not isinstance(spec, str) else spec.split("+")
    return [Path(p) for p in parts if p and exists(p) and Path(p).suffix]


def parse_recipe(data: dict, where: str = "recipe") -> Recipe:
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise RecipeError(f"{where}: unknown key '{unknown[0]}'; allowed keys: {', '.join(_TOP_KEYS)}")
    passes = data.get("passes")
    if not isinstance(passes, list) or not passes:
        raise RecipeError(f"{where}: 'passes' must be a non-empty list of pass names or {{name: options}}")
    steps = tuple(_parse_step(entry, where) for entry in passes)
    holdout = _coerce(data.get("holdout", 0.25), float, f"{where}: holdout")
    if not 0.0 < holdout < 1.0:
        raise RecipeError(f"{where}: holdout must be between 0 and 1 (exclusive), got {holdout}")
    return Recipe(
        name=str(data.get("name", "recipe")),
        steps=steps,
        description=str(data.get("description", "")),
        holdout=holdout,
    )


def _parse_step(entry: Any, where: str) -> Step:
    if isinstance(entry, str):
        name, options = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, options = next(iter(entry.items()))
        options = options or {}
    else:
        raise RecipeError(f"{where}: each pass is a name or a one-key mapping {{name: options}}, got {entry!r}")
    if name not in PASSES:
        raise RecipeError(f"{where}: unknown pass '{name}'; known passes: {', '.join(sorted(PASSES))}")
    if not isinstance(options, dict):
        raise RecipeError(f"{where}: options of pass '{name}' must be a mapping, got {options!r}")
    config_cls = PASSES[name].Config
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values = {}
    for key, value in options.items():
        if key not in fields:
            allowed = ", ".join(fields) or "none"
            raise RecipeError(f"{where}: pass '{name}' has no option '{key}'; its options: {allowed}")
        values[key] = _coerce(value, hints[key], f"{where}: option '{key}' of pass '{name}'")
    try:
        config = config_cls(**values)
    except (TypeError, ValueError, RecipeError) as e:  # configs raise RecipeError; TypeError for odd values
        raise RecipeError(f"{where}: pass '{name}': {e}") from None
    return Step(name, config)


def _coerce(value: Any, type_: Any, where: str) -> Any:
    """Check a YAML value against a config field's type hint, converting where YAML is loose (int -> float)."""
    origin = typing.get_origin(type_)
    args = typing.get_args(type_)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise RecipeError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            value = [value]
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, where) for k, v in value.items()}
    if type_ is Any:
        return value
    if type_ is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, got {value!r}")
        return value
    if type_ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise RecipeError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if type_ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, got {value!r}")
        return value
    if type_ is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where} must be a string, got {value!r}")
        return value
    return value
