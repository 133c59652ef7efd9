"""I-ViT accuracy on the digits test split: fp32 vs int8 fake-quant (the plain `int8` recipe) vs I-ViT
integer-only (recipe `ivit-int8`: conversion + QAT), for each ViT-style zoo model with a shipped checkpoint.

    flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.ivit_accuracy
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks._report import command_line, machine_note, markdown_table, write_section


def _run_recipe(name: str, model, data):
    from edgekit.recipe import load_recipe
    from edgekit.stages import StageContext, get_stage

    recipe = load_recipe([name], {})
    ctx = StageContext(data, model.eval(), (data.test.x[:1],))
    reports = []
    for st in recipe.stages:
        fn, _ = get_stage(st.name)
        model, rep = fn(model, st.config, ctx)
        reports.append(rep)
    return model, reports


def main() -> None:
    torch.set_num_threads(2)
    from edgekit import models
    from edgekit.data import load_data
    from edgekit.quant.ivit import executor
    from edgekit.training import evaluate

    data = load_data()
    rows, notes = [], []
    for name in models.names():
        if models.info(name).family not in ("vit", "hybrid"):
            continue
        if not models.info(name).checkpoint.is_file():
            notes.append(f"`{name}`: no shipped checkpoint, skipped (train it with `edgekit zoo train {name}`).")
            continue
        fp = models.create(name)
        acc_fp = evaluate(fp, data.test)
        try:
            q8, _ = _run_recipe("int8", models.create(name), data)
            acc_8 = evaluate(q8, data.test)
        except Exception as exc:  # noqa: BLE001 - the int8 column is optional
            acc_8 = float("nan")
            notes.append(f"`{name}` int8: {type(exc).__name__}: {exc}")
        iv, reps = _run_recipe("ivit-int8", models.create(name), data)
        acc_iv = evaluate(iv, data.test)
        x = data.test.x
        exec_pred = np.concatenate([executor.run(iv, x[i : i + 128]).argmax(1) for i in range(0, len(x), 128)])
        acc_exec = float((exec_pred == data.test.y.numpy()).mean())
        rep = reps[-1]
        rows.append([name, 100 * acc_fp, 100 * acc_8, 100 * rep.get("accuracy_converted", float("nan")), 100 * acc_iv,
                     100 * acc_exec, 100 * (acc_iv - acc_fp)])
    md = [
        "## I-ViT accuracy (digits test split, top-1 %)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_note()}.",
        "",
        markdown_table(["model", "fp32", "int8 fake-quant (int8 recipe)", "I-ViT before QAT", "I-ViT after QAT",
                        "I-ViT on the numpy integer executor", "I-ViT - fp32 (points)"], rows),
        "",
        *notes,
    ]
    write_section("ivit-accuracy", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
