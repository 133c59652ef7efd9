"""The torch.export front end of the dependency graph: one rule per ATen op, in a registry open to users.

A rule is ``rule(rules: AtenRules, node, shapes) -> value`` registered with :func:`register_aten_rule` for
one or more op packets (``torch.ops.aten.conv2d``: every overload). Layers are recognised by op, not by module
class: ``conv*`` / ``linear`` / ``batch_norm`` / ``layer_norm`` / ``group_norm`` bind slices of the parameters
they read (:class:`~edgekit.prune.slots.ParamSlot`, named by their qualified name in the user's model, so
physical pruning edits the user's own parameters). Free parameters (class token, position embedding, layer
scale) get labels along their last non-trivial dim when an op other than a layer reads them.

Module constraints (:data:`MODULE_CONSTRAINTS`, keyed by module type, found by ``isinstance``) add couplings a
module's own ``forward`` needs beyond what the graph shows: ``nn.MultiheadAttention`` computes its inner width
as ``embed_dim`` and so can only lose whole heads together with the same number of embed channels.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from edgekit.registry import KeyedRegistry
from edgekit.prune.labels import LabelSpace, NodeRules
from edgekit.prune.slots import (
    Depthwise, Grouped, Independent, Labeled, ParamSlot, Same, Side, TypeRegistry, UnsupportedPattern, norm_dim,
)

aten = torch.ops.aten
AtenRule = Callable[["AtenRules", fx.Node, Any], Any]
ATEN_RULES: KeyedRegistry[AtenRule] = KeyedRegistry("ATen pruning rule")  # keyed by op packet name


def register_aten_rule(*ops: Any) -> Callable[[AtenRule], AtenRule]:
    """Register ``rule`` for ATen op packets (``torch.ops.aten.X``) or overloads (``torch.ops.aten.X.default``)."""

    def decorator(rule: AtenRule) -> AtenRule:
        for op in ops:
            ATEN_RULES.add(str(getattr(op, "overloadpacket", op)), rule, replace=True)
        return rule

    return decorator


def unregister_aten_rule(*ops: Any) -> None:
    for op in ops:
        key = str(getattr(op, "overloadpacket", op))
        if key in ATEN_RULES:
            ATEN_RULES.unregister(key)


class ParamRef(Labeled):
    """A parameter read by the graph (``get_attr``); labeled on first use by a non-layer op."""

    def __init__(self, shape: tuple[int, ...], param: str) -> None:
        super().__init__(shape, None)
        self.param = param


class AtenRules(NodeRules):
    """Translate the nodes of an exported (ATen) graph into label operations."""

    def __init__(self, space: LabelSpace, values: dict, prefix: str = "") -> None:
        super().__init__(space, values)
        self.prefix = prefix
        self.labeled_params: dict[str, Labeled] = {}
        self.layer_params: set[str] = set()
        self.norm_scales: set[str] = set()

    def user_name(self, target: str) -> str:
        return target[len(self.prefix):] if self.prefix and target.startswith(self.prefix) else target

    # ------------------------------------------------------------------------------------------ values
    def arg(self, a: Any) -> Any:
        v = self.values.get(a) if isinstance(a, fx.Node) else None
        if isinstance(v, ParamRef):
            return self._label_param(v)
        return v

    def _label_param(self, p: ParamRef) -> Labeled:
        if p.param in self.labeled_params:
            return self.labeled_params[p.param]
        shapes = tuple(p.shape)
        big = [d for d, s in enumerate(shapes) if s > 1]
        if p.param in self.layer_params or not big:
            out = Labeled(shapes)
            if p.param in self.layer_params:
                self.space.frozen_reasons.append(f"{p.param}: a layer's parameter is also read by another op")
        else:
            d = big[-1]
            ids = self.space.fresh(shapes[d], lambda i: [ParamSlot(p.param, d, Side.TENSOR, i)])
            f = ids.reshape([shapes[d] if k == d else 1 for k in range(len(shapes))])
            out = Labeled(shapes, f)
        self.labeled_params[p.param] = out
        return out

    def param(self, a: Any) -> str | None:
        """The qualified name of the parameter node ``a`` (None for no argument)."""
        if a is None:
            return None
        v = self.values.get(a) if isinstance(a, fx.Node) else None
        if not isinstance(v, ParamRef):
            raise UnsupportedPattern("a layer whose weight is computed, not a parameter")
        if v.param in self.labeled_params:
            raise UnsupportedPattern(f"{v.param}: a parameter read both as a layer weight and by another op")
        self.layer_params.add(v.param)
        return v.param

    def visit(self, node: fx.Node, shapes: Any) -> Any:
        if node.op == "placeholder":
            return self.space.plain(shapes)
        if node.op == "get_attr":
            if isinstance(shapes, tuple):
                return ParamRef(shapes, self.user_name(node.target))
            return None
        if node.op == "output":
            self.space.block_value(self.arg_tree(node.args[0]), "model output")
            return None
        if node.op == "call_module":  # export's input guards
            return None
        if node.op != "call_function":
            raise UnsupportedPattern(f"{node.op} {node.target}")
        packet = getattr(node.target, "overloadpacket", None)
        key = str(packet) if packet is not None else getattr(node.target, "__name__", str(node.target))
        rule = ATEN_RULES.lookup(key)
        if rule is None:
            if shapes is None or not _has_tensor(shapes):
                return None  # symbolic shape arithmetic, asserts
            raise UnsupportedPattern(f"no dependency rule for {key}")
        return rule(self, node, shapes)

    def a(self, node: fx.Node, i: int, name: str, default: Any = None) -> Any:
        """Argument ``i`` (or keyword ``name``) of ``node``."""
        return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _has_tensor(shapes: Any) -> bool:
    if isinstance(shapes, tuple) and all(isinstance(s, int) for s in shapes):
        return True
    return isinstance(shapes, (tuple, list)) and any(_has_tensor(s) for s in shapes)


# ---------------------------------------------------------------------------------------------- layers


def _param_slots(params: list[str | None], dim: int, side: Side) -> Callable[[int], list[ParamSlot]]:
    names = [p for p in params if p is not None]
    return lambda i: [ParamSlot(p, dim, side, i) for p in names]


def _conv(r: AtenRules, node: fx.Node, shapes: Any, groups_pos: int) -> Labeled:
    x = r.arg(node.args[0])
    w, b = r.param(node.args[1]), r.param(r.a(node, 2, "bias"))
    groups = int(r.a(node, groups_pos, "groups", 1))
    wshape = r.values[node.args[1]].shape
    cout, cin = wshape[0], wshape[1] * groups
    if groups == 1:
        coupling = Independent()
    elif groups == cin:
        coupling = Depthwise(cout // cin)
    else:
        coupling = Grouped(groups)
    if isinstance(coupling, Grouped):  # weight dim 1 holds the within-group positions only
        cin_g = cin // groups
        in_slots = lambda i: [ParamSlot(w, 1, Side.IN, i % cin_g)]  # noqa: E731
    elif isinstance(coupling, Depthwise):
        in_slots = lambda i: []  # noqa: E731 - the out-slots of a depthwise conv are its in-slots
    else:
        in_slots = _param_slots([w], 1, Side.IN)
    return r.space.layer(x, shapes, 1, 1, cin, cout, coupling, in_slots, _param_slots([w, b], 0, Side.OUT), node.name)


@register_aten_rule(aten.conv1d, aten.conv2d, aten.conv3d)
def conv_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Labeled:
    return _conv(r, node, shapes, 6)


@register_aten_rule(aten.convolution)
def convolution_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Labeled:
    if r.a(node, 6, "transposed", False):
        raise UnsupportedPattern("transposed convolution")
    return _conv(r, node, shapes, 8)


@register_aten_rule(aten.linear)
def linear_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Labeled:
    x = r.arg(node.args[0])
    w, b = r.param(node.args[1]), r.param(r.a(node, 2, "bias"))
    cout, cin = r.values[node.args[1]].shape
    return r.space.layer(x, shapes, -1, -1, cin, cout, Independent(), _param_slots([w], 1, Side.IN),
                         _param_slots([w, b], 0, Side.OUT), node.name)


def _norm(r: AtenRules, node: fx.Node, shapes: Any, params: list[Any], dim: int) -> Labeled:
    x = r.arg(node.args[0])
    names = [r.param(p) for p in params]
    if names[0] is not None:
        r.norm_scales.add(names[0])
    if not any(names):  # no affine parameters: channels pass through
        return Labeled(shapes, x.field) if isinstance(x, Labeled) else r.space.plain(shapes)
    c = x.shape[norm_dim(dim, len(x.shape))]
    return r.space.layer(x, shapes, dim, dim, c, c, Same(), lambda i: [], _param_slots(names, 0, Side.OUT), node.name)


@register_aten_rule(aten.batch_norm, aten._native_batch_norm_legit_no_training, aten.native_batch_norm)
def batch_norm_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    multi = isinstance(shapes, (list, tuple)) and shapes and isinstance(shapes[0], tuple)
    out = _norm(r, node, shapes[0] if multi else shapes, list(node.args[1:5]), 1)
    return (out, *(r.space.plain(s) for s in shapes[1:])) if multi else out


@register_aten_rule(aten.layer_norm)
def layer_norm_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Labeled:
    if len(node.args[1]) != 1:
        raise UnsupportedPattern("LayerNorm over several dimensions")
    return _norm(r, node, shapes, [r.a(node, 2, "weight"), r.a(node, 3, "bias")], -1)


@register_aten_rule(aten.group_norm)
def group_norm_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Labeled:
    x, groups = r.arg(node.args[0]), int(node.args[1])
    if isinstance(x, Labeled) and x.field is not None and x.field.shape[1] > 1:
        c = x.shape[1]
        f = x.field.reshape(x.field.shape[:1] + (groups, c // groups) + x.field.shape[2:])
        r.space.couple_along(f, 1)  # the same position is removed from every group: the groups stay equal
    return _norm(r, node, shapes, [r.a(node, 2, "weight"), r.a(node, 3, "bias")], 1)


# ---------------------------------------------------------------------------------------------- the rest

_ELEMENTWISE = [aten.add, aten.sub, aten.mul, aten.div, aten.rsub, aten.where, aten.maximum, aten.minimum,
                aten.masked_fill, aten.lerp, aten.add_, aten.mul_, aten.sub_, aten.div_, aten.addcmul]
_UNARY = [aten.relu, aten.relu_, aten.hardtanh, aten.hardtanh_, aten.gelu, aten.silu, aten.silu_, aten.sigmoid,
          aten.tanh, aten.hardswish, aten.hardswish_, aten.hardsigmoid, aten.dropout, aten.softmax, aten._softmax,
          aten.log_softmax, aten.clone, aten.contiguous, aten._to_copy, aten.to, aten.alias, aten.detach,
          aten.neg, aten.exp, aten.pow, aten.sqrt, aten.rsqrt, aten.erf, aten.clamp, aten.leaky_relu, aten.elu,
          aten.abs, aten.mish, aten.softplus, aten.type_as, aten.square, aten.sign, aten.log, aten.reciprocal,
          aten.feature_dropout, aten.lift_fresh_copy,
          # in-place and clamp forms (``nn.Dropout(inplace=True)`` before transformers' MobileNetV2 classifier
          # exports as dropout_; without a rule the last conv's 1280 channels were frozen)
          aten.dropout_, aten.feature_dropout_, aten.alpha_dropout, aten.alpha_dropout_, aten.feature_alpha_dropout,
          aten.feature_alpha_dropout_, aten.gelu_, aten.sigmoid_, aten.tanh_, aten.clamp_, aten.clamp_min,
          aten.clamp_max, aten.clip, aten.clip_, aten.leaky_relu_, aten.elu_, aten.relu6, aten.hardsigmoid_,
          aten.mish_, aten.neg_, aten.exp_]
_SPATIAL = [aten.avg_pool1d, aten.avg_pool2d, aten.max_pool1d, aten.max_pool2d, aten.adaptive_avg_pool1d,
            aten.adaptive_avg_pool2d, aten.upsample_nearest2d, aten.upsample_bilinear2d, aten.pad,
            aten.constant_pad_nd]
_RESHAPE = [aten.view, aten.reshape, aten._unsafe_view, aten.flatten, aten.unflatten, aten.squeeze,
            aten.unsqueeze]
_REDUCE = [aten.mean, aten.sum, aten.amax, aten.amin, aten.var, aten.std]
_NEW_TENSORS = [aten.zeros, aten.ones, aten.full, aten.arange, aten.empty, aten.scalar_tensor, aten.new_zeros,
                aten.new_ones, aten.new_full, aten.zeros_like, aten.ones_like, aten.full_like, aten.rand,
                aten.randn, aten.eye]


@register_aten_rule(*_ELEMENTWISE)
def elementwise_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    vals = [v for v in (r.arg(a) for a in list(node.args) + list(node.kwargs.values())) if isinstance(v, Labeled)]
    if not vals or not isinstance(shapes, tuple):
        return r.space.plain(shapes)
    return Labeled(shapes, r.space.merge(vals, shapes, f"{node.name}: element-wise"))


@register_aten_rule(*_UNARY)
def unary_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.same_shape(r.arg(node.args[0]), shapes)


@register_aten_rule(*_SPATIAL)
def spatial_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.spatial(r.arg(node.args[0]), shapes)


@register_aten_rule(aten.max_pool2d_with_indices, aten.adaptive_max_pool2d)
def spatial_pair_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    out = r.space.spatial(r.arg(node.args[0]), shapes[0])
    return (out, Labeled(shapes[1], out.field))


@register_aten_rule(aten.roll)
def roll_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    x = r.arg(node.args[0])
    dims = r.a(node, 2, "dims", [])
    if isinstance(x, Labeled) and any(norm_dim(int(d), len(x.shape)) in x.dims() for d in dims):
        raise UnsupportedPattern("roll along a labeled dimension")
    return r.space.same_shape(x, shapes)


@register_aten_rule(*_RESHAPE)
def reshape_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.reshape(r.arg(node.args[0]), shapes)


@register_aten_rule(aten.expand, aten.broadcast_to, aten.expand_as, aten.repeat)
def broadcast_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.broadcast(r.arg(node.args[0]), shapes)


@register_aten_rule(aten.permute)
def permute_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.permute(r.arg(node.args[0]), shapes, node.args[1])


@register_aten_rule(aten.transpose, aten.swapaxes)
def transpose_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.transpose(r.arg(node.args[0]), shapes, node.args[1], node.args[2])


@register_aten_rule(aten.t)
def t_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.permute(r.arg(node.args[0]), shapes, [1, 0])


@register_aten_rule(*_REDUCE)
def reduce_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    dims = r.a(node, 1, "dim")
    positional = node.args[2] if len(node.args) > 2 and isinstance(node.args[2], bool) else False
    return r.space.reduce(r.arg(node.args[0]), shapes, dims, bool(node.kwargs.get("keepdim", positional)))


@register_aten_rule(aten.max, aten.min)
def max_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    if isinstance(shapes, tuple) and all(isinstance(s, int) for s in shapes):
        return r.space.reduce(r.arg(node.args[0]), shapes, None, False)
    keep = bool(r.a(node, 2, "keepdim", False))
    return (r.space.reduce(r.arg(node.args[0]), shapes[0], node.args[1], keep), Labeled(shapes[1]))


@register_aten_rule(aten.cat, aten.concat)
def cat_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.cat([r.arg(a) for a in node.args[0]], shapes, int(r.a(node, 1, "dim", 0)), f"{node.name}: cat")


@register_aten_rule(aten.split, aten.split_with_sizes, aten.chunk, aten.unbind)
def split_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    packet = str(node.target.overloadpacket)
    unbind = packet.endswith("unbind")
    dim = int(r.a(node, 1 if unbind else 2, "dim", 0))
    equal = unbind or packet.endswith("chunk") or (not packet.endswith("with_sizes") and len({s[dim] for s in shapes}) == 1)
    return r.space.split(r.arg(node.args[0]), shapes, dim, equal, squeeze=unbind)


@register_aten_rule(aten.select)
def select_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.select(r.arg(node.args[0]), shapes, int(node.args[1]), int(node.args[2]))


@register_aten_rule(aten.slice)
def slice_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.slice(r.arg(node.args[0]), shapes, int(r.a(node, 1, "dim", 0)))


@register_aten_rule(aten.index)
def index_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    """``table[idx]`` along dim 0 (relative position bias): the other dims keep their labels."""
    x, indices = r.arg(node.args[0]), node.args[1]
    if not isinstance(x, Labeled) or x.field is None:
        return r.space.plain(shapes)
    if len(indices) != 1 or indices[0] is None or 0 in x.dims():
        raise UnsupportedPattern("advanced indexing of a labeled dimension")
    lead = len(shapes) - (len(x.shape) - 1)
    return Labeled(shapes, x.field.reshape((1,) * lead + x.field.shape[1:]))


@register_aten_rule(aten.embedding)
def embedding_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    w = r.arg(node.args[0])
    if not isinstance(w, Labeled) or w.field is None or w.field.shape[0] > 1:
        return r.space.plain(shapes)
    return Labeled(shapes, w.field.reshape((1,) * (len(shapes) - 1) + (w.field.shape[-1],)))


@register_aten_rule(aten.matmul, aten.bmm, aten.mm)
def matmul_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.matmul(r.arg(node.args[0]), r.arg(node.args[1]), shapes, f"{node.name}: matmul")


@register_aten_rule(aten.scaled_dot_product_attention)
def sdpa_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    """softmax(q k^T * scale + mask) v; the default scale reads head_dim, so head_dim is never narrowed."""
    sp = r.space
    q, k, v = (r.arg(a) for a in node.args[:3])
    if not all(isinstance(t, Labeled) for t in (q, k, v)):
        raise UnsupportedPattern("attention on non-tensors")
    if r.a(node, 6, "scale") is None:
        for t in (q, k):
            if t.field is not None and t.field.shape[-1] > 1:
                sp.couple_along(t.field, t.field.ndim - 1)
    kt = sp.transpose(k, tuple(k.shape[:-2]) + (k.shape[-1], k.shape[-2]), -2, -1)
    scores_shape = tuple(np.broadcast_shapes(q.shape[:-2], k.shape[:-2])) + (q.shape[-2], k.shape[-2])
    scores = sp.matmul(q, kt, scores_shape, f"{node.name}: q k^T")
    mask = r.arg(r.a(node, 3, "attn_mask"))
    if isinstance(mask, Labeled):
        scores = Labeled(scores_shape, sp.merge([scores, mask], scores_shape, f"{node.name}: mask"))
    return sp.matmul(scores, v, shapes, f"{node.name}: attention v")


@register_aten_rule(*_NEW_TENSORS)
def new_tensor_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    return r.space.plain(shapes)


@register_aten_rule("getitem")
def getitem_rule(r: AtenRules, node: fx.Node, shapes: Any) -> Any:
    src = r.values.get(node.args[0])
    if isinstance(src, (tuple, list)):
        return src[node.args[1]]
    raise UnsupportedPattern("getitem on a tensor")


# ---------------------------------------------------------------------------------------------- constraints

# A constraint may return ``(label id, reason)``: the reason is reported when that label ends up frozen.
ModuleConstraint = Callable[[LabelSpace, str, nn.Module, dict], "tuple[int, str] | None"]
MODULE_CONSTRAINTS: TypeRegistry[ModuleConstraint] = TypeRegistry()
register_module_constraint = MODULE_CONSTRAINTS.register


def apply_module_constraints(space: LabelSpace, model: nn.Module) -> list[tuple[int, str]]:
    """Apply every registered constraint; returns the ``(label, reason)`` pairs to report if frozen."""
    watch = []
    ids: dict[tuple, int] = {}
    for i, slots in space.bindings.items():
        for s in slots:
            if isinstance(s, ParamSlot):
                ids[(s.param, s.dim, s.index)] = i
    for name, m in model.named_modules():
        constraint = MODULE_CONSTRAINTS.find(type(m))
        found = constraint(space, name, m, ids) if constraint is not None else None
        if found is not None:
            watch.append(found)
    return watch


@register_module_constraint(nn.MultiheadAttention)
def mha_constraint(space: LabelSpace, name: str, m: nn.MultiheadAttention, ids: dict) -> tuple[int, str] | None:
    """Head h is removed together with embed channels h*head_dim..: its forward needs inner width == embed_dim."""
    p = f"{name}." if name else ""
    e = m.embed_dim
    needed = [(f"{p}in_proj_weight", 1, 0), (f"{p}out_proj.weight", 0, 0), (f"{p}in_proj_weight", 0, 0)]
    if not m._qkv_same_embed_dim or any(k not in ids for k in needed):
        for k, i in ids.items():
            if k[0].startswith(p):
                space.uf.union(i, 0)
        space.frozen_reasons.append(f"{name}: nn.MultiheadAttention with separate k/v widths or not seen in the graph")
        return None
    for c in range(e):
        group = [ids.get((f"{p}in_proj_weight", 1, c)), ids.get((f"{p}out_proj.weight", 0, c)),
                 ids.get((f"{p}out_proj.weight", 1, c))] + [ids.get((f"{p}in_proj_weight", 0, s * e + c)) for s in range(3)]
        group = [g for g in group if g is not None]
        for g in group[1:]:
            space.uf.union(group[0], g)
    return (ids[needed[0]],
            f"{name}: nn.MultiheadAttention heads not pruned: its forward needs num_heads * head_dim == embed_dim, so "
            "a head goes only with embed channels, and the embed width here cannot shrink (a residual width "
            "reaching a frozen or ignored layer, or the output)")


__all__ = ["ATEN_RULES", "AtenRules", "register_aten_rule", "unregister_aten_rule", "ParamRef",
           "MODULE_CONSTRAINTS", "register_module_constraint", "apply_module_constraints"]
