"""Cross-layer binarization (BiViT, He et al., ICCV 2023): binarize groups of layers in separate phases of
the fine-tune so that the attention and MLP binarization errors do not interfere.

A schedule is a list of cumulative phases: with ``order = [["mlp"], ["attn"]]`` phase 1 trains with the MLP
binarized and attention in float, phase 2 with both binarized. Groups present in the model but named in no
phase (e.g. ``linear``: stray nn.Linear layers) are binarized from the last phase on. Without cross-layer
binarization there is one phase that binarizes every group for all epochs (same total epochs, for a fair
ablation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from edgekit.errors import UserInputError
from edgekit.quant.bivit.modules import binary_modules, set_active

__all__ = ["Phase", "make_phases", "run_schedule", "split_epochs"]

DEFAULT_ORDER: tuple[tuple[str, ...], ...] = (("mlp",), ("attn",))


@dataclass(frozen=True)
class Phase:
    groups: tuple[str, ...]  # binarized during this phase (cumulative)
    epochs: int


def split_epochs(total: int, n: int, explicit: Sequence[int] | None = None) -> list[int]:
    """``explicit`` (checked to have ``n`` entries) or ``total`` split evenly, the remainder to the last."""
    if explicit is not None:
        if len(explicit) != n or any(e < 0 for e in explicit):
            raise UserInputError(f"bivit: phase_epochs {list(explicit)} must list {n} non-negative epoch counts, one per phase")
        return list(explicit)
    base = total // n
    return [base] * (n - 1) + [total - base * (n - 1)]


def make_phases(
    present: Sequence[str],
    epochs: int,
    cross_layer: bool = True,
    order: Sequence[Sequence[str]] = DEFAULT_ORDER,
    phase_epochs: Sequence[int] | None = None,
) -> list[Phase]:
    """The phases for a model whose binary modules belong to the groups ``present``."""
    present = tuple(sorted(set(present)))
    if not cross_layer:
        return [Phase(present, epochs if phase_epochs is None else sum(phase_epochs))]
    named = [g for phase in order for g in phase]
    unknown = sorted(set(named) - set(present))
    if unknown:
        raise UserInputError(f"bivit: cross_layer.order names group(s) {unknown} the model does not have; its groups: {list(present)}")
    if len(set(named)) != len(named):
        raise UserInputError(f"bivit: cross_layer.order {[list(p) for p in order]} names a group twice")
    order = [tuple(p) for p in order if p]
    if not order:
        return [Phase(present, epochs if phase_epochs is None else sum(phase_epochs))]
    rest = tuple(g for g in present if g not in named)
    if rest:
        order[-1] = order[-1] + rest
    counts = split_epochs(epochs, len(order), phase_epochs)
    phases, active = [], ()
    for groups, n in zip(order, counts):
        active = active + tuple(groups)
        phases.append(Phase(tuple(sorted(active)), n))
    return phases


def run_schedule(model: nn.Module, phases: Sequence[Phase], train_phase: Callable[[nn.Module, Phase, int], dict]) -> list[dict]:
    """Switch the groups of each phase on, then call ``train_phase(model, phase, index)``; returns its reports."""
    if not binary_modules(model):
        raise UserInputError("bivit: the model has no binarized modules; convert it first")
    reports = []
    for i, phase in enumerate(phases):
        set_active(model, phase.groups)
        rep = train_phase(model, phase, i) if phase.epochs > 0 else {}
        reports.append({"phase": i + 1, "groups": list(phase.groups), "epochs": phase.epochs, **rep})
    return reports
