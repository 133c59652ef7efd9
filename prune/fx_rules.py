"""The torch.fx front end of the dependency graph (the fast path): modules with a pruning handler are leaves,
everything else is a torch function, a tensor method or a parameter-free module translated into
:class:`~edgekit.prune.labels.LabelSpace` operations. Models that fx cannot trace go through
:mod:`edgekit.prune.aten_rules` instead.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from edgekit.prune.handlers import Handler, find_handler
from edgekit.prune.labels import LabelSpace, NodeRules, along
from edgekit.prune.slots import LayerSlot, Labeled, ParamSlot, Side, UnsupportedPattern, norm_dim

_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d,
)
_SPATIAL_FUNCS = {
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, F.pad,
    F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.upsample,
}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
           torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
           torch.lerp, torch.addcmul}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "where",
                   "masked_fill", "lerp"}
_UNARY = {F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu,
          F.mish, F.softplus, F.dropout, F.softmax, F.log_softmax, torch.relu, torch.sigmoid, torch.tanh,
          torch.exp, torch.abs, torch.sqrt, torch.rsqrt, torch.softmax, torch.clamp, torch.erf, operator.neg,
          operator.pow, torch.pow, F.normalize, F.hardtanh, torch.square}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "tanh", "exp", "abs", "sqrt", "rsqrt", "softmax", "clamp",
                  "clamp_", "contiguous", "float", "half", "double", "to", "type_as", "clone", "detach", "pow",
                  "neg", "erf", "square", "sign", "log", "reciprocal", "__neg__"}
_REDUCE = {torch.mean, torch.sum, torch.amax, torch.amin, torch.max, torch.min, torch.var, torch.std}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "var", "std"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_RESHAPE_FUNCS = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten}
_BROADCAST_METHODS = {"expand", "expand_as", "repeat", "broadcast_to"}
_PERMUTE_METHODS = {"permute", "transpose", "t", "swapaxes"}
_SPLIT_METHODS = {"split": False, "chunk": True, "unbind": True}
_SPLIT_FUNCS = {torch.split: False, torch.chunk: True, torch.unbind: True}
_MATMUL = {operator.matmul, torch.matmul, torch.bmm}
_MATMUL_METHODS = {"matmul", "bmm", "__matmul__"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
SIZE_ARG_TARGETS = {"view", "reshape", "expand", torch.reshape}  # targets whose size arguments may be rewritten
SPLIT_TARGETS = {"split", torch.split}


class FxRules(NodeRules):
    """Translate the nodes of a handler-leaf fx graph into label operations."""

    def __init__(self, space: LabelSpace, modules: dict[str, nn.Module], values: dict) -> None:
        super().__init__(space, values)
        self.modules = modules

    def visit(self, node: fx.Node, shapes: Any) -> Any:
        if node.op == "placeholder":
            return self.space.plain(shapes)
        if node.op == "output":
            self.space.block_value(self.arg_tree(node.args[0]), "model output")
            return None
        if node.op == "get_attr":
            return self._param(node.target, shapes)
        if node.op == "call_module":
            return self._call_module(node, self.modules[node.target], shapes)
        return self._call(node, node.target, node.op == "call_method", shapes)

    def _param(self, target: str, shapes: Any) -> Any:
        if not isinstance(shapes, tuple) or not shapes:
            return self.space.plain(shapes)
        big = [d for d, s in enumerate(shapes) if s > 1]
        if not big:
            return Labeled(shapes)
        d = big[-1]
        ids = self.space.fresh(shapes[d], lambda i: [ParamSlot(target, d, Side.TENSOR, i)])
        return Labeled(shapes, along(ids, d, len(shapes)))

    # ------------------------------------------------------------------------------------------ modules
    def _call_module(self, node: fx.Node, m: nn.Module, shapes: Any) -> Any:
        handler = find_handler(type(m))
        x = self.arg(node.args[0]) if node.args else None
        if handler is not None:
            return self._handled(node.target, m, handler, x, shapes)
        if isinstance(m, nn.Flatten):
            return self.space.reshape(x, shapes)
        if isinstance(m, _SPATIAL_MODULES):
            return self.space.spatial(x, shapes)
        has_params = any(True for _ in m.parameters())
        if not has_params and isinstance(x, Labeled) and isinstance(shapes, tuple) and tuple(x.shape) == shapes:
            return Labeled(shapes, x.field)  # activations, dropout, identity, softmax
        for a in node.all_input_nodes:
            self.space.block_value(self.values.get(a), f"{node.target}: no pruning handler for {type(m).__name__}")
        return self.space.plain(shapes)

    def _handled(self, name: str, m: nn.Module, h: Handler, x: Any, shapes: Any) -> Any:
        if not isinstance(shapes, tuple):
            raise UnsupportedPattern(f"{name}: unexpected output")
        n_int = h.internal_units(m)
        if n_int:
            self.space.fresh(n_int, lambda i: [LayerSlot(name, Side.INTERNAL, i)])
        return self.space.layer(
            x, shapes, h.in_dim(m), h.out_dim(m), h.channels(m, Side.IN), h.channels(m, Side.OUT), h.coupling(m),
            lambda i: [LayerSlot(name, Side.IN, i)], lambda i: [LayerSlot(name, Side.OUT, i)], name)

    # ------------------------------------------------------------------------------------------ functions
    def _call(self, node: fx.Node, t: Any, is_method: bool, shapes: Any) -> Any:
        sp, args, kw = self.space, node.args, node.kwargs
        if t in ("size", "dim", "numel") or t is getattr:
            return None
        if t is operator.getitem:
            return self._getitem(node, shapes)
        if (t in _BINARY_METHODS) if is_method else (t in _BINARY):
            vals = [v for v in (self.arg(a) for a in list(args) + list(kw.values())) if isinstance(v, Labeled)]
            if not vals or not isinstance(shapes, tuple):
                return sp.plain(shapes)
            return Labeled(shapes, sp.merge(vals, shapes, f"{node.name}: element-wise"))
        if (t in _UNARY_METHODS) if is_method else (t in _UNARY):
            return sp.same_shape(self.arg(args[0]), shapes)
        if not is_method and t in _SPATIAL_FUNCS:
            return sp.spatial(self.arg(args[0]), shapes)
        if (is_method and t in _BROADCAST_METHODS) or t is torch.broadcast_to:
            return sp.broadcast(self.arg(args[0]), shapes)
        if (t in _RESHAPE_METHODS) if is_method else (t in _RESHAPE_FUNCS):
            return sp.reshape(self.arg(args[0]), shapes)
        if (is_method and t in _PERMUTE_METHODS) or t in (torch.permute, torch.transpose):
            return self._permute(node, shapes)
        if (t in _REDUCE_METHODS) if is_method else (t in _REDUCE):
            return self._reduce(node, shapes)
        if t in _CAT:
            dim = args[1] if len(args) > 1 else kw.get("dim", 0)
            return sp.cat([self.arg(a) for a in args[0]], shapes, dim, f"{node.name}: cat")
        split = _SPLIT_METHODS.get(t) if is_method else _SPLIT_FUNCS.get(t)
        if split is not None:
            unbind = t in ("unbind", torch.unbind)
            pos = 1 if unbind else 2
            dim = args[pos] if len(args) > pos else kw.get("dim", 0)
            return sp.split(self.arg(args[0]), shapes, dim, split, squeeze=unbind)
        if (t in _MATMUL_METHODS) if is_method else (t in _MATMUL):
            return sp.matmul(self.arg(args[0]), self.arg(args[1]), shapes, f"{node.name}: matmul")
        if t is F.layer_norm:
            vals = [self.arg(a) for a in (args[0], *args[2:4], kw.get("weight"), kw.get("bias"))]
            return Labeled(shapes, sp.merge([v for v in vals if isinstance(v, Labeled)], shapes, f"{node.name}: layer_norm"))
        raise UnsupportedPattern(f"no dependency rule for {t if isinstance(t, str) else getattr(t, '__name__', t)}")

    def _getitem(self, node: fx.Node, shapes: Any) -> Any:
        src, idx = node.args
        v = self.arg(src)
        if isinstance(v, (tuple, list)):
            return v[idx] if isinstance(idx, int) else self.space.plain(shapes)
        if not isinstance(v, Labeled):
            return self.space.plain(shapes) if isinstance(shapes, tuple) else None
        if v.field is None:
            return self.space.plain(shapes)
        idx = idx if isinstance(idx, tuple) else (idx,)
        f = v.field
        if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in idx):
            raise UnsupportedPattern("advanced indexing")
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        full_idx: list[Any] = []
        for i in idx:
            full_idx += [slice(None)] * (f.ndim - n_real) if i is Ellipsis else [i]
        d = 0
        np_idx: list[Any] = []
        for i in full_idx:
            if i is None:
                np_idx.append(None)
                continue
            full = isinstance(i, slice) and i == slice(None)
            if not full and f.shape[d] > 1:
                if self.space.varies(f, d):
                    raise UnsupportedPattern("partial indexing of a labeled dimension")
                np_idx.append(slice(0, 1) if isinstance(i, slice) else 0)
            else:
                np_idx.append(slice(None) if (full or f.shape[d] > 1 or not isinstance(i, int)) else 0)
            d += 1
        out = f[tuple(np_idx)]
        if isinstance(shapes, tuple) and out.ndim == len(shapes):
            return Labeled(shapes, out)
        raise UnsupportedPattern("indexing result does not match the traced shape")

    def _permute(self, node: fx.Node, shapes: Any) -> Any:
        v, t, rest = self.arg(node.args[0]), node.target, list(node.args[1:])
        if t in ("permute", torch.permute):
            order = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            return self.space.permute(v, shapes, order)
        if t == "t":
            return self.space.permute(v, shapes, [1, 0])
        return self.space.transpose(v, shapes, rest[0], rest[1])

    def _reduce(self, node: fx.Node, shapes: Any) -> Any:
        args, kw = node.args, node.kwargs
        dims = args[1] if len(args) > 1 else kw.get("dim")
        keep = bool(kw.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
        if isinstance(shapes, (tuple, list)) and shapes and isinstance(shapes[0], tuple):  # max(dim) -> (values, idx)
            return (self.space.reduce(self.arg(args[0]), shapes[0], dims, keep), Labeled(shapes[1]))
        return self.space.reduce(self.arg(args[0]), shapes, dims, keep)


def kept_count(space: LabelSpace, f: np.ndarray, dim: int, removed: np.ndarray) -> int:
    """How many positions along ``dim`` of a label field survive the removal of the ``removed`` roots."""
    mask = ~np.isin(space.uf.roots(f), removed)
    dim = norm_dim(dim, f.ndim)
    return int(np.any(mask, axis=tuple(x for x in range(mask.ndim) if x != dim)).sum())


__all__ = ["FxRules", "SIZE_ARG_TARGETS", "SPLIT_TARGETS", "kept_count"]
