"""UniRepLKNet ("UniRepLKNet: A Universal Perception Large-Kernel ConvNet ...", Ding et al., CVPR 2024):
blocks of a :class:`~edgekit.ops.DilatedReparamBlock` (large depthwise kernel + dilated branches) -> BN ->
1x1 FFN with GELU, with a residual add. The 224 configuration follows UniRepLKNet-A (dims 40/80/160/320,
depths 2/2/6/2, kernel 13); the SE and GRN layers of the paper are left out."""

from __future__ import annotations

from torch import nn

from edgekit.models import register_model
from edgekit.models._common import PooledNormHead
from edgekit.ops import ConvBN, DilatedReparamBlock


class LKBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.dwconv = DilatedReparamBlock(dim, kernel_size)
        self.norm = nn.BatchNorm2d(dim)
        self.fc1 = ConvBN(dim, dim * mlp_ratio, 1, act="gelu")
        self.fc2 = ConvBN(dim * mlp_ratio, dim, 1)

    def forward(self, x):
        return x + self.fc2(self.fc1(self.norm(self.dwconv(x))))


class UniRepLKNet(PooledNormHead):
    def __init__(self, dims, depths, kernel_size: int, stem_strides: tuple[int, ...], num_classes: int = 10) -> None:
        super().__init__()
        stem, cin = [], 3
        for i, s in enumerate(stem_strides):
            out = dims[0] // 2 if i < len(stem_strides) - 1 else dims[0]
            stem.append(ConvBN(cin, out, 3, s, act="gelu"))
            cin = out
        layers = [nn.Sequential(*stem)]
        for i, (d, n) in enumerate(zip(dims, depths)):
            if i > 0:
                layers.append(ConvBN(dims[i - 1], d, 3, 2))
            layers.extend(LKBlock(d, kernel_size) for _ in range(n))
        self._finish(layers, dims[-1], num_classes)


@register_model("unireplknet", description="UniRepLKNet (dilated large-kernel reparam blocks)", family="cnn",
                epochs=10, lr=3e-3)
def unireplknet(size: str = "digits", num_classes: int = 10) -> nn.Module:
    if size == "digits":
        return UniRepLKNet((24, 48, 96), (1, 2, 1), 7, (2,), num_classes)
    return UniRepLKNet((40, 80, 160, 320), (2, 2, 6, 2), 13, (2, 2), num_classes)
