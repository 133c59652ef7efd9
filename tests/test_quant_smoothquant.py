"""SmoothQuant (quant/smoothquant.py): exact in float, finds the LayerNorm -> Linear pairs of edgekit's blocks and of
a transformers ViT (functional layer_norm on a torch.export graph), alpha from the config (issue 21)."""

from __future__ import annotations

import pytest
import torch

from edgekit.errors import UserInputError
from edgekit.quant.config import PTQConfig
from edgekit.quant.ptq import quantize_ptq, trace
from edgekit.quant.smoothquant import find_pairs, smooth

REL_TOL = 1e-5  # smoothed vs unsmoothed float output: max |diff| / max |out|


def _vit():
    from edgekit.models.vit import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(32, 8, 32, 2, 2, 2.0, 10).eval()
    with torch.no_grad():  # outlier channels, as trained transformers have: what SmoothQuant is for
        for blk in m.blocks:
            blk.norm1.weight[:3] *= 20.0
    return m


def _x(n=8):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothing_is_exact_in_float_and_evens_the_activation_channels(alpha):
    x = _x()
    gm, _ = trace(_vit(), x[:1])
    with torch.no_grad():
        ref = gm(x)
    pairs = find_pairs(gm)
    assert len(pairs) == 4 and sorted(t.rsplit(".", 1)[-1] for p in pairs for t in p.linears) == ["fc1", "fc1", "qkv", "qkv"]
    qkv_in = {}
    def record(_m, a):
        qkv_in[len(qkv_in)] = a[0].abs().amax((0, 1))

    h = gm.get_submodule("blocks.0.attn.qkv").register_forward_pre_hook(record)
    with torch.no_grad():
        gm(x)
        rep = smooth(gm, x, alpha)
        got = gm(x)
    h.remove()
    assert rep["pairs"] == 4 and rep["alpha"] == alpha and rep["max_scale_spread"] > 1.0
    assert _rel(got, ref) <= REL_TOL
    before, after = qkv_in[0], qkv_in[max(qkv_in)]  # the last call ran the smoothed model
    assert after.max() / after.min() < before.max() / before.min()  # the outlier channels shrank relative to the rest


@pytest.mark.slow  # transformers import + torch.export capture: ~10 s quiet, 80 s measured under load
def test_functional_layer_norm_of_a_transformers_vit():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, num_labels=10)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg).eval()
    x = _x(4)
    gm, _ = trace(model, x[:1])

    def logits(y):
        return y.logits if hasattr(y, "logits") else (y[0] if isinstance(y, (tuple, list)) else y)

    with torch.no_grad():
        ref = torch.cat([logits(gm(x[i : i + 1])) for i in range(len(x))])
        rep = smooth(gm, x[:1], 0.5, batch_size=1)
        got = torch.cat([logits(gm(x[i : i + 1])) for i in range(len(x))])
    assert rep["pairs"] == 4 and rep["linears"] == 8  # layernorm_before -> q, k, v (3 linears) ... and -> intermediate
    assert _rel(got, ref) <= REL_TOL


def test_ptq_option_reports_and_refuses_bad_alpha():
    x = _x(8)
    _, rep = quantize_ptq(_vit(), x, x[:1], PTQConfig(calibration={"method": "minmax", "samples": 8}, bias_correction=False,
                                                      smoothquant={"enabled": True, "alpha": 0.7}))
    assert rep["smoothquant"]["pairs"] == 4 and rep["smoothquant"]["alpha"] == 0.7
    assert not PTQConfig().smoothquant.enabled and PTQConfig().smoothquant.alpha == 0.8  # off until the export gap is explained
    _, off = quantize_ptq(_vit(), x, x[:1], PTQConfig(calibration={"method": "minmax", "samples": 8}, bias_correction=False,
                                                      smoothquant={"enabled": False}))
    assert "smoothquant" not in off
    with pytest.raises(Exception, match="alpha"):
        PTQConfig(smoothquant={"enabled": True, "alpha": 1.5})
    gm, _ = trace(_vit(), x[:1])
    with pytest.raises(UserInputError, match="alpha"):
        smooth(gm, x, alpha=-0.1)
