"""edgekit.compress on third-party models (tests/thirdparty_models.py): deploy and int8, exported to ONNX and
OpenVINO with validation, and the report says how the graph was captured. torch.fx cannot trace any of them."""

from __future__ import annotations

import pytest
import torch

import edgekit
from edgekit.outputs import logits
from edgekit.quant.fakequant import ActFakeQuant, QuantWeight
from edgekit.quant import qdq
from edgekit.quant.ptq import graph_of
from tests import thirdparty_models as tp

DATA = "random:3x32x32"
FUSED_RTOL = 1e-4  # fused vs unfused logits, relative to the logits' max magnitude (float32 BN folding)
# The big models under load; everything else runs in the fast suite.
SLOW = ("hf_mobilenet_v2", "hf_swin", "swin_tiny", "hf_resnet", "hf_convnext")


def _compress(m, recipe):
    model = m.build()
    tp.assert_fx_fails(model)
    out = m.logits if m.name == "dict_resnet" else None  # its first tensor is the features: name the logits
    return model, edgekit.compress(model, recipe, DATA, latency=False, output=out)


@pytest.mark.parametrize("m", tp.params(tp.ALL, slow=SLOW))
def test_deploy_is_exact_and_records_capture(m):
    model, res = _compress(m, "deploy")
    rep = res.report.stage("fuse").report
    assert rep["capture"]["method"] == "torch.export" and rep["capture"]["fx_error"]
    assert res.info.output == (m.logits or None)
    x = tp.example(4, seed=7)
    with torch.no_grad():
        ref = logits(model(x), m.logits or None)
        got = res.model(x)
    assert float((got - ref).abs().max()) <= FUSED_RTOL * float(ref.abs().max())
    bns = [mod for mod in model.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert len(rep["folded"]) == len(bns), rep["left"]  # every BN follows a conv in these models (none in ConvNeXt)


@pytest.mark.parametrize("m", tp.params(tp.ALL, slow=SLOW))
def test_int8_on_captured_graph_exports_to_onnx_and_openvino(m, tmp_path):
    from edgekit.exporters import export

    model, res = _compress(m, "int8")
    rep = res.report.stage("quantize").report
    assert rep["capture"]["method"] == "torch.export"
    graph = graph_of(res.model)
    layers = [mod for mod in graph.modules() if isinstance(mod, QuantWeight)]
    assert len(layers) == len(rep["quantized_layers"]) > 0 and all(mod.wmode == "int8" for mod in layers)
    assert any(isinstance(mod, ActFakeQuant) for mod in graph.modules())
    targets = ["onnx"]
    try:
        import openvino  # noqa: F401

        targets.append("openvino")
    except ImportError:
        pass
    for target in targets:
        art = export(res.model, target, precision="int8", out=tmp_path / target, info=res.info, data=DATA)
        assert art.report.passed, (target, art.report)
        if target == "onnx":  # ONNX Runtime runs the convs / linears with integer kernels
            ops = qdq.ort_optimized_op_types(art.model_file)
            assert qdq.int8_summary(ops)["int8_kernels"], ops
