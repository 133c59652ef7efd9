"""Dependency graph for structured pruning (the idea of DepGraph: "DepGraph: Towards Any Structural Pruning",
Fang et al., CVPR 2023; written from the paper, not from Torch-Pruning's code).

The model is traced with ``torch.fx`` (modules that have a registered handler are leaves) and shapes are
propagated with the example inputs. Every tensor in the graph then carries at most one *label field*: an
integer array broadcastable to the tensor's shape (size 1 on unlabeled dimensions) whose entries name
"channel slots". Labels are merged in a union-find structure:

* a handled layer binds the labels of its input channels to its in-slots and emits fresh labels for its
  out-slots (BN / LayerNorm / depthwise convs pass their input labels through: input and output coupled);
* element-wise ops (residual adds, multiplications, ``torch.where``) unify their operands' labels;
* ``torch.cat`` concatenates label arrays, ``split`` / ``chunk`` / indexing slice them (index maps);
* reshapes (flatten before a linear, splitting channels into heads) reshape them; a reshape that splits a
  labeled dimension into several factors keeps a product grid by coupling everything except one factor
  (the second-to-last varying one: ``(3, heads, head_dim)`` and ``(heads, head_dim)`` prune whole heads);
* matmuls unify contracted and batch dimensions, so q/k/v and the output projection shrink by whole heads;
* anything the graph does not understand freezes (never prunes) the labels that reach it.

A *unit* is one union-find class: the set of slots removed together. A *group* is the set of units that touch
the same layers (e.g. all output channels of one conv with its BN and consumers). The graph knows nothing of
importance criteria; :mod:`edgekit.prune.structured` ranks units and calls :meth:`DependencyGraph.prune`.
"""

from __future__ import annotations

import copy
import fnmatch
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edgekit.errors import UserInputError
from edgekit.prune.handlers import Handler, find_handler

BLOCK = 0  # the union-find class of frozen (never pruned) labels

# A slot: ("module", qualified name, "out" | "in" | "internal", index) or ("param", target, dim, index).
Slot = tuple


class _UnionFind:
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


@dataclass
class _Val:
    """A tensor flowing through the graph: its shape and its label field (or None)."""

    shape: tuple[int, ...]
    field: np.ndarray | None = None

    def dims(self) -> list[int]:
        if self.field is None:
            return []
        return [d for d, s in enumerate(self.field.shape) if s > 1]


@dataclass
class Unit:
    root: int
    slots: list[Slot]

    @property
    def key(self) -> tuple:
        return tuple(sorted({s[:3] for s in self.slots}, key=str))


@dataclass
class Group:
    key: tuple
    units: list[Unit] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return sorted({f"{k[1]}" for k in self.key})


_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.PixelShuffle,
)
_SPATIAL_FUNCS = {
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, F.pad,
    F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, torch.nn.functional.upsample,
}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
           torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
           torch.lerp, torch.addcmul}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "where",
                   "masked_fill", "lerp"}
_UNARY = {F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu,
          F.mish, F.softplus, F.dropout, F.softmax, F.log_softmax, torch.relu, torch.sigmoid, torch.tanh,
          torch.exp, torch.abs, torch.sqrt, torch.rsqrt, torch.softmax, torch.clamp, torch.erf, operator.neg,
          operator.pow, torch.pow, F.normalize, torch.nn.functional.hardtanh, torch.square}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "tanh", "exp", "abs", "sqrt", "rsqrt", "softmax", "clamp",
                  "clamp_", "contiguous", "float", "half", "double", "to", "type_as", "clone", "detach", "pow",
                  "neg", "erf", "square", "sign", "log", "reciprocal", "__neg__"}
_REDUCE = {torch.mean, torch.sum, torch.amax, torch.amin, torch.max, torch.min, torch.var, torch.std}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "var", "std"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_BROADCAST_METHODS = {"expand", "expand_as", "repeat", "broadcast_to"}
_RESHAPE_FUNCS = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten}
_SIZE_ARG_OPS = {"view", "reshape", "expand", torch.reshape}  # ops whose size arguments may need rewriting


def _tensor_shapes(meta: Any) -> Any:
    if meta is None:
        return None
    if hasattr(meta, "shape"):
        return tuple(int(s) for s in meta.shape)
    if isinstance(meta, (tuple, list)):
        return type(meta)(_tensor_shapes(m) for m in meta)
    return None


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


