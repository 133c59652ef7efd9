"""UniRepLKNet's DilatedReparamBlock ("UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio,
Video, Point Cloud, Time-Series and Image Recognition", Ding et al., CVPR 2024).

A depthwise KxK conv-BN runs in parallel with depthwise dilated small-kernel conv-BN branches (k, r). A kxk
kernel with dilation r equals a dense kernel of size r(k-1)+1 holding w[i, j] at [r*i, r*j] and zeros
elsewhere; zero-padded to KxK and added to the large kernel, all branches merge into one depthwise KxK conv
(biases add). Branch padding is (r(k-1)+1)//2, so every branch keeps the spatial size.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.ops.convbn import ConvAct, ConvBN
from edgekit.ops.repconv import pad_kernel

# (kernel sizes, dilation rates) of the parallel branches, per large kernel size, as in UniRepLKNet.
BRANCHES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    7: ((5, 3, 3), (1, 2, 3)),
    5: ((3, 3), (1, 2)),
}


def dilated_to_dense(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """The dense kernel of size r(k-1)+1 equal to ``kernel`` (out, in, k, k) applied with dilation r."""
    if dilation == 1:
        return kernel
    k = kernel.shape[-1]
    size = dilation * (k - 1) + 1
    dense = kernel.new_zeros(*kernel.shape[:2], size, size)
    dense[:, :, ::dilation, ::dilation] = kernel
    return dense


class DilatedReparamBlock(nn.Module):
    """Depthwise large-kernel conv-BN (``lk_origin``) plus dilated depthwise conv-BN branches (``branches``)."""

    def __init__(self, channels: int, kernel_size: int = 13,
                 branch_kernels: tuple[int, ...] | None = None, branch_dilations: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if branch_kernels is None or branch_dilations is None:
            if kernel_size not in BRANCHES:
                raise ValueError(f"DilatedReparamBlock: kernel_size {kernel_size}; accepted: {sorted(BRANCHES)} "
                                 "or explicit branch_kernels/branch_dilations")
            branch_kernels, branch_dilations = BRANCHES[kernel_size]
        if len(branch_kernels) != len(branch_dilations):
            raise ValueError("DilatedReparamBlock: branch_kernels and branch_dilations differ in length")
        for k, r in zip(branch_kernels, branch_dilations):
            if r * (k - 1) + 1 > kernel_size or k % 2 == 0:
                raise ValueError(f"DilatedReparamBlock: branch (k={k}, r={r}) does not fit a {kernel_size} kernel")
        self.channels, self.kernel_size = channels, kernel_size
        self.kernel_sizes, self.dilations = tuple(branch_kernels), tuple(branch_dilations)
        self.lk_origin = ConvBN(channels, channels, kernel_size, 1, kernel_size // 2, groups=channels)
        self.branches = nn.ModuleList(
            ConvBN(channels, channels, k, 1, (r * (k - 1) + 1) // 2, dilation=r, groups=channels)
            for k, r in zip(self.kernel_sizes, self.dilations)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lk_origin(x)
        for branch in self.branches:
            out = out + branch(x)
        return out

    def merged_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = (self.kernel_size, self.kernel_size)
        weight, bias = self.lk_origin.fused_weight_bias()
        for branch, r in zip(self.branches, self.dilations):
            w, b = branch.fused_weight_bias()
            weight = weight + pad_kernel(dilated_to_dense(w, r), size)
            bias = bias + b
        return weight, bias

    @torch.no_grad()
    def to_deploy(self) -> ConvAct:
        w, b = self.merged_weight_bias()
        conv = nn.Conv2d(self.channels, self.channels, self.kernel_size, 1, self.kernel_size // 2,
                         groups=self.channels, bias=True).to(device=w.device, dtype=w.dtype)
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        return ConvAct(conv)
