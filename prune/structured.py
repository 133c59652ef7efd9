"""Structured pruning: rank the units of a dependency graph and remove them, returning a smaller dense model.

    new_model, report = prune(model, example_inputs, ratio=0.3, importance="l1", round_to=8, ignore=["head*"])

``ratio`` is the fraction of units (channels / heads) removed in every group (per-layer mode) or across all
groups after normalising each group's scores by its mean (``global_pruning``; no group loses more than
``max_group_ratio``). ``round_to`` keeps every channel group's count at a multiple of it where possible (heads
are counted as units and not rounded). ``head_ratio`` sets the heads groups' own ratio (default: ``ratio``):
heads are few, so ``floor(ratio * heads)`` is often 0 (0.34 of 2 heads) and attention, whose cost grows with the
square of the token count, would stay whole while every channel group shrinks; at larger inputs the pruned
model's saving then falls behind its MAC saving. ``scope="depthwise"`` prunes only the groups that hold a depthwise conv
(the expanded channels of inverted-residual / MBConv blocks) and leaves the others whole: every dense conv then
loses channels on one side only, so its MACs and its time fall together (both pruned, a 1x1 conv between two
groups loses MACs with the product of the two ratios and time far more slowly; measured per group and per
allocation on MobileNetV2 in docs/benchmarks.md, ``prune_allocation``). The model returned is a plain dense
``nn.Module``: the user's class, edited, when its own forward still runs, otherwise the rewritten graph module
(``report["model_kind"]``).

The graph is captured with ``torch.fx`` when the model traces, else with ``torch.export``
(``report["capture"]``); see :mod:`edgekit.prune.depgraph`.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import UserInputError
from edgekit.metrics import count_macs, count_params, torch_latency
from edgekit.prune.apply import zero_units
from edgekit.prune.capture import CaptureMethod, output_tensors
from edgekit.prune.depgraph import DependencyGraph
from edgekit.prune.importance import IMPORTANCE
from edgekit.prune.slots import Group, Unit


@dataclass
class PrunePlan:
    """The units chosen for removal from one dependency graph (nothing is removed yet)."""

    graph: DependencyGraph
    remove: list[Unit]
    scores: dict[int, float]  # unit root -> normalised importance
    per_group: list[dict[str, Any]]


def torch_latency_ms(model: nn.Module, example_inputs: Sequence[torch.Tensor], runs: int = 20, warmup: int = 3) -> float:
    return torch_latency(model, example_inputs[0], runs, warmup)["median"]


def _accumulate_grads(graph: DependencyGraph, data, batches: int = 4, batch_size: int = 64) -> None:
    if data is None or data.train.y is None:
        raise UserInputError("prune: importance 'taylor' needs labeled data (--data with labels)")
    model = graph.model  # shares its parameters with the captured graph (which may be fixed to one batch size)
    model.eval()
    model.zero_grad(set_to_none=True)
    for i, (xb, yb) in enumerate(data.train.batches(batch_size, shuffle=True, seed=0)):
        if i >= batches:
            break
        F.cross_entropy(output_tensors(model(xb))[0], yb).backward()


def _round_keep(n: int, keep: int, round_to: int) -> int:
    if round_to > 1 and n >= round_to:
        keep = min(n, int(math.ceil(keep / round_to) * round_to))
    return max(1, min(n, keep))


def _group_ratio(group: Group, ratio: float, ratios: dict[str, float]) -> float:
    for pattern, r in ratios.items():
        if any(fnmatch.fnmatchcase(layer, pattern) for layer in group.layers):
            return r
    return ratio


SCOPES = ("all", "depthwise")


def holds_depthwise(model: nn.Module, group: Group) -> bool:
    """Whether one of ``group``'s layers is a depthwise conv of ``model`` (groups == in_channels > 1), or a wrapper
    holding exactly one conv that is (a conv + norm module such as edgekit's ``ConvBN``)."""
    for name in group.layers:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            continue
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        if len(convs) == 1 and 1 < convs[0].groups == convs[0].in_channels:
            return True
    return False


def _in_scope(model: nn.Module, groups: list[Group], scope: str) -> list[bool]:
    if scope == "all":
        return [True] * len(groups)
    flags = [holds_depthwise(model, g) for g in groups]
    if not any(flags):
        raise UserInputError("prune: scope 'depthwise' found no group holding a depthwise conv in this model; "
                             "use scope 'all'")
    return flags


def make_plan(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    ratio: float = 0.3,
    importance: str = "l1",
    global_pruning: bool = False,
    round_to: int = 1,
    ignore: Sequence[str] = (),
    data=None,
    max_group_ratio: float = 0.9,
    ratios: dict[str, float] | None = None,
    criterion=None,
    method: CaptureMethod | None = None,
    scope: str = "all",
    head_ratio: float | None = None,
) -> PrunePlan:
    """Build the dependency graph and choose the units to remove (nothing is removed yet). A group out of
    ``scope`` keeps all its units unless a ``ratios`` pattern names one of its layers."""
    if not 0.0 <= ratio < 1.0:
        raise UserInputError(f"prune: ratio {ratio} must be in [0, 1)")
    if round_to < 1:
        raise UserInputError(f"prune: round_to {round_to} must be >= 1")
    if head_ratio is not None and not 0.0 <= head_ratio < 1.0:
        raise UserInputError(f"prune: head_ratio {head_ratio} must be in [0, 1)")
    if scope not in SCOPES:
        raise UserInputError(f"prune: scope {scope!r} is not one of {', '.join(SCOPES)}")
    fn = criterion or IMPORTANCE.get(importance)
    graph = DependencyGraph(model, example_inputs, ignore=ignore, method=method)
    if criterion is None and IMPORTANCE.meta(importance).get("needs_data"):
        _accumulate_grads(graph, data)
    ratios = dict(ratios or {})
    in_scope = _in_scope(model, graph.groups, scope)
    scored: list[tuple[Group, np.ndarray]] = []
    for g in graph.groups:
        s = np.asarray(fn(graph, g, {"data": data}), dtype=np.float64)
        scored.append((g, s))
    graph.gm.zero_grad(set_to_none=True)
    remove: list[Unit] = []
    scores: dict[int, float] = {}
    per_group: list[dict[str, Any]] = []
    own = [head_ratio is not None and g.is_heads for g, _ in scored]  # heads at their own ratio, per group
    if global_pruning:
        pool = []
        for gi, (g, s) in enumerate(scored):
            if own[gi]:
                continue
            norm = s / (s.mean() if s.mean() > 0 else 1.0)
            for ui, v in enumerate(norm):
                pool.append((v, gi, ui))
        pool.sort()
        target = int(ratio * sum(len(g.units) for gi, (g, _) in enumerate(scored) if in_scope[gi] and not own[gi]))
        chosen: dict[int, list[int]] = {gi: [] for gi in range(len(scored))}
        caps = {gi: int(max_group_ratio * len(g.units)) if in_scope[gi] else 0 for gi, (g, _) in enumerate(scored)}
        count = 0
        for v, gi, ui in pool:
            if count >= target:
                break
            if len(chosen[gi]) < caps[gi]:
                chosen[gi].append(ui)
                count += 1
        for gi, (g, s) in enumerate(scored):
            if own[gi]:
                _emit_at_ratio(g, s, _group_ratio(g, head_ratio if in_scope[gi] else 0.0, ratios), round_to,
                               remove, scores, per_group)
                continue
            n = len(g.units)
            rounding = round_to if not g.is_heads else 1
            keep = _round_keep(n, n - len(chosen[gi]), rounding)
            order = [ui for ui in np.argsort(s, kind="stable")]
            drop = [ui for ui in order if ui in set(chosen[gi])][: n - keep]
            _emit(g, s, drop, remove, scores, per_group)
    else:
        for gi, (g, s) in enumerate(scored):
            base = head_ratio if own[gi] else ratio
            r = min(_group_ratio(g, base if in_scope[gi] else 0.0, ratios), max_group_ratio)
            _emit_at_ratio(g, s, r, round_to, remove, scores, per_group)
    return PrunePlan(graph, remove, scores, per_group)


def _emit_at_ratio(g: Group, s: np.ndarray, r: float, round_to: int, remove, scores, per_group) -> None:
    """Drop the ``floor(r * units)`` least important units of ``g`` (channel counts rounded up to ``round_to``)."""
    n = len(g.units)
    keep = _round_keep(n, n - int(math.floor(r * n)), round_to if not g.is_heads else 1)
    _emit(g, s, list(np.argsort(s, kind="stable")[: n - keep]), remove, scores, per_group)


def _emit(g: Group, s: np.ndarray, drop, remove, scores, per_group) -> None:
    for ui, u in enumerate(g.units):
        scores[u.root] = float(s[ui])
    remove.extend(g.units[int(ui)] for ui in drop)
    per_group.append({"layers": g.layers, "units": len(g.units), "removed": len(drop),
                      "kind": "heads" if g.is_heads else "channels"})


def prune(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    ratio: float = 0.3,
    importance: str = "l1",
    global_pruning: bool = False,
    round_to: int = 1,
    ignore: Sequence[str] = (),
    data=None,
    max_group_ratio: float = 0.9,
    ratios: dict[str, float] | None = None,
    measure_latency: bool = False,
    plan: PrunePlan | None = None,
    method: CaptureMethod | None = None,
    scope: str = "all",
    head_ratio: float | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove the least important ``ratio`` of channels / heads; returns ``(smaller dense model, report)``.

    ``method``: force a capture method (default: torch.fx when the model traces, else torch.export).
    """
    example_inputs = tuple(example_inputs)
    model = model.eval()
    if plan is None:
        plan = make_plan(model, example_inputs, ratio, importance, global_pruning, round_to, ignore, data,
                         max_group_ratio, ratios, method=method, scope=scope, head_ratio=head_ratio)
    params0, macs0 = count_params(model), count_macs(model, example_inputs[0])
    lat0 = torch_latency_ms(model, example_inputs) if measure_latency else None
    new, info = plan.graph.prune(plan.remove)
    new.eval()
    params1, macs1 = count_params(new), count_macs(new, example_inputs[0])
    lat1 = torch_latency_ms(new, example_inputs) if measure_latency else None
    report = {
        "ratio": ratio,
        "importance": importance,
        "global_pruning": global_pruning,
        "round_to": round_to,
        "scope": scope,
        "head_ratio": ratio if head_ratio is None else head_ratio,
        "params": {"before": params0, "after": params1, "ratio": params1 / max(1, params0)},
        "macs": {"before": macs0, "after": macs1, "ratio": macs1 / max(1, macs0)},
        "latency_ms_torch": None if lat0 is None else {"before": lat0, "after": lat1, "ratio": lat1 / lat0},
        "groups": plan.per_group,
        "removed_per_layer": info.removed,
        "units_removed": len(plan.remove),
        "units_total": sum(g["units"] for g in plan.per_group),
        "capture": plan.graph.captured.summary(),  # a dict, as the fuse / quantize stages report it
        "model_kind": info.model_kind.value,
        "model_type": info.model_type,
        "attribute_updates": info.attribute_updates,
        "graph_rewrites": info.graph_rewrites,
        "frozen_notes": sorted(set(plan.graph.frozen_reasons))[:20],
    }
    return new, report


__all__ = ["prune", "make_plan", "zero_units", "PrunePlan"]
