"""Attention written as one call (``F.scaled_dot_product_attention``) made visible to the int8 placement.

A fused attention call hides its two matrix products, so no Q/DQ pair can be placed on the attention
probabilities and a runtime runs ``softmax(Q Kᵀ) V`` in float. :func:`decompose_attention` rewrites each call
into the ops it computes — ``matmul(q, kᵀ) * scale (+ mask) -> softmax -> matmul(p, v)`` — on the captured
graph (torch.fx or torch.export ATen dialect), so :func:`edgekit.quant.qdq.plan` quantizes both products like
the explicit attention of edgekit's own blocks. The rewrite is exact in float (same ops the ONNX exporter
writes for the fused call; a boolean mask becomes ``masked_fill(-inf)``). Calls with dropout, ``is_causal`` or grouped-query heads are left
as they are (listed in the plan's float ops).
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


def decompose_attention(gm: fx.GraphModule) -> int:
    """Rewrite every decomposable scaled-dot-product-attention call of ``gm`` in place; returns how many.

    Needs the input shapes (``node.meta['tensor_meta']`` or ``val``) for the default scale ``1/sqrt(d)``."""
    count = 0
    for node in list(gm.graph.nodes):
        if not decomposable(node):
            continue
        q, k, v = node.args[:3]
        mask = _arg(node, 3, "attn_mask", None)
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
        gm.graph.lint()
        gm.recompile()
    return count
