"""Float-op checker for integer-only graphs (the I-ViT check: "I-ViT: Integer-only Quantization for
Efficient Vision Transformer Inference", Li & Gu, ICCV 2023).

``float_tensors(model)`` lists every non-integer tensor between the input quantizer and the output
dequantizer of an ONNX graph. The input quantizers are the nodes that turn a float tensor computed from the
graph inputs alone (no integer ancestor) into an integer one; the output dequantizers are the nodes that
turn an integer tensor into a float one with no integer tensor after them. Every tensor downstream of a
quantizer and upstream of a dequantizer must be an integer (or bool) tensor; a float island inside (say
Cast -> Softmax -> Cast) is reported.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from edgekit.backends import require

_INTEGER = {"INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64", "UINT64", "BOOL"}


def _dtypes(model: Any) -> dict[str, str]:
    onnx = require("onnx", "I-ViT float-op checker")
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types: dict[str, str] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        types[vi.name] = onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)
    for init in g.initializer:
        types[init.name] = onnx.TensorProto.DataType.Name(init.data_type)
    return types


def float_tensors(model: Any) -> list[dict[str, str]]:
    """Each non-integer tensor inside the integer region: ``{"tensor", "dtype", "producer", "op"}``."""
    g = model.graph
    types = _dtypes(model)
    is_int = {n: t in _INTEGER for n, t in types.items()}
    producer = {o: node for node in g.node for o in node.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in g.node:
        for i in node.input:
            if i:
                consumers[i].append(node)

    # tensors with an integer ancestor (forward pass in topological order; ONNX nodes are sorted)
    int_anc: dict[str, bool] = {}
    for node in g.node:
        anc = any(is_int.get(i, False) or int_anc.get(i, False) for i in node.input if i and i in producer)
        for o in node.output:
            int_anc[o] = anc
    # tensors with an integer descendant (backward pass)
    int_desc: dict[str, bool] = defaultdict(bool)
    for node in reversed(g.node):
        desc = any(is_int.get(o, False) or int_desc[o] for o in node.output)
        for i in node.input:
            if i:
                int_desc[i] = int_desc[i] or desc

    def kind(name: str) -> bool:
        return is_int.get(name, False)

    quant_outs = [o for node in g.node for o in node.output
                  if kind(o) and any(i and not kind(i) and not int_anc.get(i, False)
                                     for i in node.input)]
    dequant_ins = [i for node in g.node for i in node.input
                   if i and kind(i) and any(not kind(o) and not int_desc[o] for o in node.output)]
    after = _reach(quant_outs, lambda t: [o for c in consumers[t] for o in c.output])
    before = _reach(dequant_ins, lambda t: [i for i in (producer[t].input if t in producer else []) if i])
    region = after & before
    found = []
    for t in sorted(region, key=_order(g)):
        if t in types and not kind(t):
            p = producer.get(t)
            found.append({"tensor": t, "dtype": types[t], "producer": p.name if p else "", "op": p.op_type if p else "initializer"})
    return found


def _reach(start: list[str], nxt) -> set[str]:
    seen, stack = set(start), list(start)
    while stack:
        for n in nxt(stack.pop()):
            if n not in seen:
                seen.add(n)
                stack.append(n)
    return seen


def _order(g: Any):
    pos = {o: k for k, node in enumerate(g.node) for o in node.output}
    return lambda t: (pos.get(t, -1), t)


def check(model: Any) -> None:
    """Raise if the graph has a float tensor between its input quantizer and output dequantizer."""
    from edgekit.errors import EdgekitError

    bad = float_tensors(model)
    if bad:
        listing = ", ".join(f"{b['tensor']} ({b['dtype']}, from {b['op']})" for b in bad[:10])
        raise EdgekitError(f"integer-only check failed: {len(bad)} float tensor(s) inside the integer region: {listing}")
