"""The I-ViT converter's handlers ("I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", Li & Gu, ICCV 2023): what replaces each float op -- by module type, by function or by method
name (:mod:`.convert` holds the registries and the driver; :mod:`.aten` adds the ATen ops of a graph captured
with ``torch.export``). Shape ops are kept and carry their input's scale; multiplying by a constant only
changes a scale.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgekit.errors import UserInputError
from edgekit.ops.transformer import MatMul, Softmax
from edgekit.quant.ivit import modules as M
from edgekit.quant.ivit.convert import (ACT_BITS, WIDE_BITS, Converter, Q, V, register_function, register_method,
                                        register_module)

def _passthrough(cv: Converter, node: fx.Node, _: Any) -> Q:
    return cv.need_q(node.args[0], node, "pass-through op")


register_module(nn.Identity, nn.Dropout)(_passthrough)


@register_module(nn.Linear)
def _linear(cv: Converter, node: fx.Node, mod: nn.Linear) -> Q:
    x = cv.to_int8(node.args[0], node, "Linear")
    bits = cv.bits(node)
    return cv.emit_q(node.target, M.IntLinear(mod, x.scale, cv.out_scale(node, bits), bits), (x.node,))


@register_module(nn.Conv2d)
def _conv(cv: Converter, node: fx.Node, mod: nn.Conv2d) -> Q:
    x = cv.to_int8(node.args[0], node, "Conv2d")
    bits = cv.bits(node)
    try:
        int_mod = M.IntConv2d(mod, x.scale, cv.out_scale(node, bits), bits)
    except ValueError as exc:
        raise UserInputError(f"I-ViT: Conv2d {node.target}: {exc}") from None
    return cv.emit_q(node.target, int_mod, (x.node,))


@register_module(nn.LayerNorm)
def _layernorm(cv: Converter, node: fx.Node, mod: nn.LayerNorm) -> Q:
    x = cv.need_q(node.args[0], node, "LayerNorm")
    bits = cv.bits(node)
    try:
        int_mod = M.IntLayerNorm(mod, x.scale, cv.out_scale(node, bits), bits)
    except ValueError as exc:
        raise UserInputError(f"I-ViT: LayerNorm {node.target}: {exc}") from None
    return cv.emit_q(node.target, int_mod, (x.node,))


def _gelu(cv: Converter, node: fx.Node, mod: Any) -> Q:
    x = cv.to_int8(node.args[0], node, "GELU")
    bits = cv.bits(node)
    return cv.emit_q(str(node.target) if node.op == "call_module" else node.name,
                     M.IntGELU(x.scale, cv.out_scale(node, bits), bits), (x.node,))


register_module(nn.GELU)(_gelu)
register_function(F.gelu)(_gelu)


def _relu(cv: Converter, node: fx.Node, mod: Any) -> Q:
    x = cv.need_q(node.args[0], node, "ReLU")
    name = str(node.target) if node.op == "call_module" else node.name
    return cv.emit_q(name, M.IntReLU(x.scale, x.lo, x.hi), (x.node,))


register_module(nn.ReLU)(_relu)
register_function(F.relu, torch.relu)(_relu)
register_method("relu")(_relu)


def _softmax_dim(node: fx.Node, mod: Any) -> int:
    if mod is not None:
        return mod.dim
    if "dim" in node.kwargs:
        return node.kwargs["dim"]
    return node.args[1] if len(node.args) > 1 else -1


def _softmax(cv: Converter, node: fx.Node, mod: Any) -> Q:
    x = cv.need_q(node.args[0], node, "Softmax")
    ndim = cv.example[node.name].dim()
    dim = _softmax_dim(node, mod if node.op == "call_module" else None)
    if dim not in (-1, ndim - 1):
        raise UserInputError(f"I-ViT: softmax at {node.name} over dim {dim}; Shiftmax supports the last dim only")
    name = str(node.target) if node.op == "call_module" else node.name
    return cv.emit_q(name, M.IntSoftmax(x.scale, ACT_BITS), (x.node,))


register_module(Softmax, nn.Softmax)(_softmax)
SOFTMAX_TARGETS: set[Any] = {F.softmax, torch.softmax, "softmax"}  # functions and method names (wide inputs)
register_function(F.softmax, torch.softmax)(_softmax)
register_method("softmax")(_softmax)


def _matmul(cv: Converter, node: fx.Node, mod: Any) -> Q:
    a = cv.to_int8(node.args[0], node, "MatMul")
    b = cv.to_int8(node.args[1], node, "MatMul")
    bits = cv.bits(node)
    name = str(node.target) if node.op == "call_module" else node.name
    # never a grid finer than the product's own (a 16-bit softmax input often calibrates finer): the output is
    # then the accumulator itself, clamped, and graphs write that requantization as one Clip
    s_out = max(cv.out_scale(node, bits), a.scale * b.scale)
    return cv.emit_q(name, M.IntMatMul(a.scale, b.scale, s_out, bits), (a.node, b.node))


register_module(MatMul)(_matmul)
register_function(operator.matmul, torch.matmul, torch.bmm)(_matmul)
register_method("matmul", "bmm")(_matmul)


RESIDUAL_HEADROOM = 2.0  # a sum that cannot keep an input's grid gets one bit above its calibrated range


def _add(cv: Converter, node: fx.Node, _: Any) -> Q:
    """A 16-bit sum keeps the grid of a wide (residual-stream) input whose range covers the sum's calibrated
    range with at most one bit to spare: that branch is then added as it is (no rescale; graphs skip its
    multiply and division). Otherwise the sum gets a grid with one bit of headroom, so that the following
    residual adds can keep it."""
    a = cv.need_q(node.args[0], node, "add")
    b = cv.need_q(node.args[1], node, "add")
    s_calib = cv.out_scale(node, WIDE_BITS)
    keep = [q for q in (a, b) if q.hi - q.lo > 255 and s_calib <= q.scale <= s_calib * RESIDUAL_HEADROOM]
    s_out = max(keep, key=lambda q: q.hi - q.lo).scale if keep else s_calib * RESIDUAL_HEADROOM
    return cv.emit_q(node.name, M.IntAdd(a.scale, b.scale, s_out, WIDE_BITS), (a.node, b.node))


register_function(operator.add, operator.iadd, torch.add)(_add)
register_method("add", "__add__")(_add)


def _scale_by(cv: Converter, node: fx.Node, _: Any) -> Q:
    a, b = node.args[0], node.args[1]
    qa, qb = cv.arg(a), cv.arg(b)
    # a shape-derived constant (e.g. math.sqrt(head_dim) traced from shapes) takes its calibrated value
    qa = cv.example[a.name] if isinstance(qa, V) and isinstance(a, fx.Node) else qa
    qb = cv.example[b.name] if isinstance(qb, V) and isinstance(b, fx.Node) else qb
    if isinstance(qb, Q) and isinstance(qa, (int, float)) or (isinstance(a, fx.Node) and a.op == "get_attr"):
        (qa, qb), (a, b) = (qb, qa), (b, a)
    if isinstance(qa, Q) and node.target in MUL_TARGETS and isinstance(b, fx.Node) and b.op == "get_attr":
        return _layer_scale(cv, node, qa, cv.example[b.name])
    if not isinstance(qa, Q) or not isinstance(qb, (int, float)) or qb <= 0:
        raise UserInputError(
            f"I-ViT: {node.format_node()} -- only multiplying / dividing an activation by a positive constant is "
            "supported (it folds into the scale)"
        )
    c = float(qb) if node.target in MUL_TARGETS else 1.0 / float(qb)
    return Q(qa.node, qa.scale * c, qa.lo, qa.hi)


def _layer_scale(cv: Converter, node: fx.Node, x: Q, gain: Any) -> Q:
    """An activation times a constant: a positive scalar folds into the scale; a per-channel vector (layer
    scale) becomes a per-channel dyadic requantization."""
    gain = gain.detach() if isinstance(gain, torch.Tensor) else torch.as_tensor(gain)
    if gain.numel() == 1 and float(gain) > 0:
        return Q(x.node, x.scale * float(gain), x.lo, x.hi)
    if gain.dim() == 0 or any(d != 1 for d in gain.shape[:-1]):
        raise UserInputError(f"I-ViT: {node.format_node()} -- a constant factor must be a scalar or one value "
                             f"per channel of the last axis, got shape {tuple(gain.shape)}")
    bits = cv.bits(node)
    return cv.emit_q(f"{node.name}_scale", M.IntRequant(x.scale, cv.out_scale(node, bits), bits, gain), (x.node,))


MUL_TARGETS: set[Any] = {operator.mul, torch.mul, "mul"}
SCALE_TARGETS: set[Any] = MUL_TARGETS | {operator.truediv, torch.div, "div"}  # fold into the scale
register_function(operator.mul, torch.mul, operator.truediv, torch.div)(_scale_by)
register_method("mul", "div")(_scale_by)


def _mean(cv: Converter, node: fx.Node, mod: Any) -> Q:
    x = cv.need_q(node.args[0], node, "mean")
    shape = cv.example[node.args[0].name].shape
    if node.op == "call_module":  # AdaptiveAvgPool2d(1)
        if mod.output_size not in (1, (1, 1)):
            raise UserInputError(f"I-ViT: {node.target}: only AdaptiveAvgPool2d(1) is supported")
        dims, keep = (2, 3), True
    else:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        dims = tuple(range(len(shape))) if dims is None else ((dims,) if isinstance(dims, int) else tuple(dims))
    dims = tuple(d % len(shape) for d in dims)
    count = 1
    for d in dims:
        count *= shape[d]
    bits = cv.bits(node)
    name = str(node.target) if node.op == "call_module" else node.name
    return cv.emit_q(name, M.IntMean(dims, keep, count, x.scale, cv.out_scale(node, bits), bits), (x.node,))


register_module(nn.AdaptiveAvgPool2d)(_mean)
register_function(torch.mean)(_mean)
register_method("mean")(_mean)


def _cat(cv: Converter, node: fx.Node, _: Any) -> Q:
    items = [cv.need_q(a, node, "cat") for a in node.args[0]]
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    bits = max(WIDE_BITS if (q.hi > 255 or q.lo < -128) else ACT_BITS for q in items)
    bits = max(bits, cv.bits(node))
    scale = cv.out_scale(node, bits)
    same = all(abs(q.scale - items[0].scale) <= 1e-12 * q.scale for q in items)
    if not same:
        items = [cv.requant_to(q, scale, bits, f"{node.name}_in{i}") for i, q in enumerate(items)]
    new = cv.graph.call_function(torch.cat, ([q.node for q in items],), {"dim": dim})
    return Q(new, items[0].scale, min(q.lo for q in items), max(q.hi for q in items))


register_function(torch.cat, torch.concat)(_cat)

SHAPE_FUNCTIONS: tuple[Any, ...] = (torch.reshape, torch.flatten, torch.permute, torch.transpose, torch.unbind, torch.chunk,
                   torch.split, torch.squeeze, torch.unsqueeze, operator.getitem)
SHAPE_METHODS = ("reshape", "view", "permute", "transpose", "flatten", "contiguous", "expand", "unsqueeze",
                 "squeeze", "unbind", "chunk", "split", "repeat", "clone", "t", "unflatten", "expand_as")


def _shape_op(cv: Converter, node: fx.Node, _: Any) -> Any:
    first = cv.arg(node.args[0])
    if not isinstance(first, Q):
        return V(cv.copy(node))  # shape arithmetic, e.g. x.shape[0]
    return Q(cv.copy(node), first.scale, first.lo, first.hi)


register_function(*SHAPE_FUNCTIONS)(_shape_op)
register_method(*SHAPE_METHODS)(_shape_op)


@register_method("size", "dim")
def _value(cv: Converter, node: fx.Node, _: Any) -> V:
    return V(cv.copy(node))


register_function(getattr, operator.floordiv, operator.sub, len)(_value)
