"""Recipe parsing and validation: every mistake names the pass or option and what is allowed."""

from __future__ import annotations

import pytest

from onnxcomp.errors import RecipeError
from onnxcomp.passes import PASSES
from onnxcomp.recipe import builtin_recipes, load_recipe


def test_builtin_cleanup() -> None:
    recipe = load_recipe("cleanup")
    assert [s.name for s in recipe.steps] == ["fold_constants", "eliminate_identity", "fold_batchnorm",
                                              "eliminate_dead"]
    assert "cleanup" in builtin_recipes()


def test_every_builtin_recipe_loads() -> None:
    for name in builtin_recipes():
        assert load_recipe(name).steps


def test_yaml_file_with_options(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("passes:\n  - fold_constants: {max_growth: 2, small_bytes: 100}\n  - eliminate_dead\n")
    recipe = load_recipe(path)
    assert recipe.name == "r"
    config = recipe.steps[0].config
    assert config.max_growth == 2.0 and isinstance(config.max_growth, float) and config.small_bytes == 100


def test_dict_recipe_round_trips() -> None:
    recipe = load_recipe({"name": "x", "passes": ["fold_batchnorm", {"fold_constants": {"max_growth": 1.5}}]})
    again = load_recipe(recipe.to_dict())
    assert again == recipe


@pytest.mark.parametrize(
    "data, words",
    [
        ({"passes": ["no_such_pass"]}, ["unknown pass 'no_such_pass'", "fold_batchnorm"]),
        ({"passes": [{"fold_constants": {"bogus": 1}}]}, ["no option 'bogus'", "max_growth"]),
        ({"passes": [{"fold_constants": {"small_bytes": "lots"}}]}, ["small_bytes", "integer"]),
        ({"passes": [{"fold_constants": {"max_growth": True}}]}, ["max_growth", "number"]),
        ({"passes": [{"fold_batchnorm": {"x": 1}}]}, ["no option 'x'", "none"]),
        ({"passes": []}, ["non-empty list"]),
        ({"pases": ["fold_batchnorm"]}, ["unknown key 'pases'", "passes"]),
        ({"passes": ["fold_batchnorm"], "holdout": 2}, ["holdout"]),
        ({"passes": [["fold_batchnorm"]]}, ["one-key mapping"]),
    ],
)
def test_bad_recipes_name_the_problem(data, words) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(data)
    for word in words:
        assert word in str(err.value)


def test_unknown_recipe_name_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(RecipeError, match="unknown recipe 'nope'.*cleanup"):
        load_recipe("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("passes: [fold_constants\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(scalar)


def test_every_pass_has_a_frozen_config_and_docstring() -> None:
    import dataclasses

    for name, cls in PASSES.items():
        assert cls.name == name and cls.__doc__ is None or cls.description
        assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen
        assert __import__(cls.__module__, fromlist=["_"]).__doc__
