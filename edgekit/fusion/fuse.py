"""Conv-BN folding over a traced graph (foundation version: exact BN folding into the preceding conv/linear).

W_f = W * gamma / sigma, b_f = beta + (b - mu) * gamma / sigma, sigma = sqrt(var + eps).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

_FOLDABLE = {nn.BatchNorm1d: (nn.Linear, nn.Conv1d), nn.BatchNorm2d: (nn.Conv2d,), nn.BatchNorm3d: (nn.Conv3d,)}


@torch.no_grad()
def fold_bn(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """Return a copy of ``layer`` (conv or linear) with ``bn`` folded in (eval semantics)."""
    out = copy.deepcopy(layer)
    sigma = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(sigma)
    beta = bn.bias if bn.affine else torch.zeros_like(sigma)
    c = gamma / sigma
    shape = (-1,) + (1,) * (out.weight.dim() - 1)
    out.weight.copy_(out.weight * c.reshape(shape))
    b = out.bias if out.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = beta + (b - bn.running_mean) * c
    out.bias = nn.Parameter(new_bias.to(out.weight.dtype))
    return out


def fuse(model: nn.Module, mode: str = "deploy") -> tuple[nn.Module, dict[str, Any]]:
    """Fold every BN that directly follows a conv/linear whose output has no other user."""
    if mode != "deploy":
        raise NotImplementedError(f"fuse mode {mode!r} arrives with the fusion issue")
    model = copy.deepcopy(model).eval()
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    folded, left = [], []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        bn = modules[node.target]
        src = node.args[0]
        layer = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if layer is None or not isinstance(layer, _FOLDABLE.get(type(bn), ())):
            left.append({"layer": node.target, "reason": "not preceded by a conv/linear"})
            continue
        if len(src.users) > 1:
            left.append({"layer": node.target, "reason": f"{src.target} output has other users"})
            continue
        parent, _, attr = src.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, attr, fold_bn(layer, bn))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded.append({"layer": src.target, "bn": node.target})
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, {"mode": mode, "folded": folded, "left": left}
