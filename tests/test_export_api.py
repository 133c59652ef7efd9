"""The export protocol: bad input rejected before work, the artifact contract, QDQ carry-through, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.records import ModelInfo

from edgekit.errors import EdgekitError, UserInputError


FQNET = ModelInfo(name="fqnet", input_shape=(3, 32, 32))


class FQNet(nn.Module):
    """A tiny model with functional fake-quant ops (what the quant stage produces), per-tensor + per-channel."""

    def __init__(self, qmin: int = -128) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)
        self.qmin = qmin
        w = self.conv.weight.detach()
        self.register_buffer("w_scale", w.abs().amax(dim=(1, 2, 3)) / 127)
        self.register_buffer("w_zp", torch.zeros(8, dtype=torch.int32))

    def forward(self, x):
        x = torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127)
        w = torch.fake_quantize_per_channel_affine(self.conv.weight, self.w_scale, self.w_zp, 0, self.qmin, 127)
        y = torch.relu(nn.functional.conv2d(x, w, self.conv.bias, padding=1))
        y = torch.fake_quantize_per_tensor_affine(y, 0.05, 0, -128, 127)
        return self.head(y.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def convnet():
    import edgekit.models as zoo

    return zoo.create("convnet", pretrained=zoo.info("convnet").checkpoint.is_file())


def _qdq_ops(path):
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


# ---- bad input: clear error, nothing written -------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": "tflite"}, "unknown export target 'tflite'"),
        ({"target": "onnx", "precision": "int4"}, "does not support precision 'int4'"),
        ({"target": "tvm", "precision": "bf16"}, "does not support precision 'bf16'"),
        ({"target": "onnx", "bogus": 1}, "unknown option"),
        ({"target": "onnx", "opset": 13}, "opset=13; accepted: an integer from 17 to 23"),
        ({"target": "tvm", "device": "riscv"}, "device='riscv'; accepted: host, aarch64, cuda"),
    ],
)
def test_bad_request_rejected_before_work(convnet, tmp_path, kwargs, match):
    from edgekit.exporters import export

    target = kwargs.pop("target")
    with pytest.raises(UserInputError, match=match):
        export(convnet, target, out=tmp_path / "a", **kwargs)
    assert not list(tmp_path.iterdir())


def test_wrong_input_shape_is_user_error(convnet, tmp_path):
    from edgekit.exporters import export

    with pytest.raises(UserInputError, match="does not accept an input of shape"):
        export(convnet, "onnx", out=tmp_path / "a", example_inputs=torch.randn(1, 5, 32, 32))
    assert not list(tmp_path.iterdir())


def test_corrupt_onnx_is_user_error(convnet, tmp_path):
    from edgekit.exporters import export, to_onnx

    good = to_onnx(convnet, torch.randn(1, 3, 32, 32), tmp_path / "m.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    with pytest.raises(UserInputError, match="not a valid ONNX model"):
        export(str(bad), "openvino", out=tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_existing_output_refused_without_force(convnet, tmp_path):
    from edgekit.exporters import export

    out = tmp_path / "a"
    export(convnet, "onnx", out=out, validation_samples=8)
    with pytest.raises(UserInputError, match="already exists"):
        export(convnet, "onnx", out=out)
    art = export(convnet, "onnx", out=out, force=True, validation_samples=8)  # --force replaces an edgekit output
    assert (out / "model.onnx").is_file() and art.report.passed


# ---- the artifact contract -----------------------------------------------------------------------------

def test_artifact_contract(convnet, tmp_path):
    from edgekit.artifacts import verify_manifest
    from edgekit.exporters import export

    art = export(convnet, "onnx", "fp16", out=tmp_path / "a", dynamic_batch=True, validation_samples=8)
    m = verify_manifest(art.directory)  # every sha256 matches
    for key in ("target", "model_file", "input_name", "input_shape", "precision", "files", "versions", "export_seconds"):
        assert key in m
    assert m["input_shape"] == [1, 3, 32, 32] and m["input_name"] == "input" and m["dynamic_batch"] is True
    assert set(m["files"]) == {"model.onnx", "reference.npz", "validation.json"}
    ref = np.load(art.directory / "reference.npz", allow_pickle=False)
    assert ref["inputs"].dtype == np.float32 and ref["inputs"].shape[1:] == (3, 32, 32) and 2 <= len(ref["inputs"]) <= 8
    with torch.no_grad():
        want = convnet(torch.from_numpy(ref["inputs"][:1]))
    np.testing.assert_allclose(ref["outputs"][:1], want.numpy(), rtol=1e-5, atol=1e-6)
    val = json.loads((art.directory / "validation.json").read_text())
    assert val["passed"] and {"cosine", "max_abs", "rel_err", "sqnr_db"} <= set(val["outputs"]["output"])
    assert val["top1_agreement"] is not None  # convnet is a 10-class classifier on digits
    # dynamic batch really works: the ONNX takes a batch of 3
    from edgekit.exporters.onnx import ort_runner

    assert ort_runner(art.model_file)(np.zeros((3, 3, 32, 32), np.float32)).shape == (3, 10)


def test_validation_failure_names_worst_output(convnet, tmp_path):
    """A model whose ONNX graph differs from the reference model fails validation; the report names the output."""
    from edgekit.exporters import export, validate

    art = export(convnet, "onnx", out=tmp_path / "a", validation_samples=8)
    other = type(convnet)().eval()  # same architecture, different (random) weights
    rep = validate(art, other, torch.randn(4, 3, 32, 32))
    assert not rep.passed and rep.worst_output == "output" and any("rel_err" in f for f in rep.failures)
    same = validate(art.directory, convnet, torch.randn(4, 3, 32, 32))
    assert same.passed and same.outputs["output"]["rel_err"] <= 1e-4


def test_compare_metrics():
    from edgekit.exporters.validation import compare, judge

    ref = np.array([1.0, 2.0, 3.0])
    m = compare(ref * 1.01, ref)
    assert abs(m["rel_err"] - 0.01) < 1e-9 and abs(m["sqnr_db"] - 40.0) < 1e-6 and m["cosine"] > 0.9999
    assert compare(ref, ref)["sqnr_db"] == float("inf")
    rep = judge("onnx", "fp32", {"output": (ref * 1.01, ref)}, "x")
    assert not rep.passed and "rel_err" in rep.failures[0]
    assert judge("onnx", "fp16", {"output": (ref * 1.01, ref)}, "x").passed  # cosine unchanged by scaling


# ---- ONNX conversion: QDQ, graph modules -------------------------------------------------------------

@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_fake_quant_becomes_qdq(tmp_path, exporter):
    from edgekit.exporters.onnx import ort_runner, to_onnx

    model = FQNet().eval()
    x = torch.randn(2, 3, 32, 32)
    path = to_onnx(model, x[:1], tmp_path / "q.onnx", exporter=exporter)
    ops = _qdq_ops(path)
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    got = ort_runner(path)(x[:1].numpy())
    with torch.no_grad():
        want = model(x[:1]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_int8_export_carries_qdq_through(tmp_path):
    from edgekit.exporters import export

    art = export(FQNet().eval(), "onnx", "int8", out=tmp_path / "a", validation_samples=64, info=FQNET)
    assert art.manifest["int8_source"].startswith("fake-quant ops")
    assert art.manifest["qdq_nodes"] >= 6 and art.report.passed, art.report.summary()
    assert art.report.top1_agreement >= 0.99


def test_narrow_range_fake_quant_names_workaround(tmp_path):
    from edgekit.exporters.onnx import to_onnx

    with pytest.raises(UserInputError, match="narrow-range.*workaround"):
        to_onnx(FQNet(qmin=-127).eval(), torch.randn(1, 3, 32, 32), tmp_path / "q.onnx")


def test_pt2_graph_module_exports(convnet, tmp_path):
    from edgekit.exporters import export
    from edgekit.loading import save_model

    save_model(convnet, tmp_path, torch.randn(2, 3, 32, 32))
    for precision in ("fp32", "fp16"):
        art = export(str(tmp_path / "model.pt2"), "onnx", precision, out=tmp_path / precision,
                     example_inputs=torch.randn(1, 3, 32, 32), validation_samples=8)
        assert art.report.passed, art.report.summary()


def test_onnx_file_as_model(convnet, tmp_path):
    from edgekit.exporters import export, to_onnx

    src = to_onnx(convnet, torch.randn(1, 3, 32, 32), tmp_path / "src.onnx")
    art = export(str(src), "openvino", "fp16", out=tmp_path / "ov", validation_samples=8)
    assert art.report.passed and art.manifest["source_onnx"] == "src.onnx"
    with pytest.raises(UserInputError, match="fp16 ONNX graph is made from the PyTorch model"):
        export(str(src), "onnx", "fp16", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ---- latency helper ----------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_measure_latency(convnet, runtime):
    from edgekit.exporters import measure_latency

    r = measure_latency(convnet, torch.randn(1, 3, 32, 32), runtime, threads=1, runs=5, warmup=1)
    assert r["runs"] == 5 and 0 < r["median"] <= r["p90"] < 1e4


def test_measure_latency_rejects_unknown_runtime(convnet):
    from edgekit.exporters import measure_latency

    with pytest.raises(UserInputError, match="runtime 'tflite'"):
        measure_latency(convnet, torch.randn(1, 3, 32, 32), "tflite")


# ---- CLI ---------------------------------------------------------------------------------------------

def test_cli_export_subprocess(cli, tmp_path):
    out = tmp_path / "a"
    r = cli("export", "convnet", "--target", "onnx", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["validation"]["passed"] and (out / "manifest.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "nope"], "unknown export target"),
        (["--target", "onnx", "--precision", "fp8"], "fp8"),
        (["--target", "onnx", "--input-shape", "1x8x8"], "does not accept an input of shape"),
        (["--target", "onnx", "-O", "opset"], "KEY=VALUE"),
        (["--target", "tvm", "-O", "device=riscv"], "device='riscv'"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, args, message):
    from typer.testing import CliRunner

    from edgekit.cli.main import app

    out = tmp_path / "x"
    r = CliRunner().invoke(app, ["export", "convnet", "--out", str(out), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output.replace("\n", " ") and not out.exists()


def test_cli_existing_output_and_list(tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli.main import app

    out = tmp_path / "a"
    out.mkdir()
    r = CliRunner().invoke(app, ["export", "convnet", "--target", "onnx", "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
    r = CliRunner().invoke(app, ["export", "--list-targets", "--json"])
    assert r.exit_code == 0 and set(json.loads(r.output)) == {"onnx", "openvino", "coreml", "tensorrt", "tvm"}


def test_pt2_with_fake_quant_exports_int8(tmp_path):
    """What `compress --recipe int8` saves: a torch.export program with fake-quant ops -> QDQ, validated."""
    from edgekit.exporters import export
    from edgekit.loading import save_model

    save_model(FQNet().eval(), tmp_path, torch.randn(2, 3, 32, 32))
    art = export(str(tmp_path / "model.pt2"), "openvino", "int8", out=tmp_path / "ov",
                 example_inputs=torch.randn(1, 3, 32, 32), validation_samples=32)
    assert art.manifest["int8_source"].startswith("fake-quant ops") and art.manifest["qdq_nodes"] >= 6
    assert art.report.passed, art.report.summary()
