"""Unit tests of the int8 building blocks: schemes, observers, fake quant, LSQ, CLE, placement."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgekit.errors import UserInputError
from edgekit.quant.config import ACT_INT8_SYM, ACT_UINT8, WEIGHT_INT8, qparams
from edgekit.quant.equalize import equalize, find_pairs
from edgekit.quant.fakequant import ActFakeQuant, QuantConv2d, fake_quant, lsq_fake_quant, quantize_weight
from edgekit.quant.observers import OBSERVERS, make_observer
from edgekit.quant.sensitivity import choose_float_layers, sqnr_db


def test_qparams_affine_and_symmetric():
    s, z = qparams(0.0, 2.55, ACT_UINT8)
    assert math.isclose(float(s), 0.01, rel_tol=1e-6) and int(z) == 0  # ReLU output: zero point at the bottom
    s, z = qparams(-1.0, 3.0, ACT_UINT8)
    assert int(z) == round(1.0 / float(s))  # 0.0 is exactly representable
    s, z = qparams(-2.0, 1.0, ACT_INT8_SYM)
    assert math.isclose(float(s), 2.0 / 127, rel_tol=1e-6) and int(z) == 0


def test_weight_quant_per_channel_error_bound():
    w = torch.randn(8, 4, 3, 3) * torch.logspace(-2, 1, 8).reshape(-1, 1, 1, 1)
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and s.shape == (8,)
    err = (q.float() * s.reshape(-1, 1, 1, 1) - w).abs().reshape(8, -1).amax(1)
    assert torch.all(err <= s / 2 + 1e-7)  # rounding error at most half a step, per channel


def test_fake_quant_matches_torch_and_ste_gradient():
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    y = fake_quant(x, torch.tensor(0.02), torch.tensor(0.0), -128, 127)
    ref = torch.fake_quantize_per_tensor_affine(x.detach(), 0.02, 0, -128, 127)
    assert torch.allclose(y, ref, atol=1e-6)
    y.sum().backward()
    inside = (x.detach() / 0.02).round().abs() <= 127
    assert torch.equal(x.grad, inside.float())  # straight-through inside the range, zero outside


def test_lsq_scale_gradient_is_scaled():
    x = torch.randn(1000)
    s = torch.tensor(0.05, requires_grad=True)
    lsq_fake_quant(x, s, torch.tensor(0.0), -128, 127).sum().backward()
    s2 = torch.tensor(0.05, requires_grad=True)
    fake_quant(x, s2, torch.tensor(0.0), -128, 127).sum().backward()
    g = 1 / math.sqrt(1000 * 127)
    assert math.isclose(float(s.grad), float(s2.grad) * g, rel_tol=1e-4)


@pytest.mark.parametrize("method", OBSERVERS.names())
def test_observers_cover_bulk_and_clip_outliers(method):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g).abs()
    x[0] = 50.0  # one outlier
    obs = make_observer(method, ACT_UINT8)
    for chunk in x.split(5000):
        obs.update(chunk)
    lo, hi = obs.range()
    assert float(lo) >= 0.0 and int(obs.qparams()[1]) == 0  # non-negative data: zero point at the bottom
    assert float(hi) >= 2.5  # covers the bulk of |N(0,1)|
    if method in ("percentile", "mse", "entropy"):
        assert float(hi) < 50.0  # the outlier is clipped
    if method == "minmax":
        assert float(hi) == 50.0


def test_mse_observer_beats_minmax_error():
    from edgekit.quant.config import QScheme
    from edgekit.quant.observers import quant_error

    # heavy-tailed data on a coarse (4-bit) grid: clipping the tail lowers the error a lot; MSE must find it
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((50000,))
    for scheme, factor in ((QScheme(-8, 7, True), 0.7), (ACT_INT8_SYM, 1.001)):
        mse, mm = make_observer("mse", scheme), make_observer("minmax", scheme)
        mse.update(x)
        mm.update(x)
        assert quant_error(x, *mse.range(), scheme) < factor * quant_error(x, *mm.range(), scheme)


def test_unknown_observer_is_user_error():
    with pytest.raises(UserInputError, match="accepted"):
        make_observer("kl-magic", ACT_UINT8)


def test_quantconv_int8_storage_and_forward():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    qc = QuantConv2d(conv)
    qc.wmode = "fake"
    x = torch.randn(2, 4, 6, 6)
    y_fake = qc(x)
    qc.freeze()
    assert qc.weight_int8.dtype == torch.int8
    assert torch.allclose(qc(x), y_fake, atol=1e-5)
    assert qc.storage_bytes() == 8 * 4 * 9 + 4 * 8 + 4 * 8
    assert torch.allclose(qc(x), conv(x), atol=0.05)


def test_actquant_modes():
    q = ActFakeQuant(ACT_UINT8, make_observer("minmax", ACT_UINT8))
    x = torch.rand(100) * 2.55
    assert torch.equal(q(x), x)  # observing is transparent
    q.freeze_from_observer()
    assert q.mode == "quant" and q.zero_point_i == 0
    assert (q(x) - x).abs().max() <= q.scale_f / 2 + 1e-6


def test_cross_layer_equalization_is_exact_and_balances():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        m[0].weight.mul_(torch.logspace(-2, 1, 8).reshape(-1, 1, 1, 1))
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(2, 3, 8, 8)
    ref = gm(x)
    assert find_pairs(gm) == [("0", "2")]
    equalize(gm)
    assert torch.allclose(gm(x), ref, atol=1e-5)
    r1 = gm.get_submodule("0").weight.abs().reshape(8, -1).amax(1)
    r2 = gm.get_submodule("2").weight.abs().transpose(0, 1).reshape(8, -1).amax(1)
    assert torch.allclose(r1, r2, rtol=1e-4)


def test_sqnr_and_choose_float_layers():
    a = torch.randn(1000)
    assert sqnr_db(a, a) == math.inf
    assert sqnr_db(a, a + 0.01 * a) == pytest.approx(40.0, abs=0.01)
    sens = [{"layer": "a", "sqnr_db": 40.0}, {"layer": "b", "sqnr_db": 12.0}, {"layer": "c", "sqnr_db": 25.0}]
    assert choose_float_layers(sens, top_n=1) == ["b"]
    assert choose_float_layers(sens, sqnr_budget_db=30.0) == ["b", "c"]
    rel = [dict(r, relevance=v) for r, v in zip(sens, (0.5, 0.1, 0.4))]
    assert choose_float_layers(rel, top_n=2, criterion="relevance") == ["a", "c"]
