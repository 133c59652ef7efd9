"""MaskSparsity: pruning-aware sparse regularization on the BN scales of the channels chosen for pruning only.

"Pruning-aware Sparse Regularization for Network Pruning" (Jiang et al., Machine Intelligence Research 2023):
choose the pruning mask first, then fine-tune with an L1 penalty on the BatchNorm gammas of the chosen
channels only (grad_gamma += s * sign(gamma), s around 5e-4) so they shrink towards zero while the kept
channels train freely; then remove the chosen channels and fine-tune. Units without a BatchNorm scale (heads,
MLP widths) are removed without the regularization. An optional global L1 phase (network slimming) on every
gamma can run before the mask is chosen (``select_epochs``).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from edgekit.errors import UserInputError
from edgekit.prune.slots import LayerSlot, Side
from edgekit.prune.structured import make_plan, prune


def _gamma(m: nn.Module) -> torch.Tensor | None:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.weight if m.affine else None
    bn = getattr(m, "bn", None)  # edgekit ConvBN
    return bn.weight if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.affine else None


def _l1_hooks(pairs: list[tuple[torch.Tensor, torch.Tensor]], strength: float) -> list:
    handles = []
    for p, mask in pairs:
        handles.append(p.register_hook(lambda g, p=p, mask=mask: g + strength * torch.sign(p.detach()) * mask))
    return handles


def masksparsity(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    data,
    ratio: float = 0.3,
    strength: float = 5e-4,
    epochs: int = 2,
    lr: float = 1e-3,
    importance: str = "bn_gamma",
    global_pruning: bool = True,
    select_epochs: int = 0,
    round_to: int = 1,
    ignore: Sequence[str] = (),
    seed: int = 0,
    ratios: dict[str, float] | None = None,
    scope: str = "all",
    head_ratio: float | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Choose channels, shrink only their BN scales with L1 during a short fine-tune, then remove them."""
    from edgekit.training import train

    if data is None or data.train.y is None:
        raise UserInputError("prune: masksparsity needs labeled training data (--data with labels)")
    base = model
    if select_epochs > 0:  # network-slimming phase: L1 on every gamma, then choose
        base = copy.deepcopy(model)
        pairs = [(g, torch.ones_like(g)) for g in (_gamma(m) for m in base.modules()) if g is not None]
        handles = _l1_hooks(pairs, strength)
        train(base, data, epochs=select_epochs, lr=lr, seed=seed, description="masksparsity: global L1")
        for h in handles:
            h.remove()
    plan = make_plan(base, example_inputs, ratio, importance, global_pruning, round_to, ignore, data, ratios=ratios,
                     scope=scope, head_ratio=head_ratio)
    graph = plan.graph
    masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for u in plan.remove:
        for s in u.slots:
            if s.side is not Side.OUT:
                continue
            if isinstance(s, LayerSlot):
                g = _gamma(graph.modules[s.layer])
            else:  # a parameter slot: the scale of a BatchNorm read by the graph
                owner = graph.modules.get(s.layer)
                g = _gamma(owner) if s.param.endswith(".weight") and isinstance(owner, nn.modules.batchnorm._BatchNorm) else None
            if g is not None:
                masks.setdefault(id(g), (g, torch.zeros_like(g)))[1][s.index] = 1.0
    pairs = list(masks.values())
    before = float(sum((p.detach().abs() * m).sum() for p, m in pairs)) if pairs else 0.0
    handles = _l1_hooks(pairs, strength)
    history = train(graph.model, data, epochs=epochs, lr=lr, seed=seed, description="masksparsity: masked L1")
    for h in handles:
        h.remove()
    graph.model.eval()
    after = float(sum((p.detach().abs() * m).sum() for p, m in pairs)) if pairs else 0.0
    new, report = prune(base, example_inputs, ratio=ratio, importance=importance, global_pruning=global_pruning,
                        round_to=round_to, plan=plan)
    report["masksparsity"] = {
        "strength": strength, "epochs": epochs, "select_epochs": select_epochs,
        "regularized_channels": int(sum(int(m.sum()) for _, m in pairs)),
        "l1_of_chosen_gammas": {"before": before, "after": after},
        "train_seconds": history.get("seconds"),
    }
    return new, report


__all__ = ["masksparsity"]
