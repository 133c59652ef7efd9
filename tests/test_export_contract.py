"""Export naming, the validation contract shared with `edgekit profile`, the runtime registry, and the
"export it first" answer of `edgekit profile` on a compress output (issue 13 items 5-7, issue 16 item 6)."""

from __future__ import annotations

import json

import pytest

from edgekit.errors import UserInputError


def _fake_compress_output(path, recipe="int8-sym", stages=({"quantize": {"symmetric_activations": True}},)):
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({
        "edgekit_manifest": 1, "kind": "compressed-model", "model": "convnet", "model_file": "model.pt2",
        "recipe": {"name": recipe, "stages": list(stages)}, "files": {},
    }))
    return path


def test_default_export_folder_names_model_recipe_target_precision():
    from edgekit.exporters.base import default_out

    assert default_out("vit", "onnx", "fp32", "bivit-w1a8").name == "vit-bivit-w1a8-onnx-fp32"
    assert default_out("vit", "onnx", "fp32").name == "vit-onnx-fp32"  # a model no recipe made
    assert default_out("vit", "onnx", "fp32", "bivit-w1a8") != default_out("vit", "onnx", "fp32")


def test_source_reads_the_recipe_of_a_compress_output(tmp_path):
    from edgekit.exporters.source import ExportSource, compress_recipe

    d = _fake_compress_output(tmp_path / "c", "sparse-2to4", ({"sparsify": {"n": 2, "m": 4}},))
    recipe, stages, path = compress_recipe(d)
    src = ExportSource(None, "convnet", recipe, stages, path)
    assert recipe == "sparse-2to4" and src.nm() == (2, 4) and src.stage("quantize") is None
    assert compress_recipe("convnet") == (None, [], None)


def test_profile_of_a_compress_output_says_export_first(tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli.main import app

    d = _fake_compress_output(tmp_path / "c")
    res = CliRunner().invoke(app, ["profile", str(d)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "export it first" in text and f"edgekit export {d} --target onnx" in text
    assert "edgekit profile edgekit-out/convnet-int8-sym-onnx-int8" in text
    assert "missing key" not in text


def test_contract_is_the_one_table_of_tolerances():
    from edgekit.exporters.runtimes import contract_for
    from edgekit.exporters.validation import TOLERANCES

    for precision, tol in TOLERANCES.items():
        c = contract_for(precision)
        assert c.cosine == tol["cosine"][1] and set(c.tolerances) == set(tol)
        assert c.runtime.openvino_precision_hint == "f32" and c.runtime.threads >= 1
    assert contract_for("int8").cosine == 0.99
    with pytest.raises(UserInputError, match="accepted"):
        contract_for("int4")


def test_profiler_threshold_comes_from_the_export_contract(tmp_path):
    from edgekit.devices.artifact import Artifact

    art = Artifact(tmp_path, "onnx", "model.onnx", {}, precision="int8",
                   manifest={"validation_contract": {"cosine": 0.99}})
    assert art.cosine_threshold == 0.99


def test_runtime_registry_is_read_by_latency_and_targets():
    from edgekit.exporters.base import capabilities, target_names
    from edgekit.exporters.runtimes import RUNTIMES, latency_runtimes, runtime_for_target

    assert set(latency_runtimes()) == {"torch", "onnxruntime", "openvino", "tvm"}
    for target in target_names():
        name = runtime_for_target(target)
        assert name in RUNTIMES and target in RUNTIMES.get(name).targets
        assert capabilities(target).precisions
    with pytest.raises(UserInputError, match="tflite"):
        runtime_for_target("tflite")


def test_onnx_export_leaves_the_root_logger_alone(tmp_path):
    import logging

    import numpy as np
    import torch
    from torch import nn

    from edgekit.exporters.onnx import quantize_static_qdq, to_onnx

    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        path = to_onnx(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
        quantize_static_qdq(path, tmp_path / "q.onnx", np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)
