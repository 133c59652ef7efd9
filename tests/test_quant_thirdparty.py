"""int8 options on third-party models (captured by torch.export): CLE, sensitivity / keep-float, QAT."""

from __future__ import annotations

import pytest
import torch

from edgekit.data import load_data
from edgekit.outputs import select_output
from edgekit.quant.config import PTQConfig
from edgekit.quant.ptq import act_quants, graph_of, quantize_ptq, weight_layers
from edgekit.quant.sensitivity import sqnr_db
from edgekit.stages import StageContext, get_stage
from tests import thirdparty_models as tp

CALIB = {"method": "minmax", "samples": 32}


def _model(name):
    m = tp.MODELS[name]
    model = m.build()
    tp.assert_fx_fails(model)
    return select_output(model, (tp.example(),), m.logits or None)[0]


def test_cle_finds_pairs_on_a_captured_cnn_and_keeps_the_function():
    model = _model("mobilenet_v2")  # depthwise convs between 1x1 convs: the case CLE is for
    calib = tp.example(32, seed=1)
    q, rep = quantize_ptq(model, calib, tp.example(1), PTQConfig(calibration=CALIB, equalization=True, bias_correction=False),
                          do_freeze=False)
    assert rep["capture"]["method"] == "torch.export" and rep["equalized_pairs"] > 0
    g = graph_of(q)
    for a in act_quants(g).values():
        a.mode = "off"
    for layer in weight_layers(g).values():
        layer.wmode = "float"
    x = tp.example(8, seed=2)
    with torch.no_grad():  # equalization is an exact rescaling (ReLU is positively homogeneous)
        assert sqnr_db(model(x), q(x)) > 80


def test_ignore_and_keep_float_name_the_users_layers():
    model = _model("sdpa_deit")
    data = load_data("random:3x32x32")
    ctx = StageContext(data=data, reference=model, example_inputs=(data.test.x[:1],))
    fn, cfg_cls = get_stage("quantize")
    cfg = cfg_cls.model_validate({"calibration": CALIB, "ignore": ["head"], "keep_float": {"top_n": 1}})
    q, rep = fn(model, cfg, ctx)
    assert "head" in rep["ignored"] and "head" not in rep["quantized_layers"]
    assert len(rep["kept_float"]) == 1 and rep["kept_float"][0] in [r["layer"] for r in rep["sensitivity_worst"]]
    assert rep["kept_float"][0] not in rep["quantized_layers"]
    assert {"blocks.0.attn.qkv", "blocks.0.fc1"} <= set(rep["quantized_layers"]) | set(rep["kept_float"])


def test_sensitivity_stage_on_mha_vit_ranks_the_users_layers():
    model = _model("mha_vit")
    data = load_data("random:3x32x32")
    ctx = StageContext(data=data, reference=model, example_inputs=(data.test.x[:1],))
    fn, cfg_cls = get_stage("sensitivity")
    out, rep = fn(model, cfg_cls.model_validate({"calibration": CALIB, "samples": 16}), ctx)
    assert out is model
    layers = {r["layer"] for r in rep["all"]}
    assert {"blocks.0.attn.in_proj", "blocks.0.attn.out_proj"} <= layers and "head" not in layers  # ends float
    _, rep = fn(model, cfg_cls.model_validate({"calibration": CALIB, "samples": 16, "ends": "int8"}), ctx)
    assert "head" in {r["layer"] for r in rep["all"]}


@pytest.mark.slow
def test_qat_on_a_captured_model(digits):
    from edgekit.quant.qat import quantize_qat

    model = _model("shape_resnet")
    q, rep = quantize_qat(model, digits, digits.test.x[:1], PTQConfig(calibration=CALIB), epochs=1, lr=1e-4,
                          distill_weight=0.0)
    assert rep["mode"] == "qat" and rep["capture"]["method"] == "torch.export"
    assert all(layer.wmode == "int8" for layer in weight_layers(graph_of(q)).values())
