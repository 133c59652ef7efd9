"""A Next-ViT-like hybrid ("Next-ViT: Next Generation Vision Transformer for Efficient Deployment in
Realistic Industrial Scenarios", Li et al., 2022): convolution stages (grouped 3x3 ConvBN + 1x1 ConvBN,
residual) at high resolution, then attention stages (edgekit TransformerBlocks over the feature-map tokens)
at low resolution. The 224 configuration is small (dims 64/128/256/512, depths 2/2/4/2)."""

from __future__ import annotations

from torch import nn

from edgekit.models import register_model
from edgekit.models._common import PooledNormHead
from edgekit.ops import ConvBN, TransformerBlock
from edgekit.ops.transformer import map_to_tokens, tokens_to_map


class ConvBlock(nn.Module):
    """Residual grouped 3x3 ConvBN-ReLU (16 channels a group) -> 1x1 ConvBN."""

    def __init__(self, dim: int, group_channels: int = 16) -> None:
        super().__init__()
        self.conv = ConvBN(dim, dim, 3, groups=max(1, dim // group_channels), act="relu")
        self.pw = ConvBN(dim, dim, 1)

    def forward(self, x):
        return x + self.pw(self.conv(x))


class AttentionStage(nn.Module):
    """TransformerBlocks over the (H*W) tokens of a feature map; returns a feature map."""

    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, 2.0) for _ in range(depth)))

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        return tokens_to_map(self.blocks(map_to_tokens(x)), h, w)


class Hybrid(PooledNormHead):
    def __init__(self, dims, depths, kinds, stem_strides, head_dim: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        stem, cin = [], 3
        for s in stem_strides:
            stem.append(ConvBN(cin, dims[0], 3, s, act="relu"))
            cin = dims[0]
        layers = [nn.Sequential(*stem)]
        for i, (d, n, kind) in enumerate(zip(dims, depths, kinds)):
            if i > 0:
                layers.append(ConvBN(dims[i - 1], d, 3, 2, act="relu"))
            if kind == "conv":
                layers.extend(ConvBlock(d) for _ in range(n))
            else:
                layers.append(AttentionStage(d, n, max(1, d // head_dim)))
        self._finish(layers, dims[-1], num_classes)


@register_model("hybrid", description="Next-ViT-like hybrid: conv stages then attention stages", family="hybrid",
                epochs=20, lr=2e-3, weight_decay=0.05)
def hybrid(size: str = "digits", num_classes: int = 10) -> nn.Module:
    if size == "digits":
        return Hybrid((32, 64, 96), (1, 1, 2), ("conv", "conv", "attn"), (2,), num_classes=num_classes)
    return Hybrid((64, 128, 256, 512), (2, 2, 4, 2), ("conv", "conv", "attn", "attn"), (2, 2), num_classes=num_classes)
