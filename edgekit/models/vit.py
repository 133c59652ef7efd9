"""Vision Transformer / DeiT ("An Image is Worth 16x16 Words", Dosovitskiy et al., ICLR 2021; "Training
data-efficient image transformers", Touvron et al., ICML 2021) from edgekit's transformer blocks.
The 224 configuration is DeiT-Tiny-shaped (dim 192, depth 12, 3 heads, patch 16); the digits one uses
patch 4 on 32x32, dim 64, depth 4, 4 heads.

Attribute names: ``patch_embed`` (PatchEmbed), ``cls_token``, ``pos_embed`` (parameters), ``blocks``
(nn.Sequential of TransformerBlock), ``norm`` (LayerNorm), ``head`` (Linear on the class token)."""

from __future__ import annotations

import torch
from torch import nn

from edgekit.models import register_model
from edgekit.ops import PatchEmbed, TransformerBlock


class VisionTransformer(nn.Module):
    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(3, dim, patch_size)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_model("vit", description="ViT / DeiT-Tiny-shaped transformer (patch embed, MHSA, GELU MLP)", family="vit",
                epochs=40, lr=1e-3, weight_decay=0.05)
def vit(size: str = "digits", num_classes: int = 10) -> nn.Module:
    if size == "digits":
        return VisionTransformer(32, 4, 64, 4, 4, 2.0, num_classes)
    return VisionTransformer(224, 16, 192, 12, 3, 4.0, num_classes)
