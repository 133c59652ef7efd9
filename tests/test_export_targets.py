"""Target-specific paths: int8 on OpenVINO, CoreML compression, TVM cross targets, TensorRT without a GPU,
``--bisect`` naming the first drifting layer."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import UserInputError
from edgekit.records import ModelInfo


@pytest.fixture(scope="module")
def convnet():
    import edgekit.models as zoo

    return zoo.create("convnet", pretrained=zoo.info("convnet").checkpoint.is_file())


def test_openvino_int8_from_qdq(convnet, tmp_path):
    from edgekit.exporters import export

    art = export(convnet, "openvino", "int8", out=tmp_path / "ov", validation_samples=64)
    assert "quantize_static" in art.manifest["int8_source"] and art.manifest["qdq_nodes"] > 0
    xml = (art.directory / "model.xml").read_text()
    assert "FakeQuantize" in xml or "i8" in xml  # OpenVINO really holds int8 quantization
    assert art.report.numeric and art.report.top1_agreement is not None
    assert art.report.passed, art.report.summary()


@pytest.mark.parametrize("precision, compression, marker", [
    ("fp32", "none", None),
    ("int8", "none", "int8 weights present"),
    ("fp16", "palettize4", "palettize4 weights present"),
    ("fp16", "sparse", "sparse weights present"),
])
def test_coreml_linux_checks(convnet, tmp_path, precision, compression, marker):
    from edgekit.exporters import export

    art = export(convnet, "coreml", precision, out=tmp_path / "c", compression=compression, validation_samples=8)
    rep = art.report
    assert (art.directory / "model.mlpackage").is_dir() and rep.passed, rep.summary()
    if os.uname().sysname != "Darwin":
        assert not rep.numeric and "macOS" in rep.skipped
    names = {c["name"]: c["passed"] for c in rep.checks}
    assert names["package loads"] and names["input name/shape/dtype"] and names["ops are CoreML MIL ops"]
    if marker:
        assert names[marker]


@pytest.mark.skipif(os.uname().sysname != "Darwin", reason="CoreML predictions run only on macOS (Core ML framework)")
def test_coreml_numeric_on_macos(convnet, tmp_path):
    from edgekit.exporters import export

    art = export(convnet, "coreml", "fp16", out=tmp_path / "c")
    assert art.report.numeric and art.report.passed


def test_coreml_unsupported_op_names_it(tmp_path):
    from edgekit.exporters import export

    class Odd(nn.Module):
        def forward(self, x):
            return torch.special.zeta(x.abs() + 2, torch.full_like(x, 2.0)).mean(dim=(1, 2, 3)).unsqueeze(1)

    with pytest.raises(UserInputError, match="target coreml cannot take op 'special_zeta'.*workaround"):
        export(Odd(), "coreml", "fp32", out=tmp_path / "c", example_inputs=torch.randn(1, 3, 8, 8))
    assert not (tmp_path / "c").exists()


class _DetBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return torch.linalg.det(self.proj(x).reshape(-1, 2, 2)).reshape(1, -1)


class _DetNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blk = _DetBlock()

    def forward(self, x):
        return self.blk(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("target", ["tvm", "openvino"])
def test_unsupported_onnx_op_names_op_layer_target(tmp_path, target):
    """ONNX exports Det fine; TVM's and OpenVINO's ONNX frontends have no converter for it."""
    from edgekit.exporters import export

    with pytest.raises(UserInputError, match=f"target {target} cannot take op 'Det' in layer blk .*workaround"):
        export(_DetNet().eval(), target, out=tmp_path / "a", example_inputs=torch.randn(1, 4, 3, 3))
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs Debian's gcc-aarch64-linux-gnu cross compiler")
def test_tvm_aarch64_cross(convnet, tmp_path):
    from edgekit.exporters import export

    art = export(convnet, "tvm", "fp32", out=tmp_path / "t", device="aarch64")
    head = (art.directory / "model.so").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    assert not art.report.numeric and "aarch64" in art.report.skipped and art.report.passed
    meta = json.loads((art.directory / "tvm_meta.json").read_text())
    assert "aarch64" in json.dumps(meta["tvm_target"])


def test_tvm_cuda_compiles_without_gpu(convnet, tmp_path):
    from edgekit.exporters import export

    art = export(convnet, "tvm", "fp32", out=tmp_path / "t", device="cuda")
    assert (art.directory / "model.so").stat().st_size > 0
    assert not art.report.numeric and "no GPU" in art.report.skipped


def test_tensorrt_without_gpu_writes_onnx_and_command(convnet, tmp_path):
    from edgekit.exporters import export
    from edgekit.exporters.tensorrt import gpu_available

    if gpu_available()[0]:
        pytest.skip("this host has tensorrt + GPU; the engine path is tested in test_tensorrt_engine")
    art = export(convnet, "tensorrt", "fp16", out=tmp_path / "trt", sparse_weights=True)
    m = art.manifest
    assert m["engine_built"] is False and m["model_file"] == "model.onnx" and "engine_not_built_reason" in m
    assert not (art.directory / "model.engine").exists()
    assert m["trtexec_command"].startswith("trtexec --onnx=model.onnx") and "--fp16" in m["trtexec_command"]
    assert "--sparsity=enable" in m["trtexec_command"]
    assert not art.report.numeric and "no TensorRT engine was built" in art.report.skipped


def test_tensorrt_constraint_check_names_layer(tmp_path):
    """An asymmetric (uint8, non-zero zero point) QDQ graph breaks TensorRT's int8 rules: reported per layer."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.exporters.tensorrt import check_onnx

    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["q"], name="act_quant"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["output"], name="act_dequant"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
        initializer=[helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("zp", TensorProto.UINT8, [], [128])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    problems = check_onnx(path)
    assert {p["layer"] for p in problems} == {"act_quant", "act_dequant"}
    assert all("zero point" in p["problem"] for p in problems)


@pytest.mark.gpu
def test_tensorrt_engine(convnet, tmp_path):
    from edgekit.exporters import export
    from edgekit.exporters.tensorrt import gpu_available

    ok, why = gpu_available()
    if not ok:
        pytest.skip(f"needs tensorrt and an NVIDIA GPU: {why}")
    art = export(convnet, "tensorrt", "fp16", out=tmp_path / "trt")
    assert art.manifest["engine_built"] and art.report.numeric and art.report.passed


class Overflow(nn.Module):
    """fp16 overflows (> 65504) in ``boost`` and nowhere before it: bisect must name that layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.boost = nn.Conv2d(8, 8, 1)
        with torch.no_grad():
            self.boost.weight.mul_(3e5)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = self.boost(y) * 1e-5
        return self.head(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_bisect_names_first_drifting_layer(tmp_path, target):
    from edgekit.exporters import export

    model = Overflow().eval()
    art = export(model, target, "fp16", out=tmp_path / "a", bisect=True, validation_samples=8,
                 info=ModelInfo(name="overflow", input_shape=(3, 32, 32)))
    bis = art.report.extra["bisect"]
    assert bis["supported"]
    if target == "onnx":  # the fp16 graph computes in fp16 and overflows
        assert not art.report.passed
        assert bis["first_drift"]["layer"] == "boost", bis["summary"]
        val = json.loads((art.directory / "validation.json").read_text())
        assert val["extra"]["bisect"]["first_drift"]["layer"] == "boost"
    else:  # OpenVINO's fp16 IR only stores fp16 weights and computes in fp32 here: no drift
        assert bis["first_drift"] is None, bis["summary"]


def test_tensorrt_reports_2_4_sparse_layers(convnet, tmp_path):
    """Weights zeroed 2-of-every-4 along input channels are found and sparsity is enabled (sparse_weights=auto)."""
    import copy

    from edgekit.exporters import export

    model = copy.deepcopy(convnet)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d) and mod.in_channels % 4 == 0:
                w = mod.weight.permute(0, 2, 3, 1).reshape(-1, 4)  # groups of 4 input channels
                keep = w.abs().argsort(dim=1, descending=True)[:, :2]
                mask = torch.zeros_like(w).scatter_(1, keep, 1.0)
                mod.weight.copy_((w * mask).reshape(mod.weight.shape[0], *mod.weight.shape[2:], -1).permute(0, 3, 1, 2))
    n_eligible = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels % 4 == 0)
    art = export(model, "tensorrt", "fp16", out=tmp_path / "trt")
    assert art.manifest["sparse_2_4_layers"] == n_eligible > 0
    assert art.manifest["sparse_weights"] is True and "--sparsity=enable" in art.manifest["trtexec_command"]
    off = export(model, "tensorrt", "fp16", out=tmp_path / "off", sparse_weights=False)
    assert "--sparsity=enable" not in off.manifest["trtexec_command"] and "sparse_weights=false" in off.manifest["sparsity_hint"]
    dense = export(convnet, "tensorrt", "fp16", out=tmp_path / "dense")
    assert dense.manifest["sparse_2_4_layers"] == 0 and "sparsity_hint" not in dense.manifest
    assert "--sparsity=enable" not in dense.manifest["trtexec_command"]
