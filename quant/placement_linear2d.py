"""OpenVINO: Linear layers on token tensors run on 2-D tokens, as in NNCF's graphs, so the CPU plugin keeps
their outputs int8 and runs each GELU as an int8 kernel of its own.

What the CPU plugin's runtime model (``compiled.get_runtime_model()``) and its ``PERF_COUNT`` counters showed on
the zoo ``detector-hybrid`` (int8 at 64x64, 1 thread), against NNCF's graph of the same model, which OpenVINO
reads from the fp32 ONNX as ``Reshape -> MatMul (2-D) -> Add(bias) -> FakeQuantize -> Reshape`` per Linear:

* **Residual adds.** OpenVINO's low-precision transformations dequantize one input of an int8 ``Add`` to float
  and keep the other integer (``EltwiseBaseTransformation::getNotEmpty``, "the branch with FP32 precision after
  eltwise transformation"). When both inputs come straight from a ``FakeQuantize``, the one with a single
  consumer goes float: in a pre-norm transformer block that is the branch output (``attn.proj`` / ``mlp.fc2``,
  read by the add only), not the residual stream (read by the add and the next LayerNorm). So 6 of edgekit's 12
  FullyConnected (each block's ``attn.proj`` and ``mlp.fc2``) wrote bf16 and the add requantized after them,
  where NNCF's write int8: its add reads the branch through a ``Reshape``, and the residual stream goes float.
* **GELU.** On a 3-D Linear the plugin fused ``FakeQuantize -> Gelu -> FakeQuantize`` into the first MLP
  FullyConnected as post-ops: 17 us for the first block's (64 tokens) against 6 us + 5 us for NNCF's
  FullyConnected and its separate int8 GELU kernel. Behind the 2-D Linear's ``Reshape`` the GELU is an int8
  kernel of its own, as in NNCF's graph.

With every Linear on 2-D tokens all 12 FullyConnected write int8, the GELUs run as their own int8 kernels, and
``PERF_COUNT`` sums to 196 us against NNCF's 200 (207 with only the residual branches' Linears on 2-D tokens).
Wall time of the graph against NNCF's file (interleaved, 3 x 300 calls, under the benchmark lock with the other
agents' idle jobs paused): before 1.04-1.05x warm / 1.01-1.02x cold; residual branches only 1.01x / 1.00x (a
second session of NNCF's own file: 1.01-1.02x / 1.01x); every Linear on 2-D tokens 0.95x / 0.96-0.97x.

:func:`linear_on_2d_tokens` gives edgekit's graph that form for the OpenVINO placement
(``Placement.linear_2d``): each ``nn.Linear`` called on a 3-D tensor ``(B, N, C)`` is called on
``x.reshape(-1, C)`` and its output reshaped back to ``(-1, N, C_out)``, ``N`` read from ``x`` at run time (the
same weights run at another input size, e.g. a detector at 320x320). In float it is the same function (a
reshape moves no value), and no quantizer is added, moved or recalibrated: :func:`quantize_before_reshapes` puts
every Q/DQ pair the plan asks for on a reshape's input instead (the Linear reads its input quantizer's integer
tensor through the reshape, the add, GELU or attention product reads the Linear's output quantizer's). The two
reshapes carry :data:`RESHAPED_2D` in ``node.meta``.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

aten = torch.ops.aten
RESHAPED_2D = "reshaped_2d_tokens"  # node.meta flag: a reshape added by linear_on_2d_tokens


def _shape(node: object) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _set_meta(node: fx.Node, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    node.meta["tensor_meta"] = _extract_tensor_metadata(torch.empty(shape, dtype=dtype, device="meta"))


def linear_on_2d_tokens(gm: fx.GraphModule) -> int:
    """Rewrite, in place, each ``nn.Linear`` call on a 3-D input into ``reshape(-1, C_in) -> Linear ->
    reshape(-1, N, C_out)``; returns how many. Needs ``node.meta['tensor_meta']`` (shape propagation) and keeps it
    up to date. A Linear on a 2-D input (a classifier) or of another rank is left as it is."""
    modules = dict(gm.named_modules())
    g, count = gm.graph, 0
    for node in list(g.nodes):
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.Linear):
            continue
        x = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        in_shape, out_shape = _shape(x), _shape(node)
        if in_shape is None or out_shape is None or len(in_shape) != 3 or not node.users:
            continue
        dtype = node.meta["tensor_meta"].dtype
        with g.inserting_before(node):
            tokens = g.call_function(aten.sym_size.int, (x, 1))  # read at run time: the graph keeps any token count
            flat = g.call_function(aten.reshape.default, (x, [-1, in_shape[-1]]))
        with g.inserting_after(node):
            back = g.call_function(aten.reshape.default, (node, [-1, tokens, out_shape[2]]))
        node.replace_all_uses_with(back, delete_user_cb=lambda u: u is not back)
        node.args = (flat,)
        _set_meta(flat, (in_shape[0] * in_shape[1], in_shape[2]), dtype)
        _set_meta(node, (out_shape[0] * out_shape[1], out_shape[2]), dtype)
        _set_meta(back, out_shape, dtype)
        tokens.meta["val"] = in_shape[1]
        for new in (tokens, flat, back):
            new.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        flat.meta[RESHAPED_2D] = back.meta[RESHAPED_2D] = True
        count += 1
    if count:
        g.lint()
        gm.recompile()
    return count


def before_reshapes(node: fx.Node) -> fx.Node:
    """``node``, or the tensor a chain of :func:`linear_on_2d_tokens` reshapes starts from."""
    while node.meta.get(RESHAPED_2D) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def quantize_before_reshapes(gm: fx.GraphModule, tensors: list[str]) -> list[str]:
    """``tensors`` (the plan's quantized tensors, in order) with each reshape added by
    :func:`linear_on_2d_tokens` replaced by its input (once)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    return list(dict.fromkeys(before_reshapes(nodes[t]).name for t in tensors))
