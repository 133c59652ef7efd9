"""The vocabulary of structured pruning: slots, couplings, units and groups, and the union-find that joins them.

A *slot* is one index of one prunable dimension: an output channel of a handled layer, a row of a parameter, a
head. Slots that must be removed together share a union-find class (a :class:`Unit`); units that touch the same
layers form a :class:`Group`, the thing an importance criterion ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Generic, NamedTuple, TypeVar, Union

import numpy as np

from edgekit.registry import KeyedRegistry

BLOCK = 0  # the union-find class of frozen (never pruned) labels


class UnsupportedPattern(Exception):
    """A graph pattern the dependency rules do not understand: the labels that reach it are frozen."""


class Side(Enum):
    """What a slot is to the layer that owns it."""

    OUT = "out"  # an output channel (removing it shrinks the producer)
    IN = "in"  # an input channel (follows its producer)
    INTERNAL = "internal"  # a unit inside a handled layer (attention heads)
    TENSOR = "tensor"  # an index of a free parameter (class token, position embedding, layer scale)


class LayerSlot(NamedTuple):
    """An index of a layer that a pruning handler edits (the torch.fx path, handled modules are leaves)."""

    layer: str
    side: Side
    index: int

    @property
    def family(self) -> tuple:
        return (self.layer, self.side)


class ParamSlot(NamedTuple):
    """An index along ``dim`` of a parameter or buffer, named by its qualified name in the user's model."""

    param: str
    dim: int
    side: Side
    index: int

    @property
    def layer(self) -> str:
        owner, _, _ = self.param.rpartition(".")
        return owner or self.param

    @property
    def family(self) -> tuple:
        return (self.param, self.dim)


Slot = Union[LayerSlot, ParamSlot]


# ---- how a layer's input channels relate to its output channels


@dataclass(frozen=True)
class Independent:
    """Inputs and outputs are separate units (dense conv, linear)."""


@dataclass(frozen=True)
class Same:
    """Output channel i is input channel i (BatchNorm, LayerNorm, per-channel scale)."""


@dataclass(frozen=True)
class Depthwise:
    """Each input channel owns ``multiplier`` consecutive output channels."""

    multiplier: int = 1


@dataclass(frozen=True)
class Grouped:
    """``groups`` equal groups; the same within-group positions are removed in every group."""

    groups: int


Coupling = Union[Independent, Same, Depthwise, Grouped]


@dataclass
class Unit:
    """One union-find class: the slots removed together."""

    root: int
    slots: list[Slot]

    @property
    def key(self) -> tuple:
        return tuple(sorted({s.family for s in self.slots}, key=str))

    @property
    def is_block(self) -> bool:
        """A unit of several indices of one slot family or an internal unit: a head, not a channel."""
        seen: set[tuple] = set()
        for s in self.slots:
            if s.side is Side.INTERNAL or s.family in seen:
                return True
            seen.add(s.family)
        return False

    def prunable(self) -> bool:
        return any(s.side in (Side.OUT, Side.INTERNAL) for s in self.slots)


@dataclass
class Group:
    key: tuple
    units: list[Unit] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return sorted({s.layer for s in self.units[0].slots}) if self.units else []

    @property
    def is_heads(self) -> bool:
        return any(u.is_block for u in self.units)


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = [0]

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            if rb == BLOCK or (ra != BLOCK and rb < ra):
                ra, rb = rb, ra
            self.parent[rb] = ra

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.broadcast_arrays(a, b)
        pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
        for x, y in pairs:
            if x != y:
                self.union(x, y)

    def roots(self, a: np.ndarray) -> np.ndarray:
        flat = np.fromiter((self.find(int(v)) for v in a.ravel()), dtype=np.int64, count=a.size)
        return flat.reshape(a.shape)

    def blocked(self, x: int) -> bool:
        return self.find(int(x)) == self.find(BLOCK)


@dataclass
class Labeled:
    """A tensor flowing through the graph: its shape and its label field (or None).

    The field is an integer array broadcastable to the shape (size 1 on unlabeled dimensions) whose entries
    are union-find ids.
    """

    shape: tuple[int, ...]
    field: np.ndarray | None = None

    def dims(self) -> list[int]:
        if self.field is None:
            return []
        return [d for d, s in enumerate(self.field.shape) if s > 1]


T = TypeVar("T")


class TypeRegistry(KeyedRegistry[T]):
    """Functions keyed by module type, found along the MRO (a subclass uses its base's entry): edgekit's one
    registry mechanism (:class:`edgekit.registry.KeyedRegistry`) with a ``register(*types)`` decorator."""

    def __init__(self, kind: str = "module-type entry") -> None:
        super().__init__(kind)

    def register(self, *types: type) -> Callable[[T], T]:  # type: ignore[override]
        def decorator(fn: T) -> T:
            for t in types:
                self.add(t, fn, replace=True)
            return fn

        return decorator

    def unregister(self, *types: type) -> None:  # type: ignore[override]
        for t in types:
            if t in self._items:
                super().unregister(t)

    def find(self, t: type) -> T | None:
        return self.lookup(t)


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


__all__ = ["BLOCK", "UnsupportedPattern", "Side", "LayerSlot", "ParamSlot", "Slot", "Independent", "Same",
           "Depthwise", "Grouped", "Coupling", "Unit", "Group", "UnionFind", "Labeled", "TypeRegistry", "norm_dim"]
