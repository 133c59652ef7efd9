"""Cross-layer equalization (CLE) of consecutive conv/linear pairs.

Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction" (ICCV 2019):
for ``y = W2 relu(W1 x + b1)`` and any positive per-channel ``s``,
``W2 relu(W1 x + b1) = (W2 S) relu(S^-1 W1 x + S^-1 b1)`` because ReLU is positively homogeneous.
Choosing ``s_i = sqrt(r1_i * r2_i) / r2_i`` (r1_i: range of output channel i of W1, r2_i: range of input
channel i of W2) gives both layers the same per-channel range ``sqrt(r1_i r2_i)``, which helps
per-tensor and per-channel weight quantization of layers with very uneven channel ranges (depthwise convs).

Works on torch.fx and torch.export graphs alike (ATen conv/linear calls are layer modules after
:func:`edgekit.capture.layers_as_modules`). Pairs: conv/linear -> [ReLU | nothing] -> conv/linear where the first output has exactly one user chain,
the second is a plain (groups=1) or depthwise conv. ReLU6 is not homogeneous and stops a pair.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from edgekit.quant.qdq import target_of

_HOMOGENEOUS = (nn.ReLU, nn.Identity)
_HOMOGENEOUS_FN = {torch.relu, torch.nn.functional.relu, torch.ops.aten.relu, torch.ops.aten.relu_}


def _single_user(n: fx.Node) -> fx.Node | None:
    users = list(n.users)
    return users[0] if len(users) == 1 else None


def find_pairs(gm: fx.GraphModule) -> list[tuple[str, str]]:
    mods = dict(gm.named_modules())
    layer_types = (nn.Conv2d, nn.Linear)
    pairs = []
    for n in gm.graph.nodes:
        if n.op != "call_module" or not isinstance(mods.get(n.target), layer_types):
            continue
        nxt = _single_user(n)
        if nxt is not None and ((nxt.op == "call_module" and isinstance(mods.get(nxt.target), _HOMOGENEOUS))
                                or (nxt.op == "call_function" and target_of(nxt) in _HOMOGENEOUS_FN)):
            nxt = _single_user(nxt)
        if nxt is None or nxt.op != "call_module" or not isinstance(mods.get(nxt.target), layer_types):
            continue
        a, b = mods[n.target], mods[nxt.target]
        if type(a) is not type(b) and not (isinstance(a, nn.Conv2d) and isinstance(b, nn.Conv2d)):
            continue
        if isinstance(b, nn.Conv2d) and b.groups not in (1, b.in_channels):
            continue
        if isinstance(b, nn.Conv2d) and b.groups == b.in_channels and b.out_channels != b.in_channels:
            continue
        if isinstance(a, nn.Conv2d) and a.groups != 1 and a.groups != a.out_channels:
            continue
        pairs.append((n.target, nxt.target))
    return pairs


@torch.no_grad()
def equalize_pair(a: nn.Module, b: nn.Module, eps: float = 1e-8) -> torch.Tensor:
    """Rescale ``a``'s output channels and ``b``'s input channels in place; returns ``s``."""
    r1 = a.weight.abs().reshape(a.weight.shape[0], -1).amax(1)
    depthwise_b = isinstance(b, nn.Conv2d) and b.groups == b.in_channels and b.groups > 1
    if depthwise_b:
        r2 = b.weight.abs().reshape(b.weight.shape[0], -1).amax(1)
    else:
        r2 = b.weight.abs().transpose(0, 1).reshape(b.weight.shape[1], -1).amax(1)
    s = torch.sqrt(r1 * r2).clamp_min(eps) / r2.clamp_min(eps)
    s = torch.where((r1 > eps) & (r2 > eps), s, torch.ones_like(s))
    a.weight.div_(s.reshape(-1, *([1] * (a.weight.dim() - 1))))
    if a.bias is not None:
        a.bias.div_(s)
    if depthwise_b:
        b.weight.mul_(s.reshape(-1, *([1] * (b.weight.dim() - 1))))
    else:
        b.weight.mul_(s.reshape(1, -1, *([1] * (b.weight.dim() - 2))))
    return s


def equalize(gm: fx.GraphModule, iterations: int = 4) -> int:
    """Equalize every pair found by :func:`find_pairs` (a few sweeps); returns the number of pairs."""
    pairs = find_pairs(gm)
    for _ in range(iterations):
        for na, nb in pairs:
            equalize_pair(gm.get_submodule(na), gm.get_submodule(nb))
    return len(pairs)
