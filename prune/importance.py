"""Importance criteria for structured pruning: a registry of ``criterion(graph, group, context) -> scores``.

* ``l1`` / ``l2``: magnitude of every weight slice a unit owns, summed over the coupled layers (group-reduced).
* ``bn_gamma``: |gamma| of the unit's BatchNorm / LayerNorm channels ("Learning Efficient Convolutional
  Networks through Network Slimming", Liu et al., ICCV 2017); groups without a norm layer fall back to ``l1``.
* ``taylor``: first-order Taylor |w * dL/dw| summed over the unit's weights ("Importance Estimation for Neural
  Network Pruning", Molchanov et al., CVPR 2019); needs labeled data (gradients are accumulated by the caller).
* ``dimap``: DIMAP's data-free, module-aware criterion ("Data-independent Module-aware Pruning for Hierarchical
  Vision Transformers", He & Zhou, ICLR 2024): inside a layer the weights are sorted by magnitude ascending and
  the weight at position p scores W_p^2 / sum_{i<=p} W_i^2; a unit sums its weights' scores per module and
  the modules (qkv, proj, mlp, aux) are ranked separately: each module's scores are turned into ranks
  within that module before they are combined, so no module dominates by scale.

The dependency graph knows nothing of these; any callable with the same signature can be registered.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable

import numpy as np
import torch

from edgekit.ops.transformer import Attention
from edgekit.prune.slots import Side
from edgekit.registry import Registry

Criterion = Callable[[Any, Any, dict], np.ndarray]
IMPORTANCE: Registry[Criterion] = Registry("importance criterion")


def register_importance(name: str, needs_data: bool = False, summary: str = ""):
    return IMPORTANCE.register(name, needs_data=needs_data, summary=summary)


def _slot_vectors(graph, family: tuple, get) -> list[torch.Tensor]:
    """Per-index tensors (index along dim 0, flattened rest) of one slot family."""
    pairs = graph.slot_tensors(family, get)
    return [t.detach().movedim(d, 0).reshape(t.shape[d], -1).float() for t, d in pairs]


def _unit_scores(graph, group, reduce: Callable[[torch.Tensor], torch.Tensor], get=lambda p: p,
                 keys: Callable[[tuple], bool] = lambda k: True) -> np.ndarray:
    cache: dict[tuple, list[torch.Tensor]] = {}
    scores = np.zeros(len(group.units))
    for ui, u in enumerate(group.units):
        total = 0.0
        for s in u.slots:
            key = s.family
            if not keys(key):
                continue
            if key not in cache:
                cache[key] = [reduce(v) for v in _slot_vectors(graph, key, get)]
            for vec in cache[key]:
                if s.index < len(vec):
                    total += float(vec[s.index])
        scores[ui] = total
    return scores


@register_importance("l1", summary="sum of |w| over the unit's coupled weights")
def l1(graph, group, ctx: dict) -> np.ndarray:
    return _unit_scores(graph, group, lambda v: v.abs().sum(1))


@register_importance("l2", summary="sum of w^2 over the unit's coupled weights")
def l2(graph, group, ctx: dict) -> np.ndarray:
    return _unit_scores(graph, group, lambda v: v.pow(2).sum(1))


@register_importance("bn_gamma", summary="|gamma| of the unit's BatchNorm/LayerNorm channels (network slimming)")
def bn_gamma(graph, group, ctx: dict) -> np.ndarray:
    if not any(graph.is_norm_scale(s) for s in group.units[0].slots):
        return l1(graph, group, ctx)
    scores = np.zeros(len(group.units))
    for ui, u in enumerate(group.units):
        for s in u.slots:
            if graph.is_norm_scale(s):
                for t, d in graph.norm_tensors(s):
                    scores[ui] += float(t.detach().abs().select(d, s.index).sum())
    return scores


@register_importance("taylor", needs_data=True, summary="first-order Taylor |w * dL/dw| (needs labeled data)")
def taylor(graph, group, ctx: dict) -> np.ndarray:
    def get(p):
        if p.grad is None:
            raise ValueError("taylor importance needs gradients; run edgekit.prune.structured with data")
        return p * p.grad

    return _unit_scores(graph, group, lambda v: v.abs().sum(1), get)


def dimap_scores(w: torch.Tensor) -> torch.Tensor:
    """DIMAP weight scores of one layer: sorted ascending by |w|, score_p = w_p^2 / sum_{i<=p} w_i^2."""
    flat = w.detach().float().reshape(-1).pow(2)
    order = torch.argsort(flat)
    sorted_sq = flat[order]
    cums = torch.cumsum(sorted_sq, 0).clamp_min(1e-30)
    out = torch.empty_like(flat)
    out[order] = sorted_sq / cums
    return out.reshape(w.shape)


class ModuleKind(Enum):
    """The module families DIMAP ranks separately."""

    QKV = "qkv"
    PROJ = "proj"
    MLP = "mlp"
    AUX = "aux"


def _module_kind(graph, family: tuple) -> ModuleKind:
    """The kind of a slot family's layer, from its type (handled attention) or its name."""
    name = str(family[0]).lower()
    if isinstance(family[1], Side):  # a handled layer
        if family[1] is Side.INTERNAL or isinstance(graph.modules[family[0]], Attention):
            return ModuleKind.QKV
        layer = name
    else:  # a parameter: classify its owner
        if "in_proj" in name:
            return ModuleKind.QKV
        layer = name.rsplit(".", 1)[0]
    if "qkv" in layer or layer.endswith(("q", "k", "v", "query", "key", "value")):
        return ModuleKind.QKV
    if ("proj" in layer and "attn" in layer) or layer.endswith(("out_proj", "attention.output.dense")):
        return ModuleKind.PROJ
    if any(t in layer for t in ("mlp", "fc1", "fc2", "ffn", "intermediate", "output.dense")):
        return ModuleKind.MLP
    return ModuleKind.AUX


@register_importance("dimap", summary="DIMAP data-free module-aware criterion (transformer blocks)")
def dimap(graph, group, ctx: dict) -> np.ndarray:
    cache: dict[int, torch.Tensor] = {}

    def get(p: torch.Tensor) -> torch.Tensor:
        key = id(p)
        if key not in cache:
            cache[key] = dimap_scores(p)
        return cache[key]

    per_kind: dict[ModuleKind, np.ndarray] = {}
    for kind in ModuleKind:
        s = _unit_scores(graph, group, lambda v: v.sum(1), get, keys=lambda k, kind=kind: _module_kind(graph, k) == kind)
        if np.any(s):
            per_kind[kind] = s
    if not per_kind:
        return np.zeros(len(group.units))
    ranks = [np.argsort(np.argsort(s)) / max(1, len(s) - 1) for s in per_kind.values()]
    return np.mean(ranks, axis=0) + 1e-3  # rank within each module, then combine


__all__ = ["IMPORTANCE", "register_importance", "dimap_scores", "l1", "l2", "bn_gamma", "taylor", "dimap"]
