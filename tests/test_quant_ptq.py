"""int8 PTQ end to end on the default zoo model: accuracy, QDQ export run as int8 by ORT, agreement, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit import models
from edgekit.data import load_data
from edgekit.errors import UserInputError
from edgekit.quant.config import PTQConfig
from edgekit.quant.ptq import quantize_ptq
from edgekit.stages import StageContext, get_stage
from edgekit.training import evaluate, predict

ACC_TOL = 0.005  # int8 top-1 within 0.5 points of fp32
AGREE = 0.99  # top-1 agreement of the exported int8 graph with the PyTorch fake-quant model


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_data()
    model = models.create("convnet")
    example = data.test.x[:1]
    q, rep = quantize_ptq(model, data.calib.x, example, PTQConfig(calibration={"method": "mse", "samples": 128}))
    return data, model, example, q, rep


def test_ptq_accuracy_and_int8_weights(setup):
    data, model, _, q, rep = setup
    fp32, int8 = evaluate(model, data.test), evaluate(q, data.test)
    assert int8 >= fp32 - ACC_TOL, (fp32, int8)
    assert rep["float_ops"] == [] and len(rep["quantized_layers"]) == 7
    from edgekit.metrics import storage_bytes

    assert storage_bytes(q) < 0.3 * storage_bytes(model)
    # the quantized output really differs from float (the test would pass vacuously otherwise)
    assert not torch.allclose(predict(q, data.test.x[:8]), predict(model, data.test.x[:8]))


def test_torch_export_roundtrip(setup, tmp_path):
    data, _, example, q, _ = setup
    from edgekit.loading import load_model, save_model

    saved = save_model(q, tmp_path, example)
    loaded = load_model(str(tmp_path / saved["file"])).model
    x = data.test.x[:1]
    assert torch.allclose(loaded(x), q(x), atol=1e-5)


def test_qdq_onnx_runs_int8_on_ort_and_agrees(setup, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.quant import qdq

    data, _, example, q, _ = setup
    path = to_onnx(q, example, tmp_path / "q.onnx")
    ops = qdq.ort_optimized_op_types(path)
    summary = qdq.int8_summary(ops)
    assert summary["int8_kernels"].get("QLinearConv", 0) == 6, ops
    assert "Conv" not in ops and "FusedConv" not in ops, ops  # no conv left in float
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = data.test.x[:200]
    name = sess.get_inputs()[0].name
    out = np.concatenate([sess.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(len(x))])
    agree = float((out.argmax(1) == predict(q, x).argmax(1).numpy()).mean())
    assert agree >= AGREE


def test_qdq_onnx_agrees_on_openvino(setup, tmp_path):
    ov = pytest.importorskip("openvino")
    from edgekit.exporters.torch2onnx import to_onnx

    data, _, example, q, _ = setup
    path = to_onnx(q, example, tmp_path / "q.onnx")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1})
    x = data.test.x[:100]
    got = np.concatenate([compiled([x[i : i + 1].numpy()])[0] for i in range(len(x))])
    agree = float((got.argmax(1) == predict(q, x).argmax(1).numpy()).mean())
    assert agree >= AGREE


def test_bad_calibration_data_fails_before_work():
    data = load_data()
    model = models.create("convnet")
    ex = data.test.x[:1]
    with pytest.raises(UserInputError, match="shape"):
        quantize_ptq(model, torch.randn(8, 3, 16, 16), ex)
    with pytest.raises(UserInputError, match="dtype"):
        quantize_ptq(model, torch.zeros(8, 3, 32, 32, dtype=torch.uint8), ex)


def test_ignore_pattern_keeps_layer_float():
    data = load_data()
    model = models.create("convnet")
    q, rep = quantize_ptq(model, data.calib.x, data.test.x[:1], PTQConfig(calibration={"method": "minmax", "samples": 64}, ignore=["head", "features.0.*"]))
    assert "head" in rep["ignored"] and "features.0.0" in rep["ignored"]
    assert "head" not in rep["quantized_layers"]
    assert isinstance(q.get_submodule("head"), torch.nn.Linear)


def test_quantize_stage_with_keep_float():
    data = load_data()
    model = models.create("convnet")
    fn, cfg_cls = get_stage("quantize")
    cfg = cfg_cls.from_dict({"calibration": {"method": "minmax", "samples": 64}, "keep_float": {"top_n": 1}})
    ctx = StageContext(data=data, reference=model, example_inputs=(data.test.x[:1],))
    q, rep = fn(model, cfg, ctx)
    assert len(rep["kept_float"]) == 1
    worst = rep["sensitivity_worst"][0]
    assert worst["layer"] == rep["kept_float"][0] and np.isfinite(worst["sqnr_db"])
    assert rep["kept_float"][0] not in rep["quantized_layers"]
    with pytest.raises(Exception, match="method"):
        cfg_cls.from_dict({"calibration": {"method": "kl-magic"}})


def test_recipes_load():
    from edgekit.recipe import load_recipe

    r = load_recipe("int8")
    assert [s.name for s in r.stages] == ["fuse", "quantize"] and r.measure.latency_runtime == "onnxruntime"
    r = load_recipe("int8-qat")
    assert r.stages[-1].config.mode == "qat"


def test_sensitivity_stage_ranks_layers_and_leaves_model():
    data = load_data()
    model = models.create("convnet")
    fn, cfg_cls = get_stage("sensitivity")
    cfg = cfg_cls.from_dict({"calibration": {"method": "minmax", "samples": 64}, "samples": 64, "worst": 3})
    ctx = StageContext(data=data, reference=model, example_inputs=(data.test.x[:1],))
    out, rep = fn(model, cfg, ctx)
    assert out is model and rep["layers"] == 7 and len(rep["worst"]) == 3
    sq = [r["sqnr_db"] for r in rep["all"]]
    assert sq == sorted(sq) and all(np.isfinite(sq)) and sq[0] < sq[-1]
    assert all(0.0 <= r["top1"] <= 1.0 for r in rep["all"])
    rel = [r["relevance"] for r in rep["all"]]
    assert sum(rel) == pytest.approx(1.0, abs=1e-3) and min(rel) >= 0 and max(rel) > min(rel)


def test_equalization_option_keeps_accuracy():
    data = load_data()
    model = models.create("mobilenetv2")
    q, rep = quantize_ptq(model, data.calib.x, data.test.x[:1], PTQConfig(calibration={"method": "minmax", "samples": 64}, equalization=True))
    assert rep["equalized_pairs"] >= 1
    assert evaluate(q, data.test) >= evaluate(model, data.test) - ACC_TOL


def test_bias_correction_equals_the_mean_output_error_of_each_layer(setup):
    """bias_correct sums each batch before the layer (it is linear): the shift must still equal the mean over
    samples and positions of (W - Q(W)) x on the layer's real inputs, computed here the long way."""
    import torch.nn.functional as F

    from edgekit.quant.fakequant import QuantConv2d, WeightMode
    from edgekit.quant.ptq import bias_correct, weight_layers

    data, model, example, _, _ = setup
    x = data.calib.x[:40]
    gm, _ = quantize_ptq(model, x, example, PTQConfig(calibration={"method": "minmax", "samples": 40}, bias_correction=False),
                         do_freeze=False)
    layers = weight_layers(gm)
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs[n].append(a[0].detach())) for n, m in layers.items()]
    with torch.no_grad():
        for i in range(0, len(x), 16):
            gm(x[i : i + 16])
    for h in hooks:
        h.remove()
    expected = {}
    for n, m in layers.items():
        mode, m.wmode = m.wmode, WeightMode.FAKE if m.wmode is WeightMode.FLOAT else m.wmode
        dw = (m.weight - m.qweight()).detach()
        m.wmode = mode
        xin = torch.cat(inputs[n])
        if isinstance(m, QuantConv2d):
            expected[n] = F.conv2d(xin, dw, None, m.stride, m.padding, m.dilation, m.groups).mean(dim=(0, 2, 3))
        else:
            expected[n] = F.linear(xin, dw).reshape(-1, dw.shape[0]).mean(0)
    before = {n: m.bias.detach().clone() for n, m in layers.items()}
    bias_correct(gm, x, batch_size=16)
    assert any(float(e.abs().max()) > 1e-6 for e in expected.values())  # the check is not vacuous
    for n, m in layers.items():
        torch.testing.assert_close(m.bias.detach() - before[n], expected[n], rtol=1e-4, atol=1e-6, msg=n)


