"""BiViT math: threshold rule, alpha initialisation, straight-through gradients (methods.md, BiViT checks)."""

from __future__ import annotations

import torch
from torch import nn

from edgekit.quant.bivit import functional as BF
from edgekit.quant.bivit.modules import BinaryLinear, BinaryMatMul, BinarySoftmax


def test_sign_has_no_zeros():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0])
    assert BF.sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0, 1.0]


def test_sign_ste_forward_is_sign_and_gradient_is_clipped():
    torch.manual_seed(0)
    x = (torch.randn(4096) * 1.5).requires_grad_()
    y = BF.sign_ste(x)
    assert torch.equal(y.detach(), BF.sign(x.detach()))  # forward exactly +-1, also with autograd on
    g = torch.randn(4096)
    (y * g).sum().backward()
    inside = x.detach().abs() < 1
    assert inside.any() and (~inside).any()
    assert torch.equal(x.grad[inside], g[inside])
    assert torch.count_nonzero(x.grad[~inside]) == 0


def test_alpha_initialised_to_row_mean_abs_and_weight_binarization():
    torch.manual_seed(1)
    lin = nn.Linear(37, 11)
    layer = BinaryLinear.from_linear(lin, act_bits=32)
    w = lin.weight.detach()
    expected_alpha = torch.stack([w[r].abs().sum() / w.shape[1] for r in range(w.shape[0])])
    torch.testing.assert_close(layer.alpha.detach(), expected_alpha, rtol=1e-6, atol=0)
    wb = layer.binary_weight().detach()
    centred = w - w.mean(1, keepdim=True)
    assert torch.equal(wb, expected_alpha[:, None] * torch.where(centred >= 0, 1.0, -1.0))
    # two values per row: +-alpha
    for r in range(wb.shape[0]):
        assert set(wb[r].abs().unique().tolist()) == {layer.alpha[r].item()}


def test_weight_gradients_alpha_and_clipped_ste():
    torch.manual_seed(2)
    w = (torch.randn(6, 9) * 1.2).requires_grad_()
    alpha = torch.rand(6).add(0.5).requires_grad_()
    g = torch.randn(6, 9)
    (BF.binarize_weight(w, alpha) * g).sum().backward()
    centred = (w - w.mean(1, keepdim=True)).detach()
    s = torch.where(centred >= 0, 1.0, -1.0)
    torch.testing.assert_close(alpha.grad, (g * s).sum(1))
    # d/dW of alpha * sign_ste(W - mean_row W): mask the upstream grad by |centred| < 1, then the mean's Jacobian
    gm = alpha.detach()[:, None] * g * (centred.abs() < 1)
    expected = gm - gm.mean(1, keepdim=True)
    torch.testing.assert_close(w.grad, expected)


def test_softmax_aware_threshold_is_quarter_of_row_max():
    p = torch.tensor([[0.40, 0.10, 0.0999, 0.2, 0.2001],
                      [0.05, 0.80, 0.10, 0.02, 0.03]])
    tau = BF.attention_threshold(p)
    torch.testing.assert_close(tau, torch.tensor([[0.10], [0.20]]))
    a = BF.softmax_aware_binarize(p)
    assert a.tolist() == [[1.0, 1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0, 0.0]]


def test_softmax_aware_on_random_rows_matches_rule():
    torch.manual_seed(3)
    s = torch.randn(2, 3, 17, 17) * 3
    p = torch.softmax(s, -1)
    a = BF.softmax_aware_binarize(p)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, (p >= 0.25 * p.max(-1, keepdim=True).values).float())
    assert torch.all(a.sum(-1) >= 1)  # the row max always passes


def test_straight_through_gradient_equals_softmax_gradient():
    torch.manual_seed(4)
    s1 = (torch.randn(3, 9, 9) * 2).requires_grad_()
    s2 = s1.detach().clone().requires_grad_()
    g = torch.randn(3, 9, 9)
    out = BinarySoftmax(-1, "softmax_aware")(s1)
    assert set(out.detach().unique().tolist()) <= {0.0, 1.0}  # forward stays exactly binary in training
    (out * g).sum().backward()
    (torch.softmax(s2, -1) * g).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-5, atol=1e-7)
    assert s1.grad.abs().sum() > 0


def test_naive_threshold_is_row_mean():
    p = torch.softmax(torch.randn(4, 10), -1)
    a = BF.naive_binarize_probs(p)
    assert torch.equal(a, (p >= p.mean(-1, keepdim=True)).float())


def test_binary_activation_scale_and_matmul_factorisation():
    torch.manual_seed(5)
    a, b = torch.randn(2, 5, 8), torch.randn(2, 8, 6)
    out = BinaryMatMul(1)(a, b)
    sa, sb = a.abs().mean(-1, keepdim=True), b.abs().mean(-2, keepdim=True)
    expected = (BF.sign(a) @ BF.sign(b)) * sa * sb  # scales factor out of the +-1 product
    torch.testing.assert_close(out, expected)


def test_int8_fake_quant_grid_and_error():
    torch.manual_seed(6)
    x = torch.randn(1000) * 3
    q = BF.fake_quant_int8(x)
    scale = x.abs().max() / 127
    k = q / scale
    torch.testing.assert_close(k, k.round(), atol=1e-4, rtol=0)
    assert (q - x).abs().max() <= scale / 2 + 1e-6


def test_attention_mean_divides_by_selected_count():
    torch.manual_seed(7)
    p = torch.softmax(torch.randn(2, 6, 6) * 2, -1)
    a = BF.softmax_aware_binarize(p)
    v = torch.randn(2, 6, 4)
    out = BinaryMatMul(1, binarize_a=False, normalize_a=True)(a, v)
    expected = (a @ BF.sign(v)) * v.abs().mean(-2, keepdim=True) / a.sum(-1, keepdim=True)
    torch.testing.assert_close(out, expected)
