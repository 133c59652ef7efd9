"""The zoo detector through the stages (issue 19): int8 and prune-30 compress keep mAP within a stated bound on a
small digits-det test subset and report.json carries it; ONNX and OpenVINO exports validate; multi-output
(per-level tuple) detectors go through fuse / prune / PTQ, and compress refuses them with a message."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("pycocotools")

from edgekit import models as zoo
from edgekit.errors import UserInputError
from edgekit.tasks.detection_data import digits_detection

# 64 test canvases: the shipped checkpoint scores mAP@[.5:.95] 0.51 on them. Measured on them (2026-11-30, see
# docs/detection.md): int8 keeps mAP within 0.01; prune-30 + a short fine-tune (2 epochs on 512 canvases, lr 3e-3)
# keeps 0.33 of 0.51 (0.65x); prune-30 with the recipe's 3 epochs on the full 2400 canvases keeps 0.45 of 0.51.
SMALL = {"train": 512, "calib": 64, "test": 64}
INT8_MAX_DROP = 0.02
PRUNE_MIN_KEPT = 0.5  # share of the fp32 mAP the short fine-tune keeps at least


@pytest.fixture(scope="module")
def det():
    return digits_detection((3, 64, 64), seed=0, counts=SMALL)


@pytest.fixture(scope="module")
def int8_out(det, tmp_path_factory):
    from edgekit.pipeline import compress

    out = tmp_path_factory.mktemp("det") / "int8"
    result = compress(zoo.load("detector"), "int8", data=det, out=out, latency=False,
                      overrides=["quantize.calibration.samples=64"])
    return result, out


def _drop(report) -> tuple[float, float]:
    m = report.fidelity["task_metrics"]["map"]
    return m["before"], m["after"]


def test_int8_keeps_map_and_report_json_carries_it(int8_out):
    result, out = int8_out
    before, after = _drop(result.report)
    assert before > 0.3 and after >= before - INT8_MAX_DROP, (before, after)
    saved = json.loads((out / "report.json").read_text())
    assert saved["fidelity"]["task"] == "detection"
    assert saved["fidelity"]["task_metrics"]["map50"]["after"] is not None
    assert saved["accuracy"] == {"before": None, "after": None}  # no top-1 for a detector
    fid = result.report.fidelity
    assert fid["box_match_rate"] >= 0.9 and fid["box_iou_mean"] >= 0.8, fid  # decoded boxes agree with fp32
    assert any("map" in n for n in result.report.notes)


@pytest.mark.slow  # ~60 s under load: two fine-tune epochs on 512 canvases
def test_prune_30_fine_tuned_keeps_map(det):
    from edgekit.pipeline import compress

    result = compress(zoo.load("detector"), "prune-30", data=det, latency=False,
                      overrides=["prune.finetune.epochs=2", "prune.finetune.lr=0.003"])
    before, after = _drop(result.report)
    assert after >= PRUNE_MIN_KEPT * before, (before, after)
    assert result.report.macs.after < 0.8 * result.report.macs.before
    assert result.report.stage("prune").report["finetune"]["epochs"] == 2  # the detection loss fine-tuned it


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_int8_detector_exports_and_validates(int8_out, det, target, tmp_path):
    pytest.importorskip("onnxruntime" if target == "onnx" else "openvino")
    from edgekit.exporters import export

    art = export(str(int8_out[1]), target, "int8", out=tmp_path / target, data=det)
    assert art.report.passed and art.report.numeric, art.report.summary()
    assert art.report.outputs["output"]["cosine"] >= 0.99
    task = [c for c in art.report.checks if c["name"].startswith("detection box_match_rate")]
    assert len(task) == 1 and task[0]["passed"] and "not measured" not in task[0]["detail"], task  # decoded boxes agree


def test_multi_output_detector_goes_through_fuse_prune_and_ptq(det):
    from edgekit.fusion import fuse
    from edgekit.prune.structured import prune
    from edgekit.quant.ptq import quantize_ptq

    model = zoo.create("detector", pretrained=True)
    model.packed = False  # a tuple of per-level tensors
    x = det.calib.x[:4]
    with torch.no_grad():
        ref = model(x)
        fused, _ = fuse(model, "deploy")
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(fused(x), ref))
        pruned, _ = prune(model, (x[:1],), 0.3, "l1", False, 8, ["head*"])
        assert [t.shape for t in pruned(x)] == [t.shape for t in ref]
        q, _ = quantize_ptq(fused, det.calib.x, x[:1])
        for a, b in zip(q(x), ref):
            assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0) > 0.99


def test_compress_refuses_a_multi_output_detector(det):
    from edgekit.loading import LoadedModel
    from edgekit.pipeline import compress

    loaded = zoo.load("detector")
    loaded.model.packed = False
    with pytest.raises(UserInputError, match="packed tensor"):
        compress(LoadedModel(loaded.model, loaded.info), "deploy", data=det, latency=False)


def test_pruned_repconv_blocks_reparameterize(det):
    """prune then deploy (the detection benchmark's prune-30 row): a RepConv whose channels were pruned merges into
    the conv of its pruned width (its __init__ channel counts are stale) and computes the same function."""
    from edgekit.fusion.fuse import fuse
    from edgekit.prune.structured import prune

    model = zoo.load("detector").model.eval()
    x = det.test.x[:4]
    pruned, _ = prune(model, (x[:2],), ratio=0.34, round_to=16, ignore=["head*"])
    deployed, report = fuse(pruned, "deploy")
    widths = [m.out_channels for m in deployed.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [16, 32, 32, 32, 32, 48, 48], widths  # multiples of 16: 48 -> 32, 64 -> 48
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), pruned(x), rtol=1e-4, atol=1e-4)


def test_fpn_nearest_upsample_runs_in_int8_on_ort(tmp_path):
    """An FPN top-down path (conv -> nearest upsample -> add): the upsample's output takes its input's grid, so
    ONNX Runtime runs the Resize on uint8 (no DequantizeLinear -> float Resize -> QuantizeLinear requantization,
    which made the detector's int8 ORT graph slower than quantize_static's) and the export agrees with the
    fake-quant model."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime as ort
    import torch.nn.functional as F
    from torch import nn

    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.quant import qdq
    from edgekit.quant.config import PTQConfig
    from edgekit.quant.ptq import quantize_ptq
    from edgekit.training import predict

    class TopDown(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1)
            self.lat1, self.lat2, self.out = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            a = F.relu(self.c1(x))
            b = F.relu(self.c2(a))
            return self.out(F.relu(self.lat1(a) + F.interpolate(self.lat2(b), size=a.shape[-2:], mode="nearest")))

    torch.manual_seed(0)
    model, x = TopDown().eval(), torch.randn(32, 3, 16, 16)
    q, _ = quantize_ptq(model, x, x[:1], PTQConfig(calibration={"method": "mse", "samples": 32}, bias_correction=False))
    from edgekit.quant.fakequant import TiedFakeQuant

    after = [n for n in q.graph.nodes if n.op == "call_module" and n.args and getattr(n.args[0], "name", "") == "interpolate"]
    assert len(after) == 1 and isinstance(q.get_submodule(after[0].target), TiedFakeQuant), after  # the input's grid
    path = to_onnx(q, x[:1], tmp_path / "q.onnx")
    ops = qdq.ort_optimized_op_types(path)
    assert ops.get("Resize") == 1 and ops.get("QLinearAdd") == 1, ops
    # one Q (the input's); DQs: the float output conv's input and weight (graph outputs stay float), none around Resize
    assert ops.get("QuantizeLinear") == 1 and ops.get("DequantizeLinear") == 2, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i : i + 1].numpy()})[0] for i in range(8)])
    want = predict(q, x[:8]).numpy()
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max(), np.abs(got - want).max()


