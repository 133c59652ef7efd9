"""I-ViT conversion of models that ``torch.fx`` cannot trace ("I-ViT: Integer-only Quantization for Efficient
Vision Transformer Inference", Li & Gu, ICCV 2023): third-party ViTs (``nn.MultiheadAttention``,
``F.scaled_dot_product_attention``, ``transformers`` classes with control flow on shapes and dict outputs).

The graph is captured with ``torch.export`` (:func:`edgekit.capture.capture`, which also turns ``linear`` /
``conv2d`` calls with parameter weights into ``nn.Linear`` / ``nn.Conv2d`` modules), then lifted from ATen
to the torch-level ops the converter's handlers know, found by op: ``layer_norm`` with parameter weights
becomes an ``nn.LayerNorm``; ``scaled_dot_product_attention`` is written out as ``q @ k^T * scale``,
softmax, ``@ v`` (so each product and the softmax input get their own calibrated range); ``gelu``,
``softmax``, ``matmul``, ``add``, ``mul``, ``mean``, ``cat`` and the shape ops map to their torch functions
or tensor methods; ``dropout`` / ``clone`` / ``alias`` (identity at inference) are dropped. An op outside these
tables is left as it is and the converter names it (register a handler for exotic ops).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgekit.errors import UserInputError

aten = torch.ops.aten

# ATen op -> (node kind, torch-level target, argument rewrite (args, kwargs, node) -> (args, kwargs))
Lift = tuple[str, Any, Callable[[tuple, dict, fx.Node], tuple[tuple, dict]]]


def _same(args: tuple, kwargs: dict, node: fx.Node) -> tuple[tuple, dict]:
    return args, kwargs


def _first(n: int) -> Callable[[tuple, dict, fx.Node], tuple[tuple, dict]]:
    return lambda a, k, node: (a[:n], {})


def _index(args: tuple, node: fx.Node, select: bool) -> tuple[tuple, dict]:
    """``aten.select`` / ``aten.slice`` as ``x[:, ..., item]``."""
    x, dim, *rest = args
    if dim < 0:
        val = x.meta.get("val") if isinstance(x, fx.Node) else None
        if val is None:
            raise UserInputError(f"I-ViT: {node.name}: indexing a negative dim of a tensor of unknown rank")
        dim += val.dim()
    if select:
        item: Any = rest[0]
    else:
        start, end, step = (list(rest) + [None, None, 1])[:3]
        item = slice(start, end, step)
    return (x, (slice(None),) * dim + (item,)), {}


LIFTS: dict[Any, Lift] = {
    aten.view.default: ("call_method", "reshape", _same),
    aten.reshape.default: ("call_method", "reshape", _same),
    aten._unsafe_view.default: ("call_method", "reshape", _same),
    aten.permute.default: ("call_method", "permute", _same),
    aten.transpose.int: ("call_method", "transpose", _same),
    aten.t.default: ("call_method", "t", _same),
    aten.expand.default: ("call_method", "expand", _first(2)),
    aten.unsqueeze.default: ("call_method", "unsqueeze", _same),
    aten.squeeze.dim: ("call_method", "squeeze", _same),
    aten.flatten.using_ints: ("call_method", "flatten", _same),
    aten.unflatten.int: ("call_method", "unflatten", _same),
    aten.unbind.int: ("call_method", "unbind", _same),
    aten.split.Tensor: ("call_method", "split", _same),
    aten.split_with_sizes.default: ("call_method", "split", _same),
    aten.chunk.default: ("call_method", "chunk", _same),
    aten.sym_size.int: ("call_method", "size", _same),
    aten.select.int: ("call_function", operator.getitem, lambda a, k, n: _index(a, n, True)),
    aten.slice.Tensor: ("call_function", operator.getitem, lambda a, k, n: _index(a, n, False)),
    aten.cat.default: ("call_function", torch.cat, _same),
    aten.gelu.default: ("call_function", F.gelu, _same),
    aten.softmax.int: ("call_function", torch.softmax, _first(2)),
    aten._softmax.default: ("call_function", torch.softmax, _first(2)),
    aten.matmul.default: ("call_function", torch.matmul, _same),
    aten.bmm.default: ("call_function", torch.matmul, _same),
    aten.mul.Tensor: ("call_function", operator.mul, _same),
    aten.mul.Scalar: ("call_function", operator.mul, _same),
    aten.div.Tensor: ("call_function", operator.truediv, _same),
    aten.div.Scalar: ("call_function", operator.truediv, _same),
    aten.mean.dim: ("call_function", torch.mean, _same),
    aten.relu.default: ("call_function", torch.relu, _same),
    aten.add.Tensor: ("call_function", operator.add, _first(2)),  # only with alpha 1 (checked in _lift)
}
IDENTITIES = {aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
              aten.detach.default, aten.lift_fresh_copy.default}
ASSERTS = {p for p in (getattr(aten, "_assert_tensor_metadata", None), getattr(aten, "_assert_scalar", None)) if p is not None}


def capture_graph(model: nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, int | None]:
    """The model's graph captured with ``torch.export`` and lifted to torch-level ops; returns it and the
    batch size it is fixed to (None: any)."""
    from edgekit.capture import capture, layers_as_modules

    cap = capture(model, (example,), what="I-ViT")
    layers_as_modules(cap)
    gm = cap.graph_module
    _layer_norms_as_modules(gm)
    _write_out_sdpa(gm)
    _lift(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm, cap.batch_size


def _attr(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


def _layer_norms_as_modules(gm: fx.GraphModule) -> None:
    for i, node in enumerate(list(gm.graph.nodes)):
        if node.op != "call_function" or node.target != aten.layer_norm.default:
            continue
        x, shape, w, b, *rest = list(node.args) + [None] * (5 - len(node.args))
        weight, bias = _attr(gm, w), _attr(gm, b)
        if (w is not None and weight is None) or (b is not None and bias is None):
            continue  # weights computed in the graph: left for the converter to name
        ln = nn.LayerNorm(list(shape), eps=float(rest[0]) if rest and rest[0] is not None else 1e-5,
                          elementwise_affine=weight is not None, bias=bias is not None)
        if weight is not None:
            ln.weight = nn.Parameter(weight.detach().clone())
        if bias is not None:
            ln.bias = nn.Parameter(bias.detach().clone())
        name = f"ivit_layernorm{i}" if w is None else str(w.target).rsplit(".", 1)[0].replace(".", "_") + "_ln"
        gm.add_submodule(name, ln)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (x,))
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)


def _write_out_sdpa(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.scaled_dot_product_attention.default:
            continue
        q, k, v, *rest = node.args
        opts = dict(zip(("attn_mask", "dropout_p", "is_causal"), rest))
        opts.update(node.kwargs)
        if opts.get("attn_mask") is not None and _no_op_mask(gm, opts["attn_mask"]):
            opts["attn_mask"] = None  # e.g. transformers' "attend to everything" mask
        if opts.get("attn_mask") is not None or opts.get("is_causal"):
            raise UserInputError(f"I-ViT: scaled_dot_product_attention at {node.name} uses a mask or is_causal "
                                 f"({opts.get('attn_mask')}, {opts.get('is_causal')}); "
                                 "the integer form supports unmasked attention only")
        scale = opts.get("scale")
        if scale is None:
            val = q.meta.get("val") if isinstance(q, fx.Node) else None
            if val is None:
                raise UserInputError(f"I-ViT: scaled_dot_product_attention at {node.name}: unknown head size")
            scale = 1.0 / math.sqrt(int(val.shape[-1]))
        g = gm.graph
        with g.inserting_before(node):
            s = g.call_function(aten.matmul.default, (q, g.call_function(aten.transpose.int, (k, -2, -1))))
            p = g.call_function(aten.softmax.int, (g.call_function(aten.mul.Tensor, (s, float(scale))), -1))
            out = g.call_function(aten.matmul.default, (p, v))
        node.replace_all_uses_with(out)
        g.erase_node(node)


_SHAPE_ONLY = {aten.expand.default, aten.unsqueeze.default, aten.view.default, aten.reshape.default,
               aten._to_copy.default, aten.to.dtype}


def _no_op_mask(gm: fx.GraphModule, mask: Any) -> bool:
    """An attention mask that lets every query see every key: all True (bool) or all zero (additive), computed
    from constants only (through shape ops, which keep that property whatever the input's batch size)."""
    while isinstance(mask, fx.Node) and mask.op == "call_function" and mask.target in _SHAPE_ONLY:
        mask = mask.args[0]
    memo: dict[fx.Node, Any] = {}

    def value(n: Any) -> Any:
        if not isinstance(n, fx.Node):
            return n
        if n not in memo:
            if n.op == "get_attr":
                memo[n] = _attr(gm, n)
            elif n.op != "call_function" or getattr(n.target, "namespace", None) != "aten":
                raise LookupError(n.name)  # depends on the input (or on something not constant)
            else:
                memo[n] = n.target(*fx.node.map_aggregate(n.args, value), **fx.node.map_aggregate(n.kwargs, value))
        return memo[n]

    try:
        m = value(mask)
    except (LookupError, RuntimeError, TypeError):
        return False
    if not isinstance(m, torch.Tensor):
        return False
    return bool(m.all()) if m.dtype == torch.bool else bool((m == 0).all())


def _lift(gm: fx.GraphModule) -> None:
    g = gm.graph
    for node in list(g.nodes):
        if node.op != "call_function":
            continue
        target = node.target
        if target in IDENTITIES or getattr(target, "overloadpacket", None) in ASSERTS:
            if target in IDENTITIES:
                node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
            continue
        if target == aten.add.Tensor and node.kwargs.get("alpha", 1) != 1:
            continue  # a scaled add: left for the converter to name
        lift = LIFTS.get(target)
        if lift is None:
            continue
        kind, new_target, rewrite = lift
        args, kwargs = rewrite(tuple(node.args), dict(node.kwargs), node)
        with g.inserting_before(node):
            new = g.create_node(kind, new_target, args, kwargs)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        g.erase_node(node)
