"""Label propagation: the framework-neutral core of the dependency graph (the idea of DepGraph, "DepGraph:
Towards Any Structural Pruning", Fang et al., CVPR 2023; written from the paper, not from Torch-Pruning's code).

Every tensor carries at most one *label field* (:class:`~edgekit.prune.slots.Labeled`); labels are merged in a
union-find structure. The graph front ends (:mod:`.fx_rules`, :mod:`.aten_rules`) translate each node into
the operations of :class:`LabelSpace`:

* a layer binds the labels of its input channels to its in-slots and emits fresh labels for its out-slots
  (:meth:`LabelSpace.layer`; the :data:`~edgekit.prune.slots.Coupling` says how inputs and outputs relate);
* element-wise ops unify their operands' labels (:meth:`merge`);
* ``cat`` concatenates label arrays, ``split`` / ``chunk`` / indexing slice them;
* reshapes reshape them; a reshape that splits a labeled dimension into several factors must keep a product
  grid: after propagation (:meth:`finish`) every such split whose factors still vary independently couples
  all factors but one (the second-to-last varying one: ``(heads, head_dim)`` prunes whole heads). The choice
  is deferred because later ops often decide it (selecting q, k, v out of ``(3, dim)`` couples the 3; a
  matmul contracting ``head_dim`` couples it);
* matmuls unify contracted and batch dimensions, so q/k/v and the output projection shrink by whole heads;
* anything not understood freezes (never prunes) the labels that reach it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from torch import fx

from edgekit.prune.slots import (
    Coupling, Depthwise, Grouped, Labeled, Same, Slot, UnionFind, UnsupportedPattern, norm_dim,
)

SlotsOf = Callable[[int], list[Slot]]


class LabelSpace:
    def __init__(self) -> None:
        self.uf = UnionFind()
        self.bindings: dict[int, list[Slot]] = {}
        self.slot_ids: dict[Slot, int] = {}  # a slot read at several places (a layer called twice) is one label
        self.frozen_reasons: list[str] = []
        self._grids: list[tuple[np.ndarray, list[int]]] = []

    # ------------------------------------------------------------------------------------------ basics
    def fresh(self, n: int, slots: SlotsOf | None = None) -> np.ndarray:
        ids = self.uf.new(n)
        if slots is not None:
            for i, v in enumerate(ids):
                own = slots(i)
                self.bindings[int(v)] = own
                for s in own:
                    if s in self.slot_ids:
                        self.uf.union(self.slot_ids[s], int(v))
                    else:
                        self.slot_ids[s] = int(v)
        return ids

    def block(self, f: np.ndarray | None, why: str = "") -> None:
        if f is not None and f.size:
            self.uf.union_arrays(f, np.zeros((), dtype=np.int64))
            if why:
                self.frozen_reasons.append(why)

    def block_value(self, v: Any, why: str = "") -> None:
        if isinstance(v, Labeled):
            self.block(v.field, why)
        elif isinstance(v, (tuple, list)):
            for x in v:
                self.block_value(x, why)

    def bind_dim(self, f: np.ndarray, dim: int, ids: np.ndarray) -> None:
        """Unify the labels of ``f`` along ``dim`` with ``ids`` (one per index along that dim)."""
        self.uf.union_arrays(f, along(ids, dim, f.ndim))

    def couple_along(self, f: np.ndarray, dim: int) -> np.ndarray:
        """Make every position along ``dim`` carry the same labels (they are removed together)."""
        first = np.take(f, [0], axis=dim)
        self.uf.union_arrays(f, first)
        return first

    @staticmethod
    def plain(shapes: Any) -> Any:
        if isinstance(shapes, tuple) and all(isinstance(s, int) for s in shapes):
            return Labeled(shapes)
        if isinstance(shapes, (tuple, list)):
            return type(shapes)(LabelSpace.plain(s) for s in shapes)
        return None

    def varies(self, f: np.ndarray, dim: int) -> bool:
        r = self.uf.roots(f)
        return f.shape[dim] > 1 and not np.all(r == np.take(r, [0], axis=dim))

    # ------------------------------------------------------------------------------------------ layers
    def layer(self, x: Any, shapes: tuple[int, ...], din: int, dout: int, cin: int, cout: int, coupling: Coupling,
              in_slots: SlotsOf, out_slots: SlotsOf, name: str) -> Labeled:
        """A layer mapping ``cin`` channels on ``din`` of its input to ``cout`` channels on ``dout`` of its output."""
        if not isinstance(x, Labeled):
            raise UnsupportedPattern(f"{name}: unexpected input")
        nd_in, nd_out = len(x.shape), len(shapes)
        din, dout = norm_dim(din, nd_in), norm_dim(dout, nd_out)
        f = x.field
        if f is not None and any(d != din for d in x.dims()):
            self.block(f, f"{name}: input labeled on a non-channel dimension")
            f = None
        if isinstance(coupling, Same):
            ids = self.fresh(cout, out_slots)
            if f is None:  # the producer's channels cannot shrink, so neither can these
                self.block(ids, f"{name}: its input channels cannot be pruned")
                return Labeled(shapes)
            self.bind_dim(f, din, ids)
            return Labeled(shapes, along(ids, dout, nd_out))
        if isinstance(coupling, Depthwise):
            mult = coupling.multiplier
            ids = self.fresh(cin, lambda i: in_slots(i) + [s for k in range(mult) for s in out_slots(i * mult + k)])
            if f is None:
                self.block(ids)
                return Labeled(shapes)
            self.bind_dim(f, din, ids)
            return Labeled(shapes, along(np.repeat(ids, mult), dout, nd_out))
        groups = coupling.groups if isinstance(coupling, Grouped) else 1
        cin_g, cout_g = cin // groups, cout // groups
        if f is not None:
            in_ids = self.fresh(cin_g, lambda j: [s for g in range(groups) for s in in_slots(g * cin_g + j)])
            self.bind_dim(f, din, np.tile(in_ids, groups))
        out_ids = self.fresh(cout_g, lambda j: [s for g in range(groups) for s in out_slots(g * cout_g + j)])
        return Labeled(shapes, along(np.tile(out_ids, groups), dout, nd_out))

    def spatial(self, x: Any, shapes: Any) -> Any:
        """Pooling, padding, interpolation: channels (dim 1) pass through, spatial dims must be unlabeled."""
        if not isinstance(x, Labeled):
            return self.plain(shapes)
        if x.field is None:
            return Labeled(shapes)
        if any(d >= 2 for d in x.dims()) or len(shapes) != len(x.shape):
            self.block(x.field, "spatial op on a labeled spatial dim")
            return Labeled(shapes)
        return Labeled(shapes, x.field)

    def same_shape(self, x: Any, shapes: Any) -> Any:
        if isinstance(x, Labeled) and isinstance(shapes, tuple) and tuple(x.shape) == tuple(shapes):
            return Labeled(shapes, x.field)
        raise UnsupportedPattern("unary op changed the shape")

    # ------------------------------------------------------------------------------------------ element-wise
    def merge(self, vals: Sequence[Labeled], out_shape: tuple[int, ...], why: str) -> np.ndarray | None:
        """Broadcasting element-wise op: unify the operands' fields, freeze fields that cannot be carried."""
        nd = len(out_shape)
        fields, shapes = [], []
        for v in vals:
            pad = nd - len(v.shape)
            shapes.append((1,) * pad + tuple(v.shape))
            fields.append(None if v.field is None else v.field.reshape((1,) * pad + v.field.shape))
        labeled = [f for f in fields if f is not None]
        if not labeled:
            return None
        dims = [set(d for d, s in enumerate(f.shape) if s > 1) for f in labeled]
        main = max(range(len(labeled)), key=lambda i: len(dims[i]))
        out = labeled[main]
        for i, f in enumerate(labeled):
            if i == main:
                continue
            if dims[i] and not (dims[i] & dims[main]):
                self.block(f, why)
            else:
                self.uf.union_arrays(out, f)
                out = np.broadcast_to(out, np.broadcast_shapes(out.shape, f.shape))
        ldims = set(d for d, s in enumerate(out.shape) if s > 1)
        for f, s in zip(fields, shapes):
            if f is None and any(s[d] > 1 for d in ldims):
                self.block(out, why + " (an operand without labels)")
                break
            if f is not None and any(s[d] > 1 and f.shape[d] == 1 for d in ldims):
                self.block(out, why + " (operands labeled on different dims)")
                break
        return out

    def collapse(self, f: np.ndarray, dim: int, keepdim: bool) -> np.ndarray | None:
        """Reduce a field over ``dim``: labels along it are coupled when other dims stay labeled."""
        if f.shape[dim] > 1:
            if any(s > 1 for d, s in enumerate(f.shape) if d != dim):
                f = self.couple_along(f, dim)
            else:
                return None  # the field is consumed
        return f if keepdim else np.squeeze(f, axis=dim)

    def reduce(self, v: Any, shapes: Any, dims: Any, keepdim: bool) -> Any:
        if not isinstance(v, Labeled) or v.field is None:
            return self.plain(shapes)
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            return Labeled(shapes)  # a full reduction: the labels are consumed
        f = v.field
        for d in sorted({norm_dim(d, f.ndim) for d in ([dims] if isinstance(dims, int) else dims)}, reverse=True):
            f = self.collapse(f, d, keepdim)
            if f is None:
                break
        return Labeled(shapes, f if f is not None and f.ndim == len(shapes) else None)

    # ------------------------------------------------------------------------------------------ shapes
    def reshape(self, v: Any, shapes: Any) -> Any:
        if not isinstance(v, Labeled) or v.field is None or not isinstance(shapes, tuple):
            return self.plain(shapes)
        mid = common_refinement(tuple(v.shape), tuple(shapes))
        if mid is not None and mid not in (tuple(v.shape), tuple(shapes)):  # e.g. (L, N*H, hd) -> (L*N, H*hd)
            return self._reshape(self._reshape(v, mid), tuple(shapes))
        return self._reshape(v, tuple(shapes))

    def _reshape(self, v: Labeled, shapes: tuple[int, ...]) -> Labeled:
        f = v.field
        in_shape, out_shape = tuple(v.shape), tuple(shapes)
        groups = reshape_groups(in_shape, out_shape)
        if groups is None:
            raise UnsupportedPattern(f"reshape {in_shape} -> {out_shape} not understood")
        labeled = set(v.dims())
        full_shape = list(f.shape)
        for (i0, i1), _ in groups:
            if any(d in labeled for d in range(i0, i1)):  # merged dims: the labels repeat over the others
                for d in range(i0, i1):
                    full_shape[d] = in_shape[d]
        f = np.broadcast_to(f, full_shape)
        new_shape: list[int] = []
        for (i0, i1), (o0, o1) in groups:
            lab = any(d in labeled for d in range(i0, i1))
            new_shape += list(out_shape[o0:o1]) if lab else [1] * (o1 - o0)
        f = np.ascontiguousarray(f).reshape(new_shape)
        for d in range(f.ndim):  # a factor the labels do not vary along (the batch in N*heads) is broadcast
            if f.shape[d] > 1 and not self.varies(f, d):
                f = np.take(f, [0], axis=d)
        new_shape = list(f.shape)
        for _, (o0, o1) in groups:  # splits of a labeled dim: decided in finish()
            if o1 - o0 > 1 and sum(new_shape[d] > 1 for d in range(o0, o1)) > 1:
                self._grids.append((f, list(range(o0, o1))))
        return Labeled(shapes, f)

    def finish(self) -> None:
        """Keep a product grid for every split of a labeled dim: couple all varying factors but one."""
        for f, dims in self._grids:
            varying = [d for d in dims if self.varies(f, d)]
            if len(varying) <= 1:
                continue
            keep = varying[-2]  # (.., heads, head_dim): whole heads
            first = f
            for d in varying:
                if d != keep:
                    first = np.take(first, [0], axis=d)
            self.uf.union_arrays(f, first)
        self._grids.clear()

    def permute(self, v: Any, shapes: Any, order: Sequence[int]) -> Any:
        if not isinstance(v, Labeled) or v.field is None:
            return self.plain(shapes)
        order = [norm_dim(int(o), v.field.ndim) for o in order]
        return Labeled(shapes, np.transpose(v.field, order))

    def transpose(self, v: Any, shapes: Any, a: int, b: int) -> Any:
        nd = len(v.shape) if isinstance(v, Labeled) else 0
        order = list(range(nd))
        if nd:
            a, b = norm_dim(int(a), nd), norm_dim(int(b), nd)
            order[a], order[b] = order[b], order[a]
        return self.permute(v, shapes, order)

    def broadcast(self, v: Any, shapes: Any) -> Any:
        if not isinstance(v, Labeled) or v.field is None:
            return self.plain(shapes)
        f = v.field.reshape((1,) * (len(shapes) - v.field.ndim) + v.field.shape)
        if any(f.shape[d] > 1 and f.shape[d] != shapes[d] for d in range(len(shapes))):
            raise UnsupportedPattern("repeat along a labeled dimension")
        return Labeled(shapes, f)

    # ------------------------------------------------------------------------------------------ cat / split
    def cat(self, vals: Sequence[Any], shapes: tuple[int, ...], dim: int, why: str) -> Labeled:
        if not all(isinstance(v, Labeled) for v in vals):
            raise UnsupportedPattern("cat of non-tensors")
        nd = len(shapes)
        dim = norm_dim(dim, nd)
        if all(v.field is None for v in vals):
            return Labeled(shapes)
        if not any(v.field is not None and v.field.shape[dim] > 1 for v in vals):
            # concatenation along an unlabeled dim (e.g. tokens): the other dims are shared
            reduced = [Labeled(tuple(1 if d == dim else s for d, s in enumerate(v.shape)), v.field) for v in vals]
            shp = tuple(1 if d == dim else s for d, s in enumerate(shapes))
            return Labeled(shapes, self.merge(reduced, shp, why))
        parts = []
        for v in vals:
            shp = [1] * nd
            shp[dim] = v.shape[dim]
            if v.field is None:
                ids = self.uf.new(v.shape[dim])
                self.block(ids)
                parts.append(ids.reshape(shp))
            else:
                if any(d != dim for d in v.dims()):
                    raise UnsupportedPattern("cat of tensors labeled on several dims")
                parts.append(np.broadcast_to(v.field, shp))
        return Labeled(shapes, np.concatenate(parts, axis=dim))

    def split(self, v: Any, shapes: Any, dim: int, equal: bool, squeeze: bool = False) -> Any:
        """Pieces along ``dim`` (``equal``: chunk / unbind, whose pieces must keep equal sizes)."""
        if not isinstance(v, Labeled) or v.field is None or not isinstance(shapes, (tuple, list)):
            return self.plain(shapes)
        dim = norm_dim(dim, len(v.shape))
        f = v.field
        if f.shape[dim] == 1:
            return type(shapes)(Labeled(s, np.squeeze(f, dim) if squeeze else f) for s in shapes)
        outs, off = [], 0
        for s in shapes:
            n = 1 if squeeze else s[dim]
            part = np.take(f, range(off, off + n), axis=dim)
            outs.append(Labeled(s, np.squeeze(part, dim) if squeeze else part))
            off += n
        if equal:  # couple the pieces position-wise
            for o in outs[1:]:
                if o.field.shape == outs[0].field.shape:
                    self.uf.union_arrays(outs[0].field, o.field)
        return type(shapes)(outs)

    def select(self, v: Any, shapes: Any, dim: int, index: int) -> Any:
        """``x.select(dim, index)``: picking one position of a labeled dim couples its positions."""
        if not isinstance(v, Labeled) or v.field is None:
            return self.plain(shapes)
        dim = norm_dim(dim, v.field.ndim)
        f = v.field
        if f.shape[dim] > 1:
            f = self.couple_along(f, dim)
        return Labeled(shapes, np.squeeze(f, dim))

    def slice(self, v: Any, shapes: Any, dim: int) -> Any:
        if not isinstance(v, Labeled) or v.field is None:
            return self.plain(shapes)
        dim = norm_dim(dim, v.field.ndim)
        if v.field.shape[dim] > 1 and shapes[dim] != v.shape[dim]:
            raise UnsupportedPattern("partial slice of a labeled dimension")
        return Labeled(shapes, v.field)

    # ------------------------------------------------------------------------------------------ matmul
    def matmul(self, a: Any, b: Any, shapes: tuple[int, ...], why: str) -> Labeled:
        if not (isinstance(a, Labeled) and isinstance(b, Labeled)) or len(a.shape) < 2 or len(b.shape) < 2:
            raise UnsupportedPattern("matmul of vectors")
        nd = max(len(a.shape), len(b.shape)) + 1

        def lift(v: Labeled, left: bool) -> Labeled:
            pad = nd - 1 - len(v.shape)
            shp = (1,) * pad + tuple(v.shape)
            f = None if v.field is None else v.field.reshape((1,) * pad + v.field.shape)
            if left:  # (..., n, k) -> (..., n, k, 1)
                return Labeled(shp + (1,), None if f is None else f[..., None])
            return Labeled(shp[:-2] + (1,) + shp[-2:], None if f is None else f[..., None, :, :])

        la, lb = lift(a, True), lift(b, False)
        space = tuple(max(x, y) for x, y in zip(la.shape, lb.shape))
        f = self.merge([la, lb], space, why)
        if f is None:
            return Labeled(shapes)
        f = self.collapse(f, nd - 2, False)
        if f is None:
            return Labeled(shapes)
        f = f.reshape(f.shape[nd - 1 - len(shapes):]) if f.ndim > len(shapes) else f
        return Labeled(shapes, f)


