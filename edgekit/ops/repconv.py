"""Structural reparameterization: RepVGG and MobileOne blocks.

RepVGG ("RepVGG: Making VGG-style ConvNets Great Again", Ding et al., CVPR 2021): a KxK conv-BN, a 1x1
conv-BN and (when C_in == C_out and stride 1) an identity BN run in parallel; their sum goes through the
activation. For inference the branches merge into one KxK conv:
K = K_kxk + zero-pad(K_1x1) + K_id, biases add, where K_id is the identity kernel (1 at the centre of
[i, i mod (C/g)]) with its BN folded in.

MobileOne ("MobileOne: An Improved One millisecond Mobile Backbone", Vasu et al., CVPR 2023): the same idea
with several (``num_kxk``) parallel KxK conv-BN branches, a 1x1 conv-BN "scale" branch and a BN skip.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.ops.convbn import ConvAct, ConvBN, bn_fold_factors, make_act


def pad_kernel(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a (out, in, kh, kw) kernel symmetrically to spatial ``size`` (odd differences only)."""
    dh, dw = size[0] - kernel.shape[2], size[1] - kernel.shape[3]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {tuple(kernel.shape[2:])} kernel in {size}")
    return F.pad(kernel, (dw // 2, dw // 2, dh // 2, dh // 2))


def identity_kernel(channels: int, groups: int, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """Kernel of the identity map for a grouped conv: 1 at the centre of [i, i mod (C/g)]."""
    per_group = channels // groups
    k = like.new_zeros(channels, per_group, *size)
    idx = torch.arange(channels)
    k[idx, idx % per_group, size[0] // 2, size[1] // 2] = 1
    return k


class RepConv(nn.Module):
    """Multi-branch conv block that reparameterizes into a single KxK conv (+ activation).

    Branches: ``rbr_dense`` (a ModuleList of ``num_kxk`` KxK ConvBN), ``rbr_1x1`` (1x1 ConvBN, or None),
    ``rbr_identity`` (BatchNorm2d, or None; only when in == out and stride == 1). ``to_deploy()`` returns a
    :class:`~edgekit.ops.convbn.ConvAct` computing the same function.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: str | nn.Module | None = "relu",
        num_kxk: int = 1,
        use_1x1: bool = True,
        use_identity: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"RepConv: kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        pad = kernel_size // 2
        self.rbr_dense = nn.ModuleList(
            ConvBN(in_channels, out_channels, kernel_size, stride, pad, groups=groups) for _ in range(num_kxk)
        )
        self.rbr_1x1 = ConvBN(in_channels, out_channels, 1, stride, 0, groups=groups) if use_1x1 and kernel_size > 1 else None
        has_id = use_identity and in_channels == out_channels and stride == 1
        self.rbr_identity = nn.BatchNorm2d(in_channels) if has_id else None
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_dense[0](x)
        for branch in self.rbr_dense[1:]:
            out = out + branch(x)
        if self.rbr_1x1 is not None:
            out = out + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.act(out)

    def merged_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single KxK kernel and bias equal to the sum of all branches (BN in eval semantics)."""
        size = (self.kernel_size, self.kernel_size)
        weight, bias = 0, 0
        for branch in self.rbr_dense:
            w, b = branch.fused_weight_bias()
            weight, bias = weight + w, bias + b
        if self.rbr_1x1 is not None:
            w, b = self.rbr_1x1.fused_weight_bias()
            weight, bias = weight + pad_kernel(w, size), bias + b
        if self.rbr_identity is not None:
            c, shift = bn_fold_factors(self.rbr_identity)
            ref = self.rbr_dense[0].conv  # its channels, not __init__'s: structured pruning changes them
            k = identity_kernel(ref.in_channels, ref.groups, size, ref.weight)
            weight, bias = weight + k * c.reshape(-1, 1, 1, 1), bias + shift
        return weight, bias

    @torch.no_grad()
    def to_deploy(self) -> ConvAct:
        w, b = self.merged_weight_bias()
        ref = self.rbr_dense[0].conv
        conv = nn.Conv2d(ref.in_channels, ref.out_channels, self.kernel_size, self.stride,  # pruning may have
                         self.kernel_size // 2, groups=ref.groups, bias=True).to(w.dtype)  # changed them
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        conv.to(ref.weight.device)
        return ConvAct(conv, copy.deepcopy(self.act))


class MobileOneBlock(RepConv):
    """MobileOne-style block: ``num_kxk`` (default 4) parallel KxK conv-BN branches, 1x1 scale branch, BN skip."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act: str | nn.Module | None = "relu", num_kxk: int = 4) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, act, num_kxk=num_kxk)
