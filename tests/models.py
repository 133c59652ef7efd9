"""Hand-written "third-party" models for tests (written the way users write models, not with edgekit.ops).

Loaded by the CLI as ``tests.models:my_resnet`` / ``tests.models:my_vit``; both take 3x32x32 inputs.

``my_resnet``: a small ResNet with nn.Conv2d / nn.BatchNorm2d, functional ReLU, residual adds and a 1x1
projection shortcut; ``my_vit``: a small ViT with hand-rolled attention (one qkv Linear, view/permute,
F.softmax, no nn.MultiheadAttention) and a class token joined with torch.cat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class MyResNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths=(16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w)]
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        qkv = self.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d // h)
        weights = F.softmax(scores, dim=-1)
        ctx = torch.matmul(weights, v).permute(0, 2, 1, 3).reshape(b, n, d)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, hidden)
        self.ff2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class MyViT(nn.Module):
    def __init__(self, num_classes: int = 10, dim: int = 48, depth: int = 2, heads: int = 3, patch: int = 4) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(3 * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (32 // patch) ** 2 + 1, dim) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, dim * 2) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        b, c, hgt, wid = x.shape
        p = self.patch
        # patchify with reshape/permute instead of a strided conv
        x = x.reshape(b, c, hgt // p, p, wid // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (hgt // p) * (wid // p), c * p * p)
        x = self.embed(x)
        x = torch.cat([self.cls.expand(b, -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.fc(self.ln(x)[:, 0])


def my_resnet(num_classes: int = 10) -> nn.Module:
    """A ResNet-style model for 3x32x32 inputs (random init)."""
    return MyResNet(num_classes)


def my_vit(num_classes: int = 10) -> nn.Module:
    """A ViT-style model for 3x32x32 inputs (random init)."""
    return MyViT(num_classes)