class _Tracer(fx.Tracer):
    def __init__(self, leaf: Callable[[nn.Module], bool]) -> None:
        super().__init__()
        self._leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return self._leaf(m) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace in which every module with a registered pruning handler is a leaf."""
    tracer = _Tracer(lambda m: find_handler(type(m)) is not None)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - report any tracing failure in user terms
        raise UserInputError(
            f"structured pruning needs a torch.fx-traceable model; tracing {type(model).__name__} failed: "
            f"{type(exc).__name__}: {exc}. Register a pruning handler for the untraceable layer type "
            "(edgekit.prune.handlers.register_handler) or make its forward traceable."
        ) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


class DependencyGraph:
    """Groups of channel / head indices that must be removed together.

    ``DependencyGraph(model, example_inputs, ignore=["head*"])`` traces a deep copy of ``model``;
    :attr:`groups` lists the prunable groups; :meth:`prune` removes a set of units and returns the pruned
    model (the edited copy when its own forward still runs, else the rewritten ``GraphModule``).
    """

    def __init__(self, model: nn.Module, example_inputs: Sequence[torch.Tensor], ignore: Iterable[str] = ()) -> None:
        self.model = copy.deepcopy(model).eval()
        self.example_inputs = tuple(example_inputs)
        self.ignore = list(ignore)
        self.gm = trace(self.model)
        self.modules = dict(self.gm.named_modules())
        self.uf = _UnionFind()
        self.bindings: dict[int, list[Slot]] = {}
        self.values: dict[fx.Node, Any] = {}
        self.frozen_reasons: list[str] = []
        with torch.no_grad():
            ShapeProp(self.gm).propagate(*self.example_inputs)
        self._propagate()
        self._apply_ignore()
        self.units, self.groups = self._collect()

    # ------------------------------------------------------------------------------------------ labels
    def _fresh(self, n: int, slots: Callable[[int], list[Slot]] | None = None) -> np.ndarray:
        ids = self.uf.new(n)
        if slots is not None:
            for i, v in enumerate(ids):
                self.bindings[int(v)] = slots(i)
        return ids

    def _block(self, f: np.ndarray | None, why: str = "") -> None:
        if f is not None and f.size:
            self.uf.union_arrays(f, np.zeros((), dtype=np.int64))
            if why:
                self.frozen_reasons.append(why)

    def _block_val(self, v: Any, why: str = "") -> None:
        if isinstance(v, _Val):
            self._block(v.field, why)
        elif isinstance(v, (tuple, list)):
            for x in v:
                self._block_val(x, why)

    def _bind_dim(self, f: np.ndarray, dim: int, ids: np.ndarray) -> None:
        """Unify the labels of ``f`` along ``dim`` with ``ids`` (one per index along that dim)."""
        shape = [1] * f.ndim
        shape[dim] = len(ids)
        self.uf.union_arrays(f, ids.reshape(shape))

    @staticmethod
    def _along(ids: np.ndarray, dim: int, ndim: int) -> np.ndarray:
        shape = [1] * ndim
        shape[dim] = len(ids)
        return ids.reshape(shape)

    def _merge(self, vals: list[_Val], out_shape: tuple[int, ...], why: str) -> np.ndarray | None:
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
            if i != main and not (dims[i] & dims[main]) and dims[i]:
                self._block(f, why)
            elif i != main:
                self.uf.union_arrays(out, f)
                out = np.broadcast_to(out, np.broadcast_shapes(out.shape, f.shape))
        ldims = set(d for d, s in enumerate(out.shape) if s > 1)
        for f, s in zip(fields, shapes):
            if f is None and any(s[d] > 1 for d in ldims):
                self._block(out, why + " (an operand without labels)")
                break
            if f is not None and any(s[d] > 1 and f.shape[d] == 1 for d in ldims):
                self._block(out, why + " (operands labeled on different dims)")
                break
        return out

    def _collapse(self, f: np.ndarray, dim: int, keepdim: bool) -> np.ndarray | None:
        """Reduce a field over ``dim``: labels along it are coupled when other dims stay labeled."""
        if f.shape[dim] > 1 and any(s > 1 for d, s in enumerate(f.shape) if d != dim):
            first = np.take(f, [0], axis=dim)
            self.uf.union_arrays(f, first)
            f = first
        elif f.shape[dim] > 1:
            f = np.take(f, [0], axis=dim)
            f = None if f.size == 1 else f  # the field is consumed
            if f is None:
                return None
        return f if keepdim else np.squeeze(f, axis=dim)

    # ------------------------------------------------------------------------------------------ pass
    def _propagate(self) -> None:
        for node in self.gm.graph.nodes:
            shapes = _tensor_shapes(node.meta.get("tensor_meta"))
            try:
                self.values[node] = self._visit(node, shapes)
            except UserInputError:
                raise
            except Exception as exc:  # noqa: BLE001 - unknown patterns freeze instead of failing
                self.frozen_reasons.append(f"{node.name}: {type(exc).__name__}: {exc}")
                for a in node.all_input_nodes:
                    self._block_val(self.values.get(a))
                self.values[node] = self._plain(shapes)

    def _plain(self, shapes: Any) -> Any:
        if isinstance(shapes, tuple) and shapes and all(isinstance(s, int) for s in shapes):
            return _Val(shapes)
        if isinstance(shapes, tuple) and len(shapes) == 0:
            return _Val(())
        if isinstance(shapes, (tuple, list)):
            return type(shapes)(self._plain(s) for s in shapes)
        return None

    def _arg(self, a: Any) -> Any:
        return self.values.get(a) if isinstance(a, fx.Node) else None

    def _visit(self, node: fx.Node, shapes: Any) -> Any:
        op, target = node.op, node.target
        if op == "placeholder":
            return self._plain(shapes)
        if op == "output":
            self._block_val(self._arg_tree(node.args[0]), "model output")
            return None
        if op == "get_attr":
            return self._get_attr(node, shapes)
        if not isinstance(shapes, tuple) or (shapes and not isinstance(shapes[0], int) and not isinstance(shapes[0], tuple)):
            if shapes is None:  # a non-tensor (shape arithmetic): nothing to track
                return None
        if op == "call_module":
            return self._call_module(node, self.modules[target], shapes)
        name = target if op == "call_method" else target
        return self._call_function(node, name, shapes)

    def _arg_tree(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.values.get(a)
        if isinstance(a, (tuple, list)):
            return [self._arg_tree(x) for x in a]
        if isinstance(a, dict):
            return [self._arg_tree(x) for x in a.values()]
        return None

    def _get_attr(self, node: fx.Node, shapes: Any) -> Any:
        if not isinstance(shapes, tuple) or not shapes:
            return self._plain(shapes)
        big = [d for d, s in enumerate(shapes) if s > 1]
        if not big:
            return _Val(shapes)
        d = big[-1]
        ids = self._fresh(shapes[d], lambda i, t=node.target, d=d: [("param", t, d, i)])
        return _Val(shapes, self._along(ids, d, len(shapes)))

    # ------------------------------------------------------------------------------------------ modules
    def _call_module(self, node: fx.Node, m: nn.Module, shapes: Any) -> Any:
        handler = find_handler(type(m))
        x = self._arg(node.args[0]) if node.args else None
        if handler is not None:
            return self._handled(node.target, m, handler, x, shapes)
        if isinstance(m, nn.Flatten):
            return self._reshape(x, shapes)
        if isinstance(m, _SPATIAL_MODULES):
            return self._spatial(x, shapes)
        has_params = any(True for _ in m.parameters())
        if not has_params and isinstance(x, _Val) and isinstance(shapes, tuple) and tuple(x.shape) == shapes:
            return _Val(shapes, x.field)  # activations, dropout, identity, softmax
        for a in node.all_input_nodes:
            self._block_val(self.values.get(a), f"{node.target}: no pruning handler for {type(m).__name__}")
        return self._plain(shapes)

    def _handled(self, name: str, m: nn.Module, h: Handler, x: Any, shapes: Any) -> Any:
        if not isinstance(x, _Val) or not isinstance(shapes, tuple):
            raise ValueError(f"{name}: unexpected input")
        nd_in, nd_out = len(x.shape), len(shapes)
        din, dout = _norm_dim(h.in_dim(m), nd_in), _norm_dim(h.out_dim(m), nd_out)
        fx_ = x.field
        if fx_ is not None and any(d != din for d in x.dims()):
            if nd_in == nd_out and din == dout:  # the other labeled dims pass through a per-position layer
                pass
            self._block(fx_, f"{name}: input labeled on a non-channel dimension")
            fx_ = None
        cin, cout = h.channels(m, "in"), h.channels(m, "out")
        coupling = h.coupling(m)
        n_int = h.internal_units(m)
        if n_int:
            self._fresh(n_int, lambda i: [("module", name, "internal", i)])
        if coupling == "same":
            ids = self._fresh(cout, lambda i: [("module", name, "out", i)])
            if fx_ is None:
                return _Val(shapes)
            self._bind_dim(fx_, din, ids)
            return _Val(shapes, self._along(ids, dout, nd_out))
        if isinstance(coupling, tuple) and coupling[0] == "depthwise":
            mult = coupling[1]
            ids = self._fresh(cin, lambda i: [("module", name, "in", i)] + [("module", name, "out", i * mult + k) for k in range(mult)])
            if fx_ is None:
                self._block(ids)
                return _Val(shapes)
            self._bind_dim(fx_, din, ids)
            return _Val(shapes, self._along(np.repeat(ids, mult), dout, nd_out))
        groups = coupling[1] if isinstance(coupling, tuple) else 1
        cin_g, cout_g = cin // groups, cout // groups
        if fx_ is not None:
            in_ids = self._fresh(cin_g, lambda j: [("module", name, "in", g * cin_g + j) for g in range(groups)])
            self._bind_dim(fx_, din, np.tile(in_ids, groups))
        out_ids = self._fresh(cout_g, lambda j: [("module", name, "out", g * cout_g + j) for g in range(groups)])
        return _Val(shapes, self._along(np.tile(out_ids, groups), dout, nd_out))

    def _spatial(self, x: Any, shapes: Any) -> Any:
        if not isinstance(x, _Val):
            return self._plain(shapes)
        if x.field is None:
            return _Val(shapes)
        if any(d >= 2 for d in x.dims()) or len(shapes) != len(x.shape):
            self._block(x.field, "spatial op on a labeled spatial dim")
            return _Val(shapes)
        return _Val(shapes, x.field)

    # ------------------------------------------------------------------------------------------ functions
    def _call_function(self, node: fx.Node, t: Any, shapes: Any) -> Any:
        args = node.args
        kw = node.kwargs
        is_method = node.op == "call_method"
        if t in ("size", "dim", "numel") or t is getattr:
            return None
        if t is operator.getitem:
            return self._getitem(node, shapes)
        if (not is_method and t in _BINARY) or (is_method and t in _BINARY_METHODS):
            vals = [v for v in (self._arg(a) for a in list(args) + list(kw.values())) if isinstance(v, _Val)]
            if not vals or not isinstance(shapes, tuple):
                return self._plain(shapes)
            return _Val(shapes, self._merge(vals, shapes, f"{node.name}: element-wise"))
        if (not is_method and t in _UNARY) or (is_method and t in _UNARY_METHODS):
            x = self._arg(args[0])
            if isinstance(x, _Val) and isinstance(shapes, tuple) and tuple(x.shape) == tuple(shapes):
                return _Val(shapes, x.field)
            raise ValueError("unary op changed the shape")
        if not is_method and t in _SPATIAL_FUNCS:
            return self._spatial(self._arg(args[0]), shapes)
        if (is_method and t in _BROADCAST_METHODS) or t is torch.broadcast_to:
            x = self._arg(args[0])
            if not isinstance(x, _Val) or x.field is None:
                return self._plain(shapes)
            f = x.field.reshape((1,) * (len(shapes) - x.field.ndim) + x.field.shape)
            if any(f.shape[d] > 1 and f.shape[d] != shapes[d] for d in range(len(shapes))):
                raise ValueError("repeat along a labeled dimension")
            return _Val(shapes, f)
        if (is_method and t in _RESHAPE_METHODS) or (not is_method and t in _RESHAPE_FUNCS):
            return self._reshape(self._arg(args[0]), shapes)
        if (is_method and t in ("permute", "transpose", "t", "swapaxes")) or t in (torch.permute, torch.transpose):
            return self._permute(node, shapes)
        if (is_method and t in _REDUCE_METHODS) or (not is_method and t in _REDUCE):
            return self._reduce(node, shapes)
        if t in (torch.cat, torch.concat, torch.concatenate):
            return self._cat(node, shapes)
        if (is_method and t in ("split", "chunk", "unbind")) or t in (torch.split, torch.chunk, torch.unbind):
            return self._split(node, t if isinstance(t, str) else t.__name__, shapes)
        if t in (operator.matmul, torch.matmul, torch.bmm) or (is_method and t in ("matmul", "bmm", "__matmul__")):
            return self._matmul(node, shapes)
        if t is F.layer_norm:
            vals = [self._arg(a) for a in (args[0], *args[2:4], kw.get("weight"), kw.get("bias"))]
            vals = [v for v in vals if isinstance(v, _Val)]
            return _Val(shapes, self._merge(vals, shapes, f"{node.name}: layer_norm"))
        raise ValueError(f"no dependency rule for {t if isinstance(t, str) else getattr(t, '__name__', t)}")

    def _getitem(self, node: fx.Node, shapes: Any) -> Any:
        src, idx = node.args
        v = self._arg(src)
        if isinstance(v, (tuple, list)):
            return v[idx] if isinstance(idx, int) else self._plain(shapes)
        if not isinstance(v, _Val):
            return self._plain(shapes) if isinstance(shapes, tuple) else None
        if v.field is None:
            return self._plain(shapes)
        idx = idx if isinstance(idx, tuple) else (idx,)
        f = v.field
        if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in idx):
            raise ValueError("advanced indexing")
        # expand Ellipsis
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        out_idx: list[Any] = []
        for i in idx:
            if i is Ellipsis:
                out_idx += [slice(None)] * (f.ndim - n_real)
            else:
                out_idx.append(i)
        d = 0
        np_idx: list[Any] = []
        for i in out_idx:
            if i is None:
                np_idx.append(None)
                continue
            full = isinstance(i, slice) and i == slice(None)
            if not full and f.shape[d] > 1:
                varies = not np.all(self.uf.roots(f) == self.uf.roots(np.take(f, [0], axis=d)))
                if varies:
                    raise ValueError("partial indexing of a labeled dimension")
                np_idx.append(slice(0, 1) if isinstance(i, slice) else 0)
            else:
                np_idx.append(slice(None) if (full or f.shape[d] > 1) else (0 if isinstance(i, int) else slice(None)))
            d += 1
        out = f[tuple(np_idx)]
        if isinstance(shapes, tuple) and out.ndim == len(shapes):
            return _Val(shapes, out)
        raise ValueError("indexing result does not match the traced shape")

    def _permute(self, node: fx.Node, shapes: Any) -> Any:
        v = self._arg(node.args[0])
        if not isinstance(v, _Val) or v.field is None:
            return self._plain(shapes)
        nd = v.field.ndim
        t = node.target
        rest = list(node.args[1:])
        if t in ("permute", torch.permute):
            order = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            order = [_norm_dim(int(o), nd) for o in order]
        elif t == "t":
            order = [1, 0]
        else:
            a, b = (_norm_dim(int(r), nd) for r in rest[:2])
            order = list(range(nd))
            order[a], order[b] = order[b], order[a]
        return _Val(shapes, np.transpose(v.field, order))

    def _reduce(self, node: fx.Node, shapes: Any) -> Any:
        v = self._arg(node.args[0])
        if not isinstance(v, _Val) or v.field is None:
            return self._plain(shapes)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 and isinstance(node.args[2], bool) else False))
        if isinstance(shapes, (tuple, list)) and shapes and isinstance(shapes[0], tuple):  # max(dim) -> (values, idx)
            shapes = shapes[0]
            single = True
        else:
            single = False
        if dims is None:
            self._collapse(v.field.reshape(-1), 0, False)
            return _Val(shapes)
        dims = [dims] if isinstance(dims, int) else list(dims)
        f = v.field
        for d in sorted((_norm_dim(d, f.ndim) for d in dims), reverse=True):
            f = self._collapse(f, d, keep)
            if f is None:
                break
        out = _Val(shapes, f if f is not None and f.ndim == len(shapes) else None)
        return (out, _Val(shapes)) if single else out

    def _reshape(self, v: Any, shapes: Any) -> Any:
        if not isinstance(v, _Val) or v.field is None or not isinstance(shapes, tuple):
            return self._plain(shapes)
        f = np.broadcast_to(v.field, v.shape) if False else v.field
        in_shape, out_shape = tuple(v.shape), tuple(shapes)
        groups = _reshape_groups(in_shape, out_shape)
        if groups is None:
            raise ValueError(f"reshape {in_shape} -> {out_shape} not understood")
        labeled = set(v.dims())
        new_shape: list[int] = []
        full_shape = list(f.shape)
        for (i0, i1), (o0, o1) in groups:
            if any(d in labeled for d in range(i0, i1)):
                if 0 in range(i0, i1) and i1 - i0 > 1:
                    raise ValueError("a labeled dimension is merged with the batch dimension")
                for d in range(i0, i1):
                    full_shape[d] = in_shape[d]
        f = np.broadcast_to(f, full_shape)
        for (i0, i1), (o0, o1) in groups:
            lab = any(full_shape[d] > 1 for d in range(i0, i1)) and any(d in labeled for d in range(i0, i1))
            new_shape += list(out_shape[o0:o1]) if lab else [1] * (o1 - o0)
        f = np.ascontiguousarray(f).reshape(new_shape)
        # splits of a labeled dim: keep a product grid by coupling all varying factors but one
        for (i0, i1), (o0, o1) in groups:
            if o1 - o0 > 1 and any(new_shape[d] > 1 for d in range(o0, o1)):
                self._grid(f, list(range(o0, o1)))
        return _Val(shapes, f)

    def _grid(self, f: np.ndarray, dims: list[int]) -> None:
        r = self.uf.roots(f)
        varying = [d for d in dims if f.shape[d] > 1 and not np.all(r == np.take(r, [0], axis=d))]
        if len(varying) <= 1:
            return
        keep = varying[-2]  # (.., heads, head_dim): whole heads
        others = [d for d in varying if d != keep]
        first = f
        for d in others:
            first = np.take(first, [0], axis=d)
        self.uf.union_arrays(f, first)

    def _cat(self, node: fx.Node, shapes: Any) -> Any:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        vals = [self._arg(t) for t in tensors]
        if not all(isinstance(v, _Val) for v in vals):
            raise ValueError("cat of non-tensors")
        nd = len(shapes)
        dim = _norm_dim(dim, nd)
        if all(v.field is None for v in vals):
            return _Val(shapes)
        along = any(v.field is not None and v.field.shape[dim] > 1 for v in vals)
        if not along:  # concatenation along an unlabeled dim (e.g. tokens): the other dims are shared
            shp = list(shapes)
            shp[dim] = 1
            reduced = [_Val(tuple(1 if d == dim else s for d, s in enumerate(v.shape)), v.field) for v in vals]
            f = self._merge(reduced, tuple(shp), f"{node.name}: cat")
            return _Val(shapes, f)
        parts = []
        for v in vals:
            if v.field is None:
                ids = self.uf.new(v.shape[dim])
                self._block(ids)
                shp = [1] * nd
                shp[dim] = v.shape[dim]
                parts.append(ids.reshape(shp))
            else:
                if any(d != dim for d in v.dims()):
                    raise ValueError("cat of tensors labeled on several dims")
                shp = [1] * nd
                shp[dim] = v.shape[dim]
                parts.append(np.broadcast_to(v.field, shp))
        return _Val(shapes, np.concatenate(parts, axis=dim))

    def _split(self, node: fx.Node, kind: str, shapes: Any) -> Any:
        v = self._arg(node.args[0])
        if not isinstance(v, _Val) or not isinstance(shapes, (tuple, list)):
            return self._plain(shapes)
        if kind == "unbind":
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        else:
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        nd = len(v.shape)
        dim = _norm_dim(dim, nd)
        outs = []
        f = v.field
        if f is None:
            return self._plain(shapes)
        if f.shape[dim] == 1:
            return type(shapes)(_Val(s, f if kind != "unbind" else np.squeeze(f, dim)) for s in shapes)
        if any(d != dim for d in v.dims()) and kind == "unbind":
            pass
        off = 0
        for s in shapes:
            n = 1 if kind == "unbind" else s[dim]
            part = np.take(f, range(off, off + n), axis=dim)
            if kind == "unbind":
                part = np.squeeze(part, dim)
            outs.append(_Val(s, part))
            off += n
        if kind in ("chunk", "unbind"):  # equal pieces must keep equal sizes: couple them position-wise
            for o in outs[1:]:
                if o.field.shape == outs[0].field.shape:
                    self.uf.union_arrays(outs[0].field, o.field)
        return type(shapes)(outs)

    def _matmul(self, node: fx.Node, shapes: Any) -> Any:
        a, b = (self._arg(x) for x in node.args[:2])
        if not (isinstance(a, _Val) and isinstance(b, _Val)) or len(a.shape) < 2 or len(b.shape) < 2:
            raise ValueError("matmul of vectors")
        nd = max(len(a.shape), len(b.shape)) + 1

        def lift(v: _Val, side: str) -> _Val:
            pad = nd - 1 - len(v.shape)
            shp = (1,) * pad + tuple(v.shape)
            f = None if v.field is None else v.field.reshape((1,) * pad + v.field.shape)
            if side == "a":  # (..., n, k) -> (..., n, k, 1)
                return _Val(shp + (1,), None if f is None else f[..., None])
            return _Val(shp[:-2] + (1,) + shp[-2:], None if f is None else f[..., None, :, :])

        la, lb = lift(a, "a"), lift(b, "b")
        space = tuple(max(x, y) for x, y in zip(la.shape, lb.shape))
        f = self._merge([la, lb], space, f"{node.name}: matmul")
        if f is None:
            return _Val(shapes)
        f = self._collapse(f, nd - 2, False)
        if f is None:
            return _Val(shapes)
        f = f.reshape(f.shape[nd - 1 - len(shapes):]) if f.ndim > len(shapes) else f
        return _Val(shapes, f)

    # ------------------------------------------------------------------------------------------ result
    def _apply_ignore(self) -> None:
        if not self.ignore:
            return
        for i, slots in self.bindings.items():
            for s in slots:
                name = s[1]
                if s[0] == "module" and s[2] == "in":
                    continue  # an ignored layer keeps its outputs and heads; its inputs follow their producers
                if any(fnmatch.fnmatchcase(name, p) for p in self.ignore):
                    self.uf.union(i, BLOCK)
                    break

    def _collect(self) -> tuple[list[Unit], list[Group]]:
        by_root: dict[int, list[Slot]] = {}
        frozen = self.uf.find(BLOCK)
        for i, slots in self.bindings.items():
            r = self.uf.find(i)
            if r != frozen:
                by_root.setdefault(r, []).extend(slots)
        units = []
        for r, slots in by_root.items():
            if any(s[0] == "module" and s[2] in ("out", "internal") for s in slots):
                units.append(Unit(r, sorted(set(slots), key=str)))
        groups: dict[tuple, Group] = {}
        for u in units:
            groups.setdefault(u.key, Group(u.key)).units.append(u)
        return units, [g for g in groups.values() if len(g.units) > 1]

    def kept_mask(self, f: np.ndarray, removed: set[int]) -> np.ndarray:
        r = self.uf.roots(f)
        return ~np.isin(r, np.fromiter(removed, dtype=np.int64, count=len(removed)))

    def prune(self, remove: Iterable[Unit]) -> tuple[nn.Module, dict[str, Any]]:
        """Remove ``remove`` (units of this graph) and return ``(pruned model, removed indices per slot)``.

        Can be called once per graph (it edits the graph's model copy).
        """
        remove = list(remove)
        removed_roots = {u.root for u in remove}
        per_target: dict[tuple, set[int]] = {}
        for u in remove:
            for s in u.slots:
                per_target.setdefault(s[:3], set()).add(s[3])
        rewrites = self._rewrite_sizes(removed_roots)
        for (kind, name, side), idxs in sorted(per_target.items(), key=lambda kv: (kv[0][0], str(kv[0][2]) != "out")):
            idx = sorted(idxs)
            if kind == "module":
                m = self.modules[name]
                h = find_handler(type(m))
                getattr(h, f"prune_{side}")(m, idx)
            else:
                _slice_param(self.gm, name, side, idx)
                _slice_param(self.model, name, side, idx)
        self.gm.recompile()
        model = self._choose(rewrites)
        removed = {f"{k[1]}.{k[2]}": len(v) for k, v in per_target.items()}
        kind = f"GraphModule({type(self.model).__name__})" if model is self.gm else type(model).__name__
        return model, {"removed": removed, "graph_rewrites": rewrites, "module": kind}

    def _rewrite_sizes(self, removed: set[int]) -> int:
        n = 0
        for node in self.gm.graph.nodes:
            if node.op not in ("call_method", "call_function"):
                continue
            v = self.values.get(node)
            t = node.target
            if t in _SIZE_ARG_OPS and isinstance(v, _Val) and v.field is not None:
                new = list(v.shape)
                mask = self.kept_mask(v.field, removed)
                for d in v.dims():
                    new[d] = int(np.any(mask, axis=tuple(x for x in range(mask.ndim) if x != d)).sum()) * (v.shape[d] // mask.shape[d])
                if tuple(new) == tuple(v.shape):
                    continue
                sizes = list(node.args[1:])
                packed = len(sizes) == 1 and isinstance(sizes[0], (tuple, list))
                if packed:
                    sizes = list(sizes[0])
                for d, (old, nw) in enumerate(zip(v.shape, new)):
                    if old != nw and d < len(sizes) and not (isinstance(sizes[d], int) and sizes[d] == -1):
                        sizes[d] = nw
                node.args = (node.args[0], tuple(sizes)) if packed else (node.args[0], *sizes)
                n += 1
            elif t in ("split", torch.split) and isinstance(v, (tuple, list)):
                sizes_arg = node.args[1]
                if isinstance(sizes_arg, (tuple, list)):
                    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
                    new_sizes = []
                    for part in v:
                        if part.field is None or part.field.shape[_norm_dim(dim, part.field.ndim)] == 1:
                            new_sizes.append(part.shape[_norm_dim(dim, len(part.shape))])
                        else:
                            d = _norm_dim(dim, part.field.ndim)
                            mask = self.kept_mask(part.field, removed)
                            new_sizes.append(int(np.any(mask, axis=tuple(x for x in range(mask.ndim) if x != d)).sum()))
                    if list(new_sizes) != list(sizes_arg):
                        node.args = (node.args[0], new_sizes, *node.args[2:])
                        n += 1
        return n

    def _choose(self, rewrites: int) -> nn.Module:
        """The edited copy if its own forward runs and matches the rewritten graph, else the GraphModule."""
        with torch.no_grad():
            ref = self.gm(*self.example_inputs)
            if rewrites == 0:
                try:
                    out = self.model(*self.example_inputs)
                    if _same(out, ref):
                        return self.model
                except Exception:  # noqa: BLE001 - the module's forward hard-codes a pruned size
                    pass
            else:
                try:
                    out = self.model(*self.example_inputs)
                    if _same(out, ref):
                        return self.model
                except Exception:  # noqa: BLE001
                    pass
        return self.gm


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _slice_param(root: nn.Module, target: str, dim: int, idx: list[int]) -> None:
    owner_name, _, attr = target.rpartition(".")
    try:
        owner = root.get_submodule(owner_name) if owner_name else root
    except AttributeError:
        return
    t = getattr(owner, attr, None)
    if t is None:
        return
    keep = [i for i in range(t.shape[dim]) if i not in set(idx)]
    new = torch.index_select(t.detach(), dim, torch.tensor(keep, dtype=torch.long)).clone()
    if isinstance(t, nn.Parameter):
        setattr(owner, attr, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        owner.register_buffer(attr, new) if attr in owner._buffers else setattr(owner, attr, new)


def _reshape_groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[tuple[int, int], tuple[int, int]]] | None:
    """Pair contiguous dim ranges of ``a`` and ``b`` with equal products (size-1 dims attach to a neighbour)."""
    groups = []
    i = j = 0
    while i < len(a) or j < len(b):
        i0, j0 = i, j
        if i < len(a) and j < len(b) and a[i] == b[j] and a[i] != 1:
            groups.append(((i, i + 1), (j, j + 1)))
            i, j = i + 1, j + 1
            continue
        if i < len(a) and a[i] == 1 and (j >= len(b) or b[j] != 1):
            groups.append(((i, i + 1), (j, j)))
            i += 1
            continue
        if j < len(b) and b[j] == 1 and (i >= len(a) or a[i] != 1):
            groups.append(((i, i), (j, j + 1)))
            j += 1
            continue
        if i < len(a) and j < len(b) and a[i] == 1 and b[j] == 1:
            groups.append(((i, i + 1), (j, j + 1)))
            i, j = i + 1, j + 1
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


__all__ = ["DependencyGraph", "Group", "Unit", "trace", "BLOCK"]
