"""InceptionNeXt's depthwise token mixer ("InceptionNeXt: When Inception Meets ConvNeXt", Yu et al., CVPR 2024).

The channels are split: g = int(0.125 * C) channels each go to a depthwise 3x3, a depthwise 1x11 and a
depthwise 11x1 conv; the remaining C - 3g channels pass unchanged (identity). The results are concatenated
in the order (identity, 3x3, 1xk, kx1). There is no reparameterization: the branches act on disjoint channels.
"""

from __future__ import annotations

import torch
from torch import nn


class InceptionDWConv(nn.Module):
    """Submodules ``dwconv_hw`` (3x3), ``dwconv_w`` (1 x band), ``dwconv_h`` (band x 1), all depthwise with bias."""

    def __init__(self, channels: int, square_kernel: int = 3, band_kernel: int = 11, branch_ratio: float = 0.125) -> None:
        super().__init__()
        g = int(channels * branch_ratio)
        if g < 1:
            raise ValueError(f"InceptionDWConv: {channels} channels x branch_ratio {branch_ratio} leaves no branch channel")
        self.split_sizes = (channels - 3 * g, g, g, g)
        self.dwconv_hw = nn.Conv2d(g, g, square_kernel, padding=square_kernel // 2, groups=g)
        self.dwconv_w = nn.Conv2d(g, g, (1, band_kernel), padding=(0, band_kernel // 2), groups=g)
        self.dwconv_h = nn.Conv2d(g, g, (band_kernel, 1), padding=(band_kernel // 2, 0), groups=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_sizes, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1)
