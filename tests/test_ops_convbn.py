"""ConvBN modes: tune == eval (forward, all four gradients), deploy == eval, and the fold vs PyTorch's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgekit.fusion import set_convbn_mode
from edgekit.ops import ConvBN

from tests._fusion_util import RTOL_F32, RTOL_F64, RTOL_TUNE, forward_and_grads, randomize_bn, rel_err


def _block(bias: bool, affine: bool = True, groups: int = 1, dtype=torch.float64) -> ConvBN:
    torch.manual_seed(0)
    m = ConvBN(4, 6, 3, stride=2, groups=groups, bias=bias, act="relu")
    if not affine:
        m.bn = nn.BatchNorm2d(6, affine=False)
    return randomize_bn(m).to(dtype)


@pytest.mark.parametrize("bias,affine,groups", [(True, True, 1), (False, True, 2), (True, False, 1)])
def test_tune_matches_eval_forward_and_gradients(bias, affine, groups):
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64)
    eval_block = _block(bias, affine, groups).set_mode("eval").train()  # eval mode freezes BN even in train()
    tune_block = copy.deepcopy(eval_block).set_mode("tune")
    out_e, g_e = forward_and_grads(eval_block, x)
    out_t, g_t = forward_and_grads(tune_block, x)
    assert rel_err(out_t, out_e) < RTOL_TUNE
    expected = {"conv.weight"} | ({"conv.bias"} if bias else set()) | ({"bn.weight", "bn.bias"} if affine else set())
    assert set(g_e) == set(g_t) == expected
    for name in expected:
        assert rel_err(g_t[name], g_e[name]) < RTOL_TUNE, name
    # running statistics stay frozen in both modes
    assert torch.equal(eval_block.bn.running_mean, tune_block.bn.running_mean)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, RTOL_F64), (torch.float32, RTOL_F32)])
def test_deploy_matches_eval(dtype, tol):
    block = _block(True, dtype=dtype).eval()
    x = torch.randn(2, 4, 11, 11, dtype=dtype)
    ref = block(x)
    deployed = block.to_deploy()
    assert rel_err(deployed(x), ref) < tol
    block.set_mode("deploy")
    assert block.bn is None and rel_err(block(x), ref) < tol


def test_fold_agrees_with_pytorch_fuse_conv_bn_eval():
    block = _block(True).eval()
    ours = block.to_deploy().conv
    theirs = fuse_conv_bn_eval(copy.deepcopy(block.conv), copy.deepcopy(block.bn))
    assert torch.allclose(ours.weight, theirs.weight, rtol=0, atol=1e-12)
    assert torch.allclose(ours.bias, theirs.bias, rtol=0, atol=1e-12)


def test_train_mode_uses_batch_statistics_eval_mode_does_not():
    block = _block(False, dtype=torch.float32).train()
    x = torch.randn(8, 4, 9, 9) * 3 + 1
    before = block.bn.running_mean.clone()
    block(x)
    assert not torch.equal(block.bn.running_mean, before)  # train: running stats move
    frozen = block.bn.running_mean.clone()
    block.set_mode("eval")
    block(x)
    assert torch.equal(block.bn.running_mean, frozen)


def test_set_convbn_mode_switches_every_block_and_rejects_bad_modes():
    model = nn.Sequential(ConvBN(3, 4, 3), nn.ReLU(), ConvBN(4, 4, 3))
    assert set_convbn_mode(model, "tune") == ["0", "2"]
    assert all(m.mode == "tune" for m in model.modules() if isinstance(m, ConvBN))
    from edgekit.errors import UserInputError

    with pytest.raises(UserInputError, match="accepted"):
        set_convbn_mode(model, "fast")
    set_convbn_mode(model, "deploy")
    with pytest.raises(ValueError, match="cannot switch back"):
        model[0].set_mode("eval")
