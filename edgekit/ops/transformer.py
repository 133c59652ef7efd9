"""Transformer blocks for vision models (ViT / DeiT, "An Image is Worth 16x16 Words", Dosovitskiy et al.,
ICLR'21; "Training data-efficient image transformers", Touvron et al., ICML'21).

Every elementary operation is its own submodule, so that the integer-only (I-ViT) and binary (BiViT)
quantizers can replace them one by one. Class and attribute names (other stages rely on them):

``PatchEmbed(in_chans, embed_dim, patch_size)``
    ``proj``: nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size).
    forward: (B, C, H, W) -> proj -> flatten(2).transpose(1, 2) -> (B, N, embed_dim).
``MatMul``
    forward(a, b) = a @ b (a module so that it can be swapped for an integer matmul).
``Softmax(dim=-1)``
    forward(x) = softmax(x, dim).
``Attention(dim, num_heads, qkv_bias=True)``
    ``qkv``: nn.Linear(dim, 3 * dim) (output laid out as [q | k | v], each [head0 | head1 | ...]),
    ``matmul_qk``: MatMul, ``softmax``: Softmax, ``matmul_av``: MatMul, ``proj``: nn.Linear(dim, dim),
    ``num_heads``, ``head_dim``, ``scale`` = head_dim ** -0.5 (a float attribute).
    forward: q, k, v = split(qkv(x)); a = matmul_qk(q, k^T) * scale; p = softmax(a);
    o = matmul_av(p, v); proj(merge_heads(o)).
``Mlp(dim, hidden_dim)``
    ``fc1``: nn.Linear, ``act``: nn.GELU, ``fc2``: nn.Linear.
``TransformerBlock(dim, num_heads, mlp_ratio=4.0)``
    ``norm1``: nn.LayerNorm, ``attn``: Attention, ``norm2``: nn.LayerNorm, ``mlp``: Mlp.
    forward: x = x + attn(norm1(x)); x = x + mlp(norm2(x))  (residual adds are plain tensor adds).
``tokens_to_map`` / ``map_to_tokens``
    helpers for hybrid models that run attention on (B, C, H, W) feature maps.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchEmbed", "MatMul", "Softmax", "Attention", "Mlp", "TransformerBlock", "map_to_tokens", "tokens_to_map"]


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: a strided conv followed by flattening to tokens."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 192, patch_size: int = 16) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class MatMul(nn.Module):
    """``a @ b`` as a module (replaced by integer / binary matmuls in quantized models)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class Softmax(nn.Module):
    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.dim)


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, dim) tokens with a fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int = 3, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.matmul_qk = MatMul()
        self.softmax = Softmax(dim=-1)
        self.matmul_av = MatMul()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.matmul_qk(q, k.transpose(-2, -1)) * self.scale
        attn = self.softmax(attn)
        out = self.matmul_av(attn, v)
        # the inner width (heads x head_dim) need not equal the input width (e.g. after pruning the residual)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or 4 * dim
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: attention and MLP, each with a residual add."""

    def __init__(self, dim: int, num_heads: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
