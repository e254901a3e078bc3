"""The layers of onnxcomp import one way only, and every package folder is installed.

Layers, lowest first (docs/architecture.md): errors -> progress, limits -> ir and codecs -> kernels -> runtime ->
calibration -> analysis | numerics (siblings: neither imports the other) -> measure -> emit -> passes ->
pipeline / recipe / api / cli. A module may import its own package and any lower layer, never a higher one or a
sibling; library code never imports the repository's ``models``, ``tests`` or ``benchmarks``. Imports inside
functions count the same as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package prefix -> rank; same rank, different prefix: siblings (no imports between them)
RANKS = {
    "onnxcomp.errors": 0,
    "onnxcomp.progress": 0.5,  # progress and limits may raise the errors of onnxcomp.errors
    "onnxcomp.limits": 0.5,
    "onnxcomp.ir": 1,
    "onnxcomp.codecs": 1,
    "onnxcomp.kernels": 2,
    "onnxcomp.runtime": 3,
    "onnxcomp.calibration": 4,
    "onnxcomp.analysis": 5,
    "onnxcomp.numerics": 5,
    "onnxcomp.measure": 6,
    "onnxcomp.emit": 7,
    "onnxcomp.passes": 8,
    "onnxcomp.pipeline": 9,
    "onnxcomp.recipe": 10,
    "onnxcomp.api": 11,
    "onnxcomp.cli": 12,
    "onnxcomp.__main__": 13,
    "onnxcomp": 14,  # the package itself re-exports the API
}
FOREIGN = ("models", "tests", "benchmarks")
# Modules allowed past ~600 lines, with the reason (house rule: files short enough to read in one sitting).
LONG_MODULES: dict[str, str] = {}
MAX_LINES = 600


def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / "onnxcomp").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        files[".".join(rel.parts).removesuffix(".__init__")] = path
    for folder in ("passes", "kernels"):  # installed as onnxcomp.passes / onnxcomp.kernels (setup.py package_dir)
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            files[".".join(("onnxcomp", folder, *rel.parts)).removesuffix(".__init__")] = path
    return {name: path for name, path in files.items() if "testdata" not in path.parts}


def _layer(module: str) -> str:
    """The longest prefix of RANKS that owns ``module``."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):  # never the bare "onnxcomp": that is the package's own __init__ only
        prefix = ".".join(parts[:n])
        if prefix in RANKS:
            return prefix
    if module == "onnxcomp":
        return module
    raise AssertionError(f"{module} belongs to no layer: add it to RANKS")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # "from onnxcomp.numerics import qscheme" imports the module onnxcomp.numerics.qscheme
            found += [(node.lineno, sub if (sub := f"{node.module}.{alias.name}") in MODULES else node.module)
                      for alias in node.names]
    return found


MODULES = _module_files()


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module: str) -> None:
    own = _layer(module)
    bad = []
    for line, target in _imports(MODULES[module]):
        top = target.split(".")[0]
        if top in FOREIGN:
            bad.append(f"line {line}: {target} (library code must not import the repository's {top}/)")
            continue
        if top != "onnxcomp" or target == "onnxcomp":
            continue
        layer = _layer(target)
        if layer == own:
            continue
        if RANKS[layer] >= RANKS[own]:
            kind = "a sibling" if RANKS[layer] == RANKS[own] else "a higher layer"
            bad.append(f"line {line}: {target} is {kind} ({layer}) of {own}")
    assert not bad, f"{module}: " + "; ".join(bad)


def test_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself: an emitter importing a pass, or numerics importing analysis, is reported; a module
    outside every layer is an error, not a member of the package's top."""
    path = tmp_path / "m.py"
    path.write_text("from onnxcomp.passes.base import Pass\nfrom onnxcomp.analysis import cost\n")
    targets = [t for _, t in _imports(path)]
    assert targets == ["onnxcomp.passes.base", "onnxcomp.analysis.cost"]
    assert RANKS[_layer(targets[0])] > RANKS["onnxcomp.emit"]
    assert RANKS[_layer(targets[1])] == RANKS[_layer("onnxcomp.numerics.obs")]
    with pytest.raises(AssertionError, match="no layer"):
        _layer("onnxcomp.newmodule")


def test_setup_installs_every_package() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    listed = set(ast.literal_eval(next(k.value for k in call.keywords if k.arg == "packages")))
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert packages == listed


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_short(module: str) -> None:
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES or module in LONG_MODULES, f"{module}: {lines} lines, over {MAX_LINES}"
