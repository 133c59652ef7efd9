"""Mobile CNN blocks.

``InvertedResidual``: MobileNetV2's expand (1x1) -> depthwise (3x3) -> linear projection (1x1) block with a
residual add when shapes allow ("MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler et al.,
CVPR 2018).

``GroupedConvBlock``: a CPU-friendly fused-MBConv variant in the spirit of CPUBone ("CPUBone: Efficient Vision
Backbone Design for Devices with Low Parallelization Capabilities", 2025): the expansion conv is grouped
(groups = 2) with a small 2x2 kernel, which cuts MACs while keeping MACs per second high on CPUs; a 1x1
projection mixes the groups. Even kernels are padded bottom/right only (stride 1) so the size is kept.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.ops.convbn import ConvBN


class InvertedResidual(nn.Module):
    """Submodules: ``expand`` (1x1 ConvBN-ReLU6, or nn.Identity when expand_ratio == 1), ``dw`` (3x3 depthwise
    ConvBN-ReLU6), ``project`` (1x1 ConvBN, no activation); ``use_residual`` when stride 1 and in == out."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: float = 6.0,
                 kernel_size: int = 3) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = ConvBN(in_channels, hidden, 1, act="relu6") if expand_ratio != 1 else nn.Identity()
        self.dw = ConvBN(hidden, hidden, kernel_size, stride, groups=hidden, act="relu6")
        self.project = ConvBN(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x)))
        return x + out if self.use_residual else out


class GroupedConvBlock(nn.Module):
    """Submodules: ``pad`` (nn.ZeroPad2d or nn.Identity), ``expand`` (kxk grouped ConvBN-ReLU),
    ``project`` (1x1 ConvBN); residual add when stride 1 and in == out."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: float = 2.0,
                 kernel_size: int = 2, groups: int = 2) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        hidden += (-hidden) % groups
        if in_channels % groups:
            raise ValueError(f"GroupedConvBlock: {in_channels} input channels not divisible by groups={groups}")
        self.use_residual = stride == 1 and in_channels == out_channels
        if kernel_size % 2 == 0:
            # an even kernel cannot be centred: pad so that the output is ceil(H / stride)
            total = kernel_size - stride if stride <= kernel_size else 0
            self.pad = nn.ZeroPad2d((0, total, 0, total)) if total > 0 else nn.Identity()
            padding = 0
        else:
            self.pad, padding = nn.Identity(), kernel_size // 2
        self.expand = ConvBN(in_channels, hidden, kernel_size, stride, padding, groups=groups, act="relu")
        self.project = ConvBN(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.expand(self.pad(x)))
        return x + out if self.use_residual else out
