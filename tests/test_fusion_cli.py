"""The issue's "done when": `edgekit compress repvgg --recipe deploy` and the same on a hand-written model."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("model", ["repvgg", "tests.models:my_resnet"])
def test_compress_with_the_deploy_recipe(cli, tmp_path, model):
    out = tmp_path / "out"
    result = cli("compress", model, "--recipe", "deploy", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["fidelity"]["cosine"] > 0.99999 and report["fidelity"]["top1_agreement"] == 1.0
    assert report["params"]["after"] < report["params"]["before"]  # BN parameters folded away
    assert (out / "model.pt2").is_file()
    fuse_report = report["stages"][0]["report"]
    assert report["stages"][0]["name"] == "fuse" and fuse_report["left"] == []
    if model == "repvgg":
        assert sum(m["type"] == "RepConv" for m in fuse_report["merged"]) == 6
    else:
        assert len(fuse_report["folded"]) == 15
