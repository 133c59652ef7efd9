"""ConvBN: convolution + BatchNorm + optional activation with four execution modes.

Implements the modes of "Efficient ConvBN Blocks for Transfer Learning and Beyond" (Kaichao You et al.,
ICLR 2024):

``train``   BatchNorm behaves as usual (batch statistics while ``module.training``, running statistics in
            ``eval()``); conv and BN run as two ops.
``eval``    BatchNorm always uses its running statistics (frozen, even under ``model.train()``); two ops, so
            the conv output is saved for BN's backward.
``tune``    the fold is recomputed from the live parameters on every forward,
            c = gamma / sqrt(running_var + eps), W' = W * c, b' = beta + c * (b_conv - running_mean),
            and a single ``conv(x, W', b')`` runs. Same outputs and gradients (to W, b_conv, gamma, beta) as
            ``eval``, one activation fewer saved for backward.
``deploy``  the same fold done once; the BN is removed and the conv carries the folded bias.

Switch one block with ``block.set_mode(mode)`` or a whole model with :func:`edgekit.fusion.set_convbn_mode`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("train", "eval", "tune", "deploy")

_ACTS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
}


def make_act(act: str | nn.Module | None) -> nn.Module:
    """An activation module from a name (relu, relu6, gelu, silu, hardswish), a module, or None (identity)."""
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    try:
        return _ACTS[act]()
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; accepted: {', '.join(_ACTS)} or None") from None


def bn_fold_factors(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, shift) with BN(y) = c * y + shift in eval semantics: c = gamma/sigma, shift = beta - c * mean.

    Differentiable in gamma and beta (used by ``tune`` mode); running statistics are buffers.
    """
    sigma = torch.sqrt(bn.running_var + bn.eps)
    if bn.affine:
        c = bn.weight / sigma
        return c, bn.bias - c * bn.running_mean
    c = 1.0 / sigma
    return c, -c * bn.running_mean


def folded_weight_bias(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm, transposed_groups: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(layer(x))`` for a conv / linear (``transposed_groups`` > 0: ConvTranspose).

    W' = W * c per output channel, b' = beta + c * (b - mean) = c * b + shift.
    """
    c, shift = bn_fold_factors(bn)
    if transposed_groups:
        g = transposed_groups
        cin, cout_g = weight.shape[:2]
        w = weight.reshape(g, cin // g, cout_g, *weight.shape[2:]) * c.reshape(g, 1, cout_g, *([1] * (weight.dim() - 2)))
        w = w.reshape(weight.shape)
    else:
        w = weight * c.reshape(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else shift + c * bias
    return w, b


class ConvBN(nn.Module):
    """``act(bn(conv(x)))`` with train / eval / tune / deploy modes (see the module docstring).

    Submodules: ``conv`` (nn.Conv2d; bias only after deploy or when asked for), ``bn`` (nn.BatchNorm2d, None
    in deploy mode), ``act`` (nn.Identity when no activation). ``to_deploy()`` returns a :class:`ConvAct`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        act: str | nn.Module | None = None,
        mode: str = "train",
    ) -> None:
        super().__init__()
        if padding is None:
            k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            padding = tuple(dilation * (s - 1) // 2 for s in k)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(out_channels)
        self.act = make_act(act)
        self.mode = "train"
        self.set_mode(mode)

    @classmethod
    def wrap(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module | None = None, mode: str = "eval") -> "ConvBN":
        """A ConvBN around existing (shared, not copied) ``conv`` and ``bn`` modules."""
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block.conv, block.bn, block.act, block.mode = conv, bn, act if act is not None else nn.Identity(), "train"
        block.set_mode(mode)
        return block

    def set_mode(self, mode: str) -> "ConvBN":
        if mode not in MODES:
            raise ValueError(f"ConvBN mode {mode!r}; accepted: {', '.join(MODES)}")
        if self.mode == "deploy" and mode != "deploy":
            raise ValueError("ConvBN: a block in deploy mode has no BatchNorm left; it cannot switch back")
        if mode == "deploy" and self.bn is not None:
            self.conv = self._folded_conv()
            self.bn = None
        self.mode = mode
        return self

    @torch.no_grad()
    def _folded_conv(self) -> nn.Conv2d:
        conv = copy.deepcopy(self.conv)
        w, b = folded_weight_bias(conv.weight, conv.bias, self.bn)
        conv.weight = nn.Parameter(w.detach().clone())
        conv.bias = nn.Parameter(b.detach().to(w.dtype).clone())
        return conv

    def to_deploy(self) -> "ConvAct":
        """The folded deploy form (a new module; this block is unchanged)."""
        conv = copy.deepcopy(self.conv) if self.bn is None else self._folded_conv()
        return ConvAct(conv, copy.deepcopy(self.act))

    def fused_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Folded (kernel, bias) in eval semantics, differentiable in the live parameters."""
        if self.bn is None:
            bias = self.conv.bias if self.conv.bias is not None else self.conv.weight.new_zeros(self.conv.out_channels)
            return self.conv.weight, bias
        return folded_weight_bias(self.conv.weight, self.conv.bias, self.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode == "deploy" or self.bn is None:
            y = self.conv(x)
        elif mode == "tune":
            w, b = folded_weight_bias(self.conv.weight, self.conv.bias, self.bn)
            y = self.conv._conv_forward(x, w, b)
        elif mode == "eval":
            bn = self.bn
            y = F.batch_norm(self.conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            y = self.bn(self.conv(x))
        return self.act(y)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


class ConvAct(nn.Module):
    """``act(conv(x))``: the deploy form of ConvBN and of the reparameterizable blocks."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = conv
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))
