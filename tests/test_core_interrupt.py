"""Ctrl-C during a compress run leaves no output that looks complete, and finetune/evaluate stages run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT


BLOCKING_STAGE = """
import pathlib, time
from edgekit.stages import StageConfig, register_stage

class BlockConfig(StageConfig):
    marker: str

@register_stage("block_until_interrupted", config=BlockConfig, summary="test plugin: signals it runs, then waits")
def block(model, cfg, ctx):
    pathlib.Path(cfg.marker).write_text(str(ctx.out_dir))
    while True:
        time.sleep(0.05)
"""


def test_sigint_mid_stage_leaves_nothing(tmp_path):
    """Interrupted inside a stage (a plugin stage that says when it runs: no timing guess), nothing is left."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "block_plugin.py").write_text(BLOCKING_STAGE)
    marker = tmp_path / "running"
    recipe = work / "long.yaml"
    recipe.write_text(f"name: long\nstages:\n  - fuse: {{}}\n  - block_until_interrupted: {{marker: '{marker}'}}\n")
    out = work / "out"
    env = {**os.environ, "EDGEKIT_NO_PROGRESS": "1", "EDGEKIT_PLUGINS": "block_plugin",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "compress", "--recipe", str(recipe), "--out", str(out), "--no-latency"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), f"run never reached its blocking stage: {proc.communicate(timeout=60)[1][-2000:]}"
    assert ".out.tmp-" in marker.read_text()  # the stage runs inside the temporary output directory
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not out.exists()
    assert sorted(p.name for p in work.iterdir()) == ["long.yaml"]


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
