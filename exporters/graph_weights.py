"""Weights of an ONNX graph as the runtimes see them: constants, the int8 initializers behind DequantizeLinear,
and which Conv / Gemm / MatMul weights keep an N:M pattern along the input-channel axis.

Used by the TensorRT target (2:4 sparse layers enable ``--sparsity=enable``) and by every ONNX-based export of
an N:M compress output (the pattern must survive export: ``nm_sparsity`` in the manifest, checked).
"""

from __future__ import annotations

from typing import Any

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def const_values(model) -> dict[str, np.ndarray]:
    """Initializers and Constant node outputs, by tensor name."""
    from onnx import numpy_helper

    vals = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            vals[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return vals


def weight_of(node, consts: dict[str, np.ndarray], producers: dict[str, Any]) -> np.ndarray | None:
    """The constant weight (input 1) of a weighted op, looking through a DequantizeLinear of an initializer."""
    if len(node.input) < 2:
        return None
    name = node.input[1]
    if name in consts:
        return consts[name]
    prod = producers.get(name)
    if prod is not None and prod.op_type == "DequantizeLinear" and prod.input[0] in consts:
        return consts[prod.input[0]]  # the integer weights themselves: zeros stay zeros
    return None


def _rows_along_inputs(op: str, w: np.ndarray, node) -> np.ndarray | None:
    """The weight as (groups of outputs) x (input channels), the axis N:M runs along."""
    if w.ndim < 2:
        return None
    if op in ("Conv", "ConvTranspose"):
        axis = 1 if op == "Conv" else 0
        return np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis])
    trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute) if op == "Gemm" else False
    return w.reshape(w.shape[0], -1) if trans_b else np.moveaxis(w, -2, -1).reshape(-1, w.shape[-2])


def nm_layers(model, n: int, m: int) -> dict[str, Any]:
    """Weighted layers whose weights hold at most ``n`` non-zeros in every group of ``m`` input channels."""
    consts = const_values(model)
    producers = {o: node for node in model.graph.node for o in node.output}
    sparse, dense = [], []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        w = weight_of(node, consts, producers)
        if w is None or w.dtype.kind not in "fiu":
            continue
        rows = _rows_along_inputs(node.op_type, w, node)
        if rows is None:
            continue
        name = node.name or node.output[0]
        ok = rows.shape[1] % m == 0 and bool(np.all((rows.reshape(rows.shape[0], -1, m) != 0).sum(-1) <= n))
        (sparse if ok else dense).append(name)
    return {"n": n, "m": m, "layers_with_pattern": sparse, "other_layers": len(dense)}
