"""AdaRound (Nagel et al., ICML'20): learned rounding beats nearest on the layer's own objective, on held-out
inputs of a real layer too; inside PTQ it sees quantized inputs and bias correction measures against the float
weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.quant.adaround import AdaRoundOptions, _h, _init_v, adaround, adaround_model, channel_scale


def test_soft_rounding_starts_at_the_float_weight():
    frac = torch.rand(1000)
    assert torch.allclose(_h(_init_v(frac)), frac, atol=1e-5)


def test_adaround_beats_nearest_on_a_linear_layer_at_4_bits():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    x = torch.randn(512, 32) @ torch.randn(32, 32)  # correlated inputs: where rounding choices matter
    scale = channel_scale(lin.weight, 7)
    fn = lambda inp, w: nn.functional.linear(inp, w, lin.bias)  # noqa: E731
    q, stats = adaround(fn, lin.weight, scale, -7, 7, x, AdaRoundOptions(iters=600, seed=0))
    assert q.dtype == torch.float32 and torch.equal(q, q.round()) and q.abs().max() <= 7
    nearest = torch.clamp(torch.round(lin.weight / scale), -7, 7)
    assert ((q - torch.floor(lin.weight / scale)).abs() <= 1).all()  # only up or down, never further
    assert stats["mse_adaround"] < 0.8 * stats["mse_nearest"], stats
    assert 0 < stats["flipped"] < 0.5 and not torch.equal(q, nearest)


def test_adaround_reduces_the_reconstruction_error_of_a_real_layer_on_held_out_inputs(digits):
    """The zoo convnet's third conv (BN folded, as the quantizer sees it), its real digits inputs, 4-bit grid:
    the learned rounding's error after the ReLU, measured here on inputs it was not trained on, is below
    nearest's."""
    from edgekit import models
    from edgekit.quant.adaround import _capture
    from edgekit.quant.ptq import trace

    gm, _ = trace(models.create("convnet").eval(), digits.calib.x[:1])
    conv = dict(gm.named_modules())["features.2.0"]
    assert isinstance(conv, nn.Conv2d)
    x = _capture(gm, conv, digits.calib.x[:160], 32)
    fn = lambda inp, w: F.conv2d(inp, w, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)  # noqa: E731
    scale = channel_scale(conv.weight, 7)
    q, stats = adaround(fn, conv.weight, scale, -7, 7, x[:96], AdaRoundOptions(iters=200, seed=0), act=F.relu)
    held = x[96:]
    with torch.no_grad():
        target = F.relu(fn(held, conv.weight))
        err = lambda w: F.mse_loss(F.relu(fn(held, w)), target).item()  # noqa: E731
        e_ada, e_near = err(scale * q), err(scale * torch.clamp(torch.round(conv.weight / scale), -7, 7))
    assert e_ada < 0.8 * e_near, (e_ada, e_near, stats)
    assert torch.allclose(channel_scale(scale * q, 7), scale)  # the channel maxima stay on +-7: same grid


def test_adaround_model_puts_weights_on_the_grid_the_quantizer_uses():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    calib = torch.randn(64, 3, 8, 8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, rep = adaround_model(model, calib, ["0", "3"], bits=4, opts=AdaRoundOptions(iters=100))
    assert set(rep["layers"]) == {"0", "3"} and rep["bits"] == 4
    for name in ("0", "3"):
        w = dict(model.named_modules())[name].weight.detach()
        s = channel_scale(w, 7)
        assert torch.allclose(s, channel_scale(before[f"{name}.weight"], 7))  # the max-abs scale is unchanged
        assert torch.allclose(w / s, torch.round(w / s), atol=1e-4)  # every weight on the 4-bit grid
        assert rep["layers"][name]["mse_adaround"] <= rep["layers"][name]["mse_nearest"] * 1.0001


def test_ptq_with_adaround_and_4bit_weights(digits):
    """quantize.rounding=adaround on a 4-bit grid: every layer's rounding is learned and never worse than nearest
    on its own objective; the frozen int8 containers hold values of the 4-bit grid only."""
    from edgekit import models
    from edgekit.quant.config import PTQConfig
    from edgekit.quant.fakequant import QuantWeight
    from edgekit.quant.ptq import graph_of, quantize_ptq

    model = models.create("convnet")
    opts = PTQConfig(weight_bits=4, rounding="adaround", adaround_iters=60, calibration={"method": "minmax", "samples": 64})
    q, rep = quantize_ptq(model, digits.calib.x[:64], digits.calib.x[:1], opts)
    layers = rep["adaround"]["layers"]
    assert rep["adaround"]["bits"] == 4 and set(layers) == set(rep["quantized_layers"])
    assert all(r["mse_adaround"] <= r["mse_nearest"] * 1.0001 for r in layers.values())
    assert "4-bit grid" in rep["weights"] and "adaround" in rep["weights"]
    assert rep["adaround"]["inputs"].startswith("preceding layers rounded")
    assert all(r["loss_after"] == "relu" for n, r in layers.items() if n.startswith("features"))
    # bias correction after AdaRound measures against the float weights (the module weight is already rounded)
    assert rep["bias_correction_max_shift"] > 1e-4
    frozen = {n: m for n, m in graph_of(q).named_modules() if isinstance(m, QuantWeight)}
    assert frozen and all(int(m.weight_int8.abs().max()) <= 7 for m in frozen.values())
    # the frozen int8 weights are the rounding AdaRound learned (nearest rounding with flips where it chose)
    plain, _ = quantize_ptq(model, digits.calib.x[:64], digits.calib.x[:1], opts.model_copy(update={"rounding": "nearest"}))
    near = {n: m for n, m in graph_of(plain).named_modules() if isinstance(m, QuantWeight)}
    flips = [float((frozen[n].weight_int8 != near[n].weight_int8).float().mean()) for n in frozen]
    assert all(abs(f - layers[n]["flipped"]) < 1e-6 for n, f in zip(frozen, flips)), (flips, layers)
