"""Transformer blocks: distinct submodules (the quantizers replace them by name) and correct attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.ops.transformer import Attention, MatMul, Mlp, PatchEmbed, Softmax, TransformerBlock


def test_submodule_names_and_types():
    block = TransformerBlock(32, 4, 2.0)
    assert isinstance(block.norm1, nn.LayerNorm) and isinstance(block.norm2, nn.LayerNorm)
    attn = block.attn
    assert isinstance(attn.qkv, nn.Linear) and attn.qkv.out_features == 96
    assert isinstance(attn.matmul_qk, MatMul) and isinstance(attn.matmul_av, MatMul)
    assert isinstance(attn.softmax, Softmax) and isinstance(attn.proj, nn.Linear)
    assert attn.scale == (32 // 4) ** -0.5
    assert isinstance(block.mlp, Mlp) and isinstance(block.mlp.act, nn.GELU)
    assert block.mlp.fc1.out_features == 64 and block.mlp.fc2.out_features == 32


def test_attention_matches_reference():
    torch.manual_seed(0)
    attn = Attention(32, 4).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads = lambda t: t.reshape(2, 10, 4, 8).transpose(1, 2)  # noqa: E731
    ref = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(2, 10, 32)
    assert torch.allclose(attn(x), attn.proj(ref), atol=1e-12)


def test_patch_embed_shapes():
    pe = PatchEmbed(3, 24, 4)
    assert pe(torch.randn(2, 3, 32, 32)).shape == (2, 64, 24)


def test_block_residuals():
    block = TransformerBlock(16, 2)
    for m in (block.attn.proj, block.mlp.fc2):
        nn.init.zeros_(m.weight)
        nn.init.zeros_(m.bias)
    x = torch.randn(2, 5, 16)
    assert torch.equal(block(x), x)  # both branches zero: the residual adds pass x through
