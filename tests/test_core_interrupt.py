"""Ctrl-C during a compress run leaves no output that looks complete, and finetune/evaluate stages run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT


def test_sigint_mid_stage_leaves_nothing(tmp_path):
    recipe = tmp_path / "long.yaml"
    recipe.write_text("name: long\nstages:\n  - fuse: {}\n  - finetune: {epochs: 500}\n")
    out = tmp_path / "out"
    env = {**os.environ, "EDGEKIT_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "compress", "--recipe", str(recipe), "--out", str(out), "--no-latency"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()):
        time.sleep(0.2)  # wait until the stages run inside the temporary output directory
    assert any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()), "run never reached its stages"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.yaml"]


def test_finetune_and_evaluate_stages(digits):
    import edgekit
    from edgekit import models

    model = models.create("convnet", pretrained=False)
    recipe_overrides = ["finetune.epochs=3"]
    from edgekit.recipe import load_recipe
    import tempfile, pathlib  # noqa: E401

    with tempfile.TemporaryDirectory() as d:
        p = pathlib.Path(d) / "r.yaml"
        p.write_text("name: ft\nstages:\n  - evaluate: {}\n  - finetune: {lr: 0.003}\n  - evaluate: {split: calib}\n")
        rec = load_recipe(p, recipe_overrides)
    res = edgekit.compress(model, rec, digits, latency=False)
    first, ft, last = (s.report for s in res.report.stages)
    assert first["accuracy"] < 0.5  # untrained
    assert ft["accuracy"] > first["accuracy"] + 0.3 and last["split"] == "calib"
    assert res.report.accuracy.after == ft["accuracy"]
