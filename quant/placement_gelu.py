"""Exact GELU written in the form ONNX Runtime fuses into one ``Gelu`` kernel.

``gelu(x) = x/2 * (1 + erf(x / sqrt 2))``. The ONNX exporter writes PyTorch's GELU as
``Div -> Erf -> Add -> Mul(0.5, .) -> Mul(x, .)``, which ONNX Runtime's ``GeluFusion`` (a level-2 graph
optimization of the CPU execution provider) does not match: it looks for ``Div -> Erf -> Add(1) -> Mul`` whose
other input is ``Mul(x, 0.5)``. So in the int8 graph of the zoo ``vit`` at 224, each MLP ran five float
element-wise kernels between its DequantizeLinear and QuantizeLinear (ORT's profiler, two runs under load: the
float Mul, Div, Erf and Add of the 12 GELUs were 9-17% of the kernel time) where one ``Gelu`` kernel does.
Checked on onnxruntime 1.32: PyTorch's order stays five nodes, this one becomes ``Gelu`` (opset 17 and 18).
With the GELU input left float as well (the ONNX Runtime placement, ``Placement.gelu_input``), the int8 ``vit``
at 224 ran in 66.7 ms instead of 79.8 ms (ORT quantize_static: 81.4; interleaved medians, load average 14).

:func:`rewrite_gelu` replaces each exact GELU of a captured graph (``nn.GELU()``, ``F.gelu``, ATen ``gelu``
with ``approximate='none'``; the tanh approximation is left as it is) by ``(x * 0.5) * (1 + erf(x / sqrt 2))``
in ATen ops: the same function in float (a rounding difference of about one float32 ulp).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx, nn

aten = torch.ops.aten
_GELU_FNS = {F.gelu, aten.gelu, torch._C._nn.gelu}
GELU_READ = "gelu_reads_input"  # node.meta flag: the two ops of a rewritten GELU that read its input


def only_read_by_gelu(node: fx.Node) -> bool:
    """Whether every user of ``node`` is one of the two input reads of a rewritten GELU."""
    return bool(node.users) and all(u.meta.get(GELU_READ) for u in node.users)


def _is_exact_gelu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return isinstance(m, nn.GELU) and m.approximate == "none"
    if node.op != "call_function" or getattr(node.target, "overloadpacket", node.target) not in _GELU_FNS:
        return False
    return node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none") == "none"


def rewrite_gelu(gm: fx.GraphModule) -> int:
    """Rewrite every exact GELU of ``gm`` in place into ORT's fusable form; returns how many."""
    modules = dict(gm.named_modules())
    g, count = gm.graph, 0
    for node in list(g.nodes):
        if not _is_exact_gelu(node, modules) or not isinstance(node.args[0], fx.Node):
            continue
        x = node.args[0]
        with g.inserting_before(node):
            half = g.call_function(aten.mul.Tensor, (x, 0.5))
            scaled = g.call_function(aten.div.Tensor, (x, math.sqrt(2.0)))
            cdf = g.call_function(aten.erf.default, (scaled,))
            one_plus = g.call_function(aten.add.Tensor, (cdf, 1.0))
            out = g.call_function(aten.mul.Tensor, (half, one_plus))
        for new in (half, scaled, cdf, one_plus, out):
            new.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        half.meta[GELU_READ] = scaled.meta[GELU_READ] = True
        node.replace_all_uses_with(out)
        g.erase_node(node)
        count += 1
    if count:
        g.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return count
