"""The recipe x target table of docs/targets.md keeps one row per (recipe, model)."""

from edgekit.exporters.matrix import render_composition


def _row(recipe, model, target, cos):
    return {"recipe": recipe, "model": model, "target": target, "precision": "int8", "state": "works",
            "metrics": {"cosine": cos}, "reason": ""}


def test_a_recipe_run_on_two_models_gets_two_rows():
    rows = [_row("int8", "convnet", "onnx", 1.0), _row("int8", "detector", "onnx", 0.99997)]
    text = render_composition(rows, "cmd", None)
    table = [line for line in text.splitlines() if line.startswith("| int8 (")]
    assert [line.split(" | ")[0] for line in table] == ["| int8 (convnet)", "| int8 (detector)"]
    assert "0.99997" in table[1] and "0.99997" not in table[0]
