"""SmoothQuant: move activation outliers into the weights before int8 quantization.

Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models"
(ICML 2023). A Linear ``y = x W^T`` is unchanged when its input channel ``j`` is divided by ``s_j`` and the
weight column ``j`` multiplied by it: ``y = (x diag(s)^-1) (W diag(s))^T``. With
``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` the per-channel ranges of activations and weights meet in the
middle, so a per-tensor activation grid wastes fewer levels on the few outlier channels that transformer
LayerNorm outputs have. Where the input comes from a LayerNorm the division costs nothing: it is folded into
the LayerNorm's affine weight and bias (``gamma / s``, ``beta / s``), so the smoothed float model computes what
the unsmoothed one does, up to float rounding (tested within 1e-5 relative).

Pairs: a LayerNorm (``nn.LayerNorm`` with an affine, or a ``layer_norm`` call whose weight and bias are
graph attributes) whose every user is a ``nn.Linear`` called once (the fused ``qkv`` projection, or q / k / v
projections; the MLP's ``fc1``). Works on the graphs :func:`edgekit.quant.ptq.trace` returns (torch.fx and
torch.export alike).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgekit.quant.qdq import target_of

_LAYER_NORM_FNS = {F.layer_norm, torch.layer_norm, torch.ops.aten.layer_norm}


@dataclass
class SmoothPair:
    norm: str  # the LayerNorm's node name
    gamma: torch.Tensor  # its affine weight and bias (parameters, scaled in place)
    beta: torch.Tensor | None
    linears: list[str]  # module targets of the consuming Linear layers


def _affine_of(node: fx.Node, gm: fx.GraphModule) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.LayerNorm) and m.elementwise_affine and m.weight is not None:
            return m.weight, m.bias
        return None
    if node.op == "call_function" and target_of(node) in _LAYER_NORM_FNS:
        args = list(node.args) + [None] * 5
        w = args[2] if args[2] is not None else node.kwargs.get("weight")
        b = args[3] if args[3] is not None else node.kwargs.get("bias")
        if isinstance(w, fx.Node) and w.op == "get_attr":
            return _attr(gm, w.target), _attr(gm, b.target) if isinstance(b, fx.Node) and b.op == "get_attr" else None
    return None


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _shape_query(u: fx.Node) -> bool:
    """``x.shape`` / ``x.size()`` / ``x.dim()`` / ATen ``sym_size``: reads no value of the tensor."""
    if u.op == "call_method":
        return u.target in ("size", "dim")
    return u.op == "call_function" and (target_of(u) in (getattr, torch.ops.aten.sym_size) and
                                        (target_of(u) is not getattr or u.args[1:2] == ("shape",)))


def find_pairs(gm: fx.GraphModule) -> list[SmoothPair]:
    """LayerNorm -> Linear(s) pairs SmoothQuant can fold exactly (see the module docstring)."""
    mods = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    shared_norms = Counter(n.target for n in gm.graph.nodes if n.op == "call_module" and isinstance(mods.get(n.target), nn.LayerNorm))
    pairs = []
    for n in gm.graph.nodes:
        aff = _affine_of(n, gm)
        if aff is None or (n.op == "call_module" and shared_norms[n.target] > 1):
            continue
        users = [u for u in n.users if not _shape_query(u)]
        if not users or not all(u.op == "call_module" and isinstance(mods.get(u.target), nn.Linear)
                                and calls[u.target] == 1 and u.args[0] is n for u in users):
            continue
        gamma, beta = aff
        if any(mods[u.target].in_features != gamma.numel() for u in users):
            continue
        pairs.append(SmoothPair(n.name, gamma, beta, [u.target for u in users]))
    return pairs


@torch.no_grad()
def activation_amax(gm: fx.GraphModule, pairs: list[SmoothPair], x: torch.Tensor, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Per-channel ``max |X_j|`` of each pair's LayerNorm output over the calibration samples ``x``."""
    amax: dict[str, torch.Tensor] = {}

    def hook(_m, args, key):
        a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
        amax[key] = torch.maximum(amax[key], a) if key in amax else a

    hooks = [gm.get_submodule(p.linears[0]).register_forward_pre_hook(lambda m, a, k=p.norm: hook(m, a, k)) for p in pairs]
    try:
        for i in range(0, len(x), batch_size):
            gm(x[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return amax


@torch.no_grad()
def smooth_pair(pair: SmoothPair, linears: list[nn.Linear], amax: torch.Tensor, alpha: float) -> torch.Tensor:
    """Fold ``s_j = amax_j^alpha / wmax_j^(1-alpha)`` into the LayerNorm affine and the Linear weights; returns s."""
    wmax = torch.stack([lin.weight.detach().abs().amax(0) for lin in linears]).amax(0)
    eps = 1e-5
    s = amax.clamp_min(eps).pow(alpha) / wmax.clamp_min(eps).pow(1.0 - alpha)
    s = torch.where((amax > eps) & (wmax > eps), s, torch.ones_like(s)).to(pair.gamma.dtype)
    pair.gamma.div_(s)
    if pair.beta is not None:
        pair.beta.div_(s)
    for lin in linears:
        lin.weight.mul_(s.reshape(1, -1))
    return s


def smooth(gm: fx.GraphModule, x: torch.Tensor, alpha: float = 0.5, batch_size: int = 32) -> dict[str, object]:
    """SmoothQuant every LayerNorm -> Linear pair of ``gm`` (in place) with ``alpha``; returns a report."""
    if not 0.0 <= alpha <= 1.0:
        from edgekit.errors import UserInputError

        raise UserInputError(f"quantize.smoothquant.alpha: {alpha}; accepted: 0 <= alpha <= 1")
    pairs = find_pairs(gm)
    amax = activation_amax(gm, pairs, x, batch_size) if pairs else {}
    spread = []
    for p in pairs:
        if p.norm not in amax:
            continue
        s = smooth_pair(p, [gm.get_submodule(t) for t in p.linears], amax[p.norm], alpha)
        spread.append(float(s.max() / s.min().clamp_min(1e-12)))
    return {"alpha": alpha, "pairs": len(pairs), "linears": sum(len(p.linears) for p in pairs),
            "max_scale_spread": round(max(spread, default=1.0), 3)}