class NodeRules:
    """Base of the graph front ends: the value of a node argument (nested arguments as lists)."""

    def __init__(self, space: LabelSpace, values: dict) -> None:
        self.space = space
        self.values = values

    def arg(self, a: Any) -> Any:
        return self.values.get(a) if isinstance(a, fx.Node) else None

    def arg_tree(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.arg(a)
        if isinstance(a, (tuple, list)):
            return [self.arg_tree(x) for x in a]
        if isinstance(a, dict):
            return [self.arg_tree(x) for x in a.values()]
        return None


def along(ids: np.ndarray, dim: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[dim] = len(ids)
    return ids.reshape(shape)


def common_refinement(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape both ``a`` and ``b`` reach by splitting dims only, or None (e.g. (6, 4) and (4, 6))."""
    out: list[int] = []
    i = j = 0
    ra = rb = None
    while i < len(a) or j < len(b):
        ra = a[i] if ra is None and i < len(a) else ra
        rb = b[j] if rb is None and j < len(b) else rb
        if ra == 1 or rb == 1:
            out.append(1)
            if ra == 1:
                ra, i = None, i + 1
            else:
                rb, j = None, j + 1
        elif ra is None or rb is None:
            return None
        elif ra == rb:
            out.append(ra)
            ra, rb, i, j = None, None, i + 1, j + 1
        elif ra % rb == 0:
            out.append(rb)
            ra, rb, j = ra // rb, None, j + 1
        elif rb % ra == 0:
            out.append(ra)
            ra, rb, i = None, rb // ra, i + 1
        else:
            return None
    return tuple(out)


def reshape_groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[tuple[int, int], tuple[int, int]]] | None:
    """Pair contiguous dim ranges of ``a`` and ``b`` with equal products (size-1 dims attach to a neighbour)."""
    groups = []
    i = j = 0
    while i < len(a) or j < len(b):
        i0, j0 = i, j
        if i < len(a) and j < len(b) and a[i] == b[j]:
            groups.append(((i, i + 1), (j, j + 1)))
            i, j = i + 1, j + 1
            continue
        if i < len(a) and a[i] == 1:
            groups.append(((i, i + 1), (j, j)))
            i += 1
            continue
        if j < len(b) and b[j] == 1:
            groups.append(((i, i), (j, j + 1)))
            j += 1
            continue
        pa, pb = a[i] if i < len(a) else 1, b[j] if j < len(b) else 1
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(a):
                    return None
                pa *= a[i]
                i += 1
            else:
                if j >= len(b):
                    return None
                pb *= b[j]
                j += 1
        groups.append(((i0, i), (j0, j)))
    return groups


__all__ = ["LabelSpace", "NodeRules", "along", "common_refinement", "reshape_groups"]
