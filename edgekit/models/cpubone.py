"""A CPUBone-style backbone ("CPUBone: Efficient Vision Backbone Design for Devices with Low
Parallelization Capabilities", 2025): stages of :class:`~edgekit.ops.GroupedConvBlock` (2x2 grouped
expansion conv, groups = 2, then a 1x1 projection), which keep MACs low and MACs per second high on CPUs."""

from __future__ import annotations

from torch import nn

from edgekit.models import register_model
from edgekit.ops import ConvBN, GroupedConvBlock


class CPUBone(nn.Module):
    def __init__(self, stem: int, stages, last: int, num_classes: int = 10) -> None:
        super().__init__()
        layers, cin = [ConvBN(3, stem, 3, 2, act="relu")], stem
        for c, n, s in stages:
            for i in range(n):
                layers.append(GroupedConvBlock(cin, c, s if i == 0 else 1))
                cin = c
        layers.append(ConvBN(cin, last, 1, act="relu"))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


@register_model("cpubone", description="CPUBone-style grouped (g=2) 2x2-kernel fused-MBConv backbone", family="cnn",
                epochs=15, lr=3e-3)
def cpubone(size: str = "digits", num_classes: int = 10) -> nn.Module:
    if size == "digits":
        return CPUBone(24, ((24, 1, 1), (48, 2, 2), (96, 2, 2)), 192, num_classes)
    return CPUBone(32, ((32, 1, 1), (64, 2, 2), (128, 3, 2), (256, 4, 2), (384, 2, 2)), 768, num_classes)
