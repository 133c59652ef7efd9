"""Every block of edgekit.ops: deploy form == multi-branch eval form, tune == eval, and block-specific math."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from edgekit.fusion import fuse
from edgekit.ops import (
    DilatedReparamBlock, GroupedConvBlock, InceptionDWConv, InvertedResidual, MobileOneBlock, RepConv,
)
from edgekit.ops.dilated import BRANCHES, dilated_to_dense
from edgekit.ops.repconv import identity_kernel

from tests._fusion_util import RTOL_F32, RTOL_F64, RTOL_TUNE, forward_and_grads, randomize_bn, rel_err

BLOCKS = {
    "repconv": lambda: RepConv(8, 8, 3),
    "repconv_grouped": lambda: RepConv(8, 8, 3, groups=4),
    "repconv_stride2": lambda: RepConv(8, 12, 3, stride=2),
    "repconv_k5_noid": lambda: RepConv(8, 8, 5, use_identity=False),
    "mobileone_dw": lambda: MobileOneBlock(8, 8, 3, groups=8, num_kxk=3),
    "mobileone_pw": lambda: MobileOneBlock(8, 16, 1),
    "dilated_k7": lambda: DilatedReparamBlock(8, 7),
    "dilated_k13": lambda: DilatedReparamBlock(8, 13),
    "inverted_residual": lambda: InvertedResidual(8, 8, 1, 4),
    "inverted_residual_s2": lambda: InvertedResidual(8, 16, 2, 1),
    "grouped_block": lambda: GroupedConvBlock(8, 8),
    "grouped_block_s2": lambda: GroupedConvBlock(8, 16, 2),
    "inception_dw": lambda: InceptionDWConv(16, band_kernel=7),
}


def _make(name, dtype):
    torch.manual_seed(0)
    return randomize_bn(BLOCKS[name]()).to(dtype).eval()


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, RTOL_F64), (torch.float32, RTOL_F32)], ids=["f64", "f32"])
def test_deploy_equals_eval(name, dtype, tol):
    block = _make(name, dtype)
    x = torch.randn(2, 8 if name != "inception_dw" else 16, 14, 14, dtype=dtype)
    deployed, report = fuse(block, "deploy")
    assert rel_err(deployed(x), block(x)) < tol
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules()), report["left"]
    if hasattr(block, "to_deploy"):  # reparameterizable blocks merge into exactly one conv
        convs = [m for m in deployed.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 1 and report["merged"]


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_tune_equals_eval_with_gradients(name):
    block = _make(name, torch.float64)
    x = torch.randn(2, 8 if name != "inception_dw" else 16, 10, 10, dtype=torch.float64)
    eval_model, _ = fuse(block, "eval")
    tune_model, report = fuse(block, "tune")
    out_e, g_e = forward_and_grads(eval_model, x)
    out_t, g_t = forward_and_grads(tune_model, x)
    assert rel_err(out_t, out_e) < RTOL_TUNE
    assert g_e.keys() == g_t.keys() and g_e
    for k in g_e:
        assert rel_err(g_t[k], g_e[k]) < RTOL_TUNE, k


@pytest.mark.parametrize("k,r", [(3, 2), (5, 3), (3, 5), (7, 2)])
def test_dilated_kernel_equals_dense_kernel(k, r):
    w = torch.randn(4, 1, k, k, dtype=torch.float64)
    x = torch.randn(1, 4, 20, 20, dtype=torch.float64)
    pad = (r * (k - 1) + 1) // 2
    dilated = F.conv2d(x, w, padding=pad, dilation=r, groups=4)
    dense_w = dilated_to_dense(w, r)
    assert dense_w.shape[-1] == r * (k - 1) + 1
    assert torch.allclose(F.conv2d(x, dense_w, padding=pad, groups=4), dilated, rtol=0, atol=1e-12)


def test_dilated_branch_table_matches_paper():
    assert BRANCHES[13] == ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5))
    assert BRANCHES[7] == ((5, 3, 3), (1, 2, 3))
    with pytest.raises(ValueError, match="accepted"):
        DilatedReparamBlock(4, 4)


def test_identity_kernel_is_identity_for_grouped_conv():
    k = identity_kernel(8, 2, (3, 3), torch.zeros(1, dtype=torch.float64))
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    assert torch.equal(F.conv2d(x, k, padding=1, groups=2), x)


def test_repconv_identity_branch_only_when_shapes_allow():
    assert RepConv(8, 8, 3).rbr_identity is not None
    assert RepConv(8, 16, 3).rbr_identity is None
    assert RepConv(8, 8, 3, stride=2).rbr_identity is None
    assert len(MobileOneBlock(8, 8).rbr_dense) == 4


def test_inception_split_follows_the_paper():
    block = InceptionDWConv(64)
    g = int(64 * 0.125)
    assert block.split_sizes == (64 - 3 * g, g, g, g)
    assert block.dwconv_w.kernel_size == (1, 11) and block.dwconv_h.kernel_size == (11, 1)
    x = torch.randn(1, 64, 12, 12)
    assert torch.equal(block(x)[:, : 64 - 3 * g], x[:, : 64 - 3 * g])  # identity channels pass unchanged


def test_grouped_block_uses_groups_2_and_2x2_kernels():
    block = GroupedConvBlock(16, 16)
    assert block.expand.conv.groups == 2 and block.expand.conv.kernel_size == (2, 2)
    assert block(torch.randn(1, 16, 9, 9)).shape == (1, 16, 9, 9)


def test_fuse_does_not_modify_its_input():
    block = _make("repconv", torch.float32)
    before = copy.deepcopy(block.state_dict())
    fuse(block, "deploy")
    after = block.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
