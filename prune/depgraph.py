"""Dependency groups for structured pruning (the idea of DepGraph: "DepGraph: Towards Any Structural Pruning",
Fang et al., CVPR 2023; written from the paper, not from Torch-Pruning's code).

:class:`DependencyGraph` captures a deep copy of the model (:mod:`.capture`), propagates labels through the
graph with the front end for the capture method (:mod:`.fx_rules` or :mod:`.aten_rules` over
:mod:`.labels`), freezes what ``ignore`` names, and collects the prunable units and groups
(:mod:`.slots`). It knows nothing of importance criteria (:mod:`.importance`) or of how a plan is chosen
(:mod:`.structured`); :meth:`DependencyGraph.prune` hands the removal to :mod:`.apply`.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from edgekit.prune.aten_rules import AtenRules, apply_module_constraints
from edgekit.prune.capture import CaptureMethod, capture_graph
from edgekit.prune.fx_rules import FxRules
from edgekit.prune.handlers import find_handler
from edgekit.prune.labels import LabelSpace
from edgekit.prune.slots import BLOCK, Group, LayerSlot, ParamSlot, Side, Slot, Unit, UnsupportedPattern

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


class DependencyGraph:
    """Groups of channel / head indices that must be removed together.

    ``DependencyGraph(model, example_inputs, ignore=["head*"])`` captures a deep copy of ``model``;
    :attr:`groups` lists the prunable groups; :meth:`prune` removes a set of units and returns the pruned
    model (the user's class, edited, when its own forward still runs, else the rewritten graph module).
    """

    def __init__(self, model: nn.Module, example_inputs: Sequence[torch.Tensor], ignore: Iterable[str] = (),
                 method: CaptureMethod | None = None) -> None:
        self.model = copy.deepcopy(model).eval()
        self.example_inputs = tuple(example_inputs)
        self.ignore = list(ignore)
        self.captured = capture_graph(self.model, self.example_inputs, method)
        self.example_inputs = self.captured.inputs
        self.gm = self.captured.gm
        self.space = LabelSpace()
        self.values: dict[Any, Any] = {}
        if self.captured.method is CaptureMethod.FX:
            self.modules = dict(self.gm.named_modules())
            self.rules: FxRules | AtenRules = FxRules(self.space, self.modules, self.values)
        else:
            self.modules = dict(self.model.named_modules())
            self.rules = AtenRules(self.space, self.values, self.captured.prefix)
        self._propagate()
        self.space.finish()
        watch = apply_module_constraints(self.space, self.model) if isinstance(self.rules, AtenRules) else []
        self._apply_ignore()
        self.space.frozen_reasons.extend(why for label, why in watch if self.uf.blocked(label))
        self.units, self.groups = self._collect()

    @property
    def uf(self):
        return self.space.uf

    @property
    def frozen_reasons(self) -> list[str]:
        return self.space.frozen_reasons

    @property
    def capture_method(self) -> CaptureMethod:
        return self.captured.method

    def _propagate(self) -> None:
        for node in self.gm.graph.nodes:
            shapes = _tensor_shapes(node.meta.get("tensor_meta"))
            try:
                self.values[node] = self.rules.visit(node, shapes)
            except UnsupportedPattern as exc:  # unknown patterns freeze instead of failing
                self._freeze_inputs(node, shapes, f"{node.name}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a rule met a case it does not handle: freeze, do not fail
                self._freeze_inputs(node, shapes, f"{node.name}: {type(exc).__name__}: {exc}")

    def _freeze_inputs(self, node, shapes: Any, why: str) -> None:
        self.space.frozen_reasons.append(why)
        for a in node.all_input_nodes:
            v = self.values.get(a)
            self.space.block_value(self.rules.arg(a) if v is not None else None)
        self.values[node] = self.space.plain(shapes)

    # ------------------------------------------------------------------------------------------ result
    def _apply_ignore(self) -> None:
        if not self.ignore:
            return
        for i, slots in self.space.bindings.items():
            for s in slots:
                if s.side is Side.IN:
                    continue  # an ignored layer keeps its outputs and heads; its inputs follow their producers
                names = (s.layer, s.param) if isinstance(s, ParamSlot) else (s.layer,)
                if any(fnmatch.fnmatchcase(n, p) for n in names for p in self.ignore):
                    self.uf.union(i, BLOCK)
                    break

    def _collect(self) -> tuple[list[Unit], list[Group]]:
        by_root: dict[int, list[Slot]] = {}
        frozen = self.uf.find(BLOCK)
        for i, slots in self.space.bindings.items():
            r = self.uf.find(i)
            if r != frozen:
                by_root.setdefault(r, []).extend(slots)
        units = [Unit(r, sorted(set(slots), key=str)) for r, slots in by_root.items()]
        units = [u for u in units if u.prunable()]
        groups: dict[tuple, Group] = {}
        for u in units:
            groups.setdefault(u.key, Group(u.key)).units.append(u)
        return units, [g for g in groups.values() if len(g.units) > 1]

    # ------------------------------------------------------------------------------------------ tensors
    def param(self, name: str) -> torch.Tensor:
        """A parameter / buffer of the captured graph by its qualified name in the user's model."""
        return _get(self.gm, self.captured.prefix + name)

    def slot_tensors(self, family: tuple, get) -> list[tuple[torch.Tensor, int]]:
        """``(tensor, dim)`` pairs whose slices along ``dim`` belong to the indices of one slot family."""
        first = family[0]
        if isinstance(family[1], Side):  # a handled layer
            m = self.modules[first]
            return find_handler(type(m)).tensors(m, family[1], get)
        return [(get(self.param(first)), family[1])]

    def is_norm_scale(self, slot: Slot) -> bool:
        if isinstance(slot, LayerSlot):
            if slot.side is not Side.OUT:
                return False
            m = self.modules[slot.layer]
            return find_handler(type(m)).norm_tensors(m, lambda p: p) != []
        owner = self.modules.get(slot.layer) if slot.param.endswith(".weight") else None
        return slot.side is Side.OUT and isinstance(owner, _NORMS)

    def norm_tensors(self, slot: Slot) -> list[tuple[torch.Tensor, int]]:
        if isinstance(slot, LayerSlot):
            m = self.modules[slot.layer]
            return find_handler(type(m)).norm_tensors(m, lambda p: p)
        return [(self.param(slot.param), slot.dim)]

    def prune(self, remove: Iterable[Unit]):
        """Remove ``remove`` (units of this graph); returns ``(pruned model, PruneResult)``. Call once per graph."""
        from edgekit.prune.apply import apply_removal

        return apply_removal(self, list(remove))


def _get(root: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, attr)


def _tensor_shapes(meta: Any) -> Any:
    if meta is None:
        return None
    if hasattr(meta, "shape"):
        return tuple(int(s) for s in meta.shape)
    if isinstance(meta, (tuple, list)):
        return type(meta)(_tensor_shapes(m) for m in meta)
    return None


__all__ = ["DependencyGraph"]
