"""Third-party-style models for the pruning tests, written unlike the zoo: torch.cat of channel branches,
grouped and depthwise convs, torch.chunk, an SE gate, flatten into a Linear, and a ViT with separate q/k/v
Linears, reshape-based heads and a mean-pooled token output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Branchy(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2, 1)
        self.stem_bn = nn.BatchNorm2d(32)
        self.left = nn.Conv2d(32, 16, 1)
        self.left_bn = nn.BatchNorm2d(16)
        self.right = nn.Conv2d(32, 32, 3, 1, 1, groups=4, bias=False)  # grouped
        self.right_bn = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(48, 48, 3, 2, 1, groups=48, bias=False)  # depthwise on the concatenation
        self.dw_bn = nn.BatchNorm2d(48)
        self.se_reduce = nn.Conv2d(48, 12, 1)
        self.se_expand = nn.Conv2d(12, 48, 1)
        self.pw = nn.Conv2d(24, 32, 1)
        self.pw_bn = nn.BatchNorm2d(32)
        self.classifier = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        y = torch.cat([F.relu(self.left_bn(self.left(x))), F.relu(self.right_bn(self.right(x)))], dim=1)
        y = F.relu(self.dw_bn(self.dw(y)))
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        y = y * gate
        a, b = torch.chunk(y, 2, dim=1)
        y = F.relu(self.pw_bn(self.pw(a + b)))
        y = F.adaptive_avg_pool2d(y, 4)
        return self.classifier(y.view(y.size(0), -1))


class Block(nn.Module):
    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.pre = nn.LayerNorm(width)
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.o = nn.Linear(width, width)
        self.post = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, t):
        bsz, n, w = t.shape
        h = self.pre(t)
        q = self.q(h).reshape(bsz, n, self.n_heads, -1).transpose(1, 2)
        k = self.k(h).reshape(bsz, n, self.n_heads, -1).transpose(1, 2)
        v = self.v(h).reshape(bsz, n, self.n_heads, -1).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)).mul(q.shape[-1] ** -0.5).softmax(-1)
        t = t + self.o((att @ v).transpose(1, 2).reshape(bsz, n, -1))
        return t + self.down(F.silu(self.up(self.post(t))))


class TinyTransformer(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32, n_heads: int = 4) -> None:
        super().__init__()
        self.to_tokens = nn.Conv2d(3, width, 8, 8)
        self.blocks = nn.ModuleList([Block(width, n_heads), Block(width, n_heads)])
        self.out = nn.Linear(width, num_classes)

    def forward(self, img):
        t = self.to_tokens(img).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            t = blk(t)
        return self.out(t.mean(1))
