"""InceptionNeXt ("InceptionNeXt: When Inception Meets ConvNeXt", Yu et al., CVPR 2024): MetaNeXt blocks
with the :class:`~edgekit.ops.InceptionDWConv` token mixer -> BN -> 1x1 MLP (GELU), residual add.
The 224 configuration follows InceptionNeXt-Atto (dims 40/80/160/320, depths 2/2/6/2, band kernel 9)."""

from __future__ import annotations

from torch import nn

from edgekit.models import register_model
from edgekit.models._common import PooledNormHead
from edgekit.ops import ConvBN, InceptionDWConv


class MetaNeXtBlock(nn.Module):
    def __init__(self, dim: int, band_kernel: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.token_mixer = InceptionDWConv(dim, band_kernel=band_kernel)
        self.norm = nn.BatchNorm2d(dim)
        self.fc1 = ConvBN(dim, dim * mlp_ratio, 1, act="gelu")
        self.fc2 = nn.Conv2d(dim * mlp_ratio, dim, 1)

    def forward(self, x):
        return x + self.fc2(self.fc1(self.norm(self.token_mixer(x))))


class InceptionNeXt(PooledNormHead):
    def __init__(self, dims, depths, band_kernel: int, stem_stride: int, num_classes: int = 10) -> None:
        super().__init__()
        layers = [ConvBN(3, dims[0], stem_stride, stem_stride)]
        for i, (d, n) in enumerate(zip(dims, depths)):
            if i > 0:
                layers.append(ConvBN(dims[i - 1], d, 2, 2, padding=0))
            layers.extend(MetaNeXtBlock(d, band_kernel) for _ in range(n))
        self._finish(layers, dims[-1], num_classes)


@register_model("inceptionnext", description="InceptionNeXt (Inception depthwise token mixer)", family="cnn",
                epochs=10, lr=3e-3)
def inceptionnext(size: str = "digits", num_classes: int = 10) -> nn.Module:
    if size == "digits":
        return InceptionNeXt((32, 64, 96), (1, 2, 1), 7, 2, num_classes)
    return InceptionNeXt((40, 80, 160, 320), (2, 2, 6, 2), 9, 4, num_classes)
