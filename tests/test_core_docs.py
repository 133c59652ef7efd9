"""docs/recipes.md is generated from the stage config classes and must match them."""

from edgekit import docgen


def test_recipes_doc_is_current():
    assert docgen.main(["--check"]) == 0, "docs/recipes.md is out of date: run python -m edgekit.docgen"


def test_every_stage_and_builtin_recipe_is_documented():
    from edgekit.recipe import builtin_names
    from edgekit.stages import discover

    text = docgen.render()
    for name in discover().names():
        assert f"## Stage `{name}`" in text
    for name in builtin_names():
        assert f"| `{name}` |" in text