def test_bias_correction_keeps_zero_biases_unless_asked(setup):
    """A layer whose float bias is zero (a random-init model: BatchNorm folds to a zero bias) keeps it: a correction
    would add a bias op that runtimes drop for zero. bias_correction_adds_bias=True corrects it too. Trained zoo
    layers (folded BatchNorm, non-zero biases) are all corrected either way."""
    from torch import nn

    from edgekit.quant.ptq import graph_of, weight_layers

    data, _, example, _, rep = setup
    assert rep["bias_correction_skipped"] == []  # the trained zoo convnet: every layer corrected
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.Flatten(), nn.LazyLinear(10)).eval()
    model(example)
    with torch.no_grad():
        model[3].bias.copy_(torch.linspace(-0.5, 0.5, 8))  # one layer with a real bias
        model[5].bias.zero_()
    cfg = dict(calibration={"method": "minmax", "samples": 64})
    q, rep0 = quantize_ptq(model, data.calib.x, example, PTQConfig(**cfg))
    biases = {n: m.bias.detach() for n, m in weight_layers(graph_of(q)).items()}
    assert len(rep0["bias_correction_skipped"]) == 2 and len(biases) == 3
    for n, b in biases.items():
        assert (not b.any()) == (n in rep0["bias_correction_skipped"]), n
    q1, rep1 = quantize_ptq(model, data.calib.x, example, PTQConfig(**cfg, bias_correction_adds_bias=True))
    assert rep1["bias_correction_skipped"] == []
    assert all(m.bias.detach().any() for m in weight_layers(graph_of(q1)).values())


def test_tf_style_zero_pad_before_conv_is_folded_by_ort(tmp_path):
    """A model that pads explicitly before each conv (TF 'same' padding, as transformers' MobileNetV2 does):
    the Q/DQ goes before the pad, so ONNX Runtime runs the pads inside its integer convs (none left in float)
    and the exported graph still agrees with the fake-quant model."""
    pytest.importorskip("onnxruntime")
    import torch.nn.functional as F
    from torch import nn

    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.quant import qdq

    class TFPad(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 8, 3, groups=8)
            self.pad = nn.ZeroPad2d((0, 1, 0, 1))
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = F.relu(self.c1(self.pad(x)))
            x = F.relu(self.c2(F.pad(x, (1, 1, 1, 1))))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model, x = TFPad().eval(), torch.randn(32, 3, 16, 16)
    q, _ = quantize_ptq(model, x, x[:1], PTQConfig(calibration={"method": "minmax", "samples": 32}, bias_correction=False))
    path = to_onnx(q, x[:1], tmp_path / "q.onnx")
    ops = qdq.ort_optimized_op_types(path)
    assert ops.get("QLinearConv") == 2 and "Pad" not in ops and "Conv" not in ops, ops
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i : i + 1].numpy()})[0] for i in range(8)])
    want = predict(q, x[:8]).numpy()
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max(), np.abs(got - want).max()
