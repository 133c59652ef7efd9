"""Attention written as one call (``F.scaled_dot_product_attention``) made visible to the int8 placement.

A fused attention call hides its two matrix products, so no Q/DQ pair can be placed on the attention
probabilities and a runtime runs ``softmax(Q Kᵀ) V`` in float. :func:`decompose_attention` rewrites each call
into the ops it computes — ``matmul(q, kᵀ) * scale (+ mask) -> softmax -> matmul(p, v)`` — on the captured
graph (torch.fx or torch.export ATen dialect), so :func:`edgekit.quant.qdq.plan` quantizes both products like
the explicit attention of edgekit's own blocks. The rewrite is exact in float (same ops the ONNX exporter
writes for the fused call; a boolean mask becomes ``masked_fill(-inf)``). Calls with dropout, ``is_causal`` or grouped-query heads are left
as they are (listed in the plan's float ops).

A mask that attends everywhere is dropped when the graph proves it: its value depends on the inputs' shapes only
(not on their values) and, for the example input, it is all True (boolean) or all zero (additive). ``transformers``
5.x builds such a mask for its ViT (``arange(n) >= 0`` expanded to the batch); kept, it became a float ``Where``
per attention that took ~10% of ONNX Runtime's kernel time on a ViT-S at 224 (its own profiler).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx

aten = torch.ops.aten
_SDPA = {F.scaled_dot_product_attention, aten.scaled_dot_product_attention}
MASK_ADD = "attention_mask_add"  # node.meta flag: the mask add of a decomposed attention (not a residual add)


def _arg(node: fx.Node, i: int, name: str, default):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _dtype(n: fx.Node) -> torch.dtype | None:
    meta = n.meta.get("tensor_meta") or n.meta.get("val")
    return getattr(meta, "dtype", None)


def decomposable(node: fx.Node) -> bool:
    if node.op != "call_function" or getattr(node.target, "overloadpacket", node.target) not in _SDPA:
        return False
    mask = _arg(node, 3, "attn_mask", None)
    mask_ok = mask is None or (isinstance(mask, fx.Node) and _dtype(mask) is not None)
    dropout = _arg(node, 4, "dropout_p", 0.0)
    return (mask_ok and not dropout and not _arg(node, 5, "is_causal", False)
            and not node.kwargs.get("enable_gqa", False) and isinstance(node.args[0], fx.Node))


_SHAPE_READS = {aten.sym_size, aten.size, aten.sym_numel, aten.dim}


def _shape_only(node: fx.Node) -> bool:
    """Whether ``node``'s value depends on the graph's inputs through their shapes only (never their values)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return False
        if (n.op == "call_function" and getattr(n.target, "overloadpacket", n.target) in _SHAPE_READS) or (
                n.op == "call_method" and n.target in ("size", "dim")) or (  # aten (torch.export) / torch.fx
                n.op == "call_function" and n.target is getattr and n.args[1:2] in (("shape",), ("ndim",))):
            continue
        todo.extend(n.all_input_nodes)
    return True


def _values(gm: fx.GraphModule, nodes: list[fx.Node], example: torch.Tensor) -> dict[fx.Node, object]:
    """The values ``nodes`` take when ``gm`` runs on ``example`` (one interpreted forward pass)."""
    wanted, got = set(nodes), {}

    class _Probe(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in wanted:
                got[n] = out
            return out

    with torch.no_grad():
        _Probe(gm).run(example)
    return got


def _attends_everywhere(mask: object) -> bool:
    if not isinstance(mask, torch.Tensor):
        return False
    return bool(mask.all()) if mask.dtype == torch.bool else bool((mask == 0).all())


def decompose_attention(gm: fx.GraphModule, example: torch.Tensor | None = None) -> int:
    """Rewrite every decomposable scaled-dot-product-attention call of ``gm`` in place; returns how many.

    Needs the input shapes (``node.meta['tensor_meta']`` or ``val``) for the default scale ``1/sqrt(d)``. With
    ``example`` (the graph's input), a mask that depends on shapes only and attends everywhere is dropped."""
    calls = [n for n in gm.graph.nodes if decomposable(n)]
    masks = [m for n in calls if isinstance(m := _arg(n, 3, "attn_mask", None), fx.Node) and _shape_only(m)]
    trivial = {m for m, v in _values(gm, masks, example).items() if _attends_everywhere(v)} if masks and example is not None else set()
    count = 0
    for node in calls:
        q, k, v = node.args[:3]
        mask = _arg(node, 3, "attn_mask", None)
        mask = None if mask in trivial else mask
        scale = node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)
        if scale is None:
            meta = q.meta.get("tensor_meta") or q.meta.get("val")
            if meta is None:
                continue
            scale = 1.0 / math.sqrt(int(meta.shape[-1]))
        g = gm.graph
        with g.inserting_before(node):
            kt = g.call_function(aten.transpose.int, (k, -2, -1))
            s = g.call_function(aten.matmul.default, (q, kt))
            s = g.call_function(aten.mul.Tensor, (s, float(scale)))
            if mask is not None and _dtype(mask) == torch.bool:  # True = attend (SDPA's boolean mask)
                s = g.call_function(aten.masked_fill.Scalar, (s, g.call_function(aten.logical_not.default, (mask,)), float("-inf")))
            elif mask is not None:
                s = g.call_function(aten.add.Tensor, (s, mask))
                s.meta[MASK_ADD] = True
            p = g.call_function(aten._softmax.default, (s, -1, False))
            o = g.call_function(aten.matmul.default, (p, v))
        for new in (kt, s, p, o):
            new.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        node.replace_all_uses_with(o)
        g.erase_node(node)
        count += 1
    if count:
        if trivial:
            gm.graph.eliminate_dead_code()  # the dropped masks' arange / expand chains
        gm.graph.lint()
        gm.recompile()
    return count