def test_openvino_placement_leaves_the_head_tail_float(tmp_path):
    """A detector-style head (two 1x1 convs -> cat -> flatten -> output): the OpenVINO placement leaves the convs'
    outputs float (qdq rule 7, as NNCF places them), so the CPU plugin runs the convs in int8 with a float output
    and a float concat instead of an int8 reference concat plus a dequantizing subgraph; ORT's placement keeps
    them quantized (QLinearConv). The OpenVINO export agrees with the fake-quant model."""
    import numpy as np
    from torch import nn

    from edgekit.quant import qdq
    from edgekit.quant.config import PTQConfig
    from edgekit.quant.ptq import quantize_ptq

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower, self.reg, self.cls = nn.Conv2d(3, 16, 3, 1, 1), nn.Conv2d(16, 5, 1), nn.Conv2d(16, 10, 1)

        def forward(self, x):
            t = torch.relu(self.tower(x))
            return torch.cat([self.reg(t), self.cls(t)], 1).flatten(2)

    torch.manual_seed(0)
    model, x = Head().eval(), torch.randn(32, 3, 8, 8)

    def quantized_outputs(target):
        cfg = PTQConfig(target=target, calibration={"method": "minmax", "samples": 32}, bias_correction=False)
        q, _ = quantize_ptq(model, x, x[:1], cfg)
        quantized = set()  # the layers whose output (after its activation) goes through an activation quantizer
        for n in q.graph.nodes:
            if n.op == "call_module" and n.target.startswith("act_quant") and n.args[0].op != "placeholder":
                src = n.args[0] if n.args[0].op == "call_module" else n.args[0].args[0]  # through the ReLU
                quantized.add(src.target)
        return q, quantized

    _, ort_fq = quantized_outputs("onnxruntime")
    q, ov_fq = quantized_outputs("openvino")
    assert {"reg", "cls"} <= ort_fq and not {"reg", "cls"} & ov_fq, (ort_fq, ov_fq)
    assert "tower" in ov_fq  # the tower's output feeds quantized convs: still int8
    ov = pytest.importorskip("openvino")
    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.training import predict

    path = to_onnx(q, x[:1], tmp_path / "q.onnx")
    compiled = ov.Core().compile_model(str(path), "CPU")
    cats = [op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
            if op.get_rt_info()["layerType"].astype(str) == "Concatenation"]
    assert cats and "i8" not in cats and "u8" not in cats, cats
    got = np.asarray(compiled.create_infer_request().infer({0: x[:1].numpy()})[0])
    want = predict(q, x[:1]).numpy()
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max(), np.abs(got - want).max()
