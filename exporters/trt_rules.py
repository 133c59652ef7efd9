"""TensorRT's constraints on an ONNX graph, checked before any engine is built (and without TensorRT installed).

Sources: TensorRT 10 developer guide, "Working with Quantized Types" / "Explicit Quantization" (Q/DQ rules),
and onnx-tensorrt's operator support table. Each rule below is one documented constraint; a graph that breaks
one is rejected with the layer, the rule and the fix.

Q/DQ rules (explicit quantization):

* ``qdq-scale-const``: scales are build-time constants (TensorRT folds them into the engine).
* ``qdq-scale-positive``: scales are positive and finite.
* ``qdq-zero-point``: quantization is symmetric: every zero point is a constant 0.
* ``qdq-int8``: the quantized type is signed INT8 (UINT8 Q/DQ is not supported).
* ``qdq-activation-per-tensor``: activations are quantized per tensor (one scale); per-channel scales only
  on weights (constant inputs).
* ``qdq-weight-axis``: a per-channel weight quantizer runs along the output-channel axis of the layer that
  consumes it (Conv: 0, ConvTranspose: 1, Gemm: 0 with ``transB=1`` else 1, MatMul: the last axis) and has one
  scale per output channel.

Op rule: ``op-unsupported``: ops the ONNX parser does not implement (integer-only QOperator ops, sequences,
strings, random ops).

Advice (reported, not rejected): ``advice-weighted-input``: a weighted op whose weights are quantized but whose
activation input is not runs in float; TensorRT's placement guidance quantizes both inputs of weighted ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.exporters.graph_weights import const_values

# ONNX ops TensorRT 10's ONNX parser does not support (onnx-tensorrt docs/operators.md), with a workaround.
UNSUPPORTED_OPS = {
    "Unique": None, "StringNormalizer": None, "TfIdfVectorizer": None, "Multinomial": None,
    "SequenceAt": "avoid Python lists of tensors in forward", "SequenceConstruct": "avoid Python lists of tensors in forward",
    "SequenceInsert": "avoid Python lists of tensors in forward", "ConcatFromSequence": "use torch.cat on a fixed list",
    "Optional": None, "OptionalGetElement": None, "ImageDecoder": None, "RegexFullMatch": None,
    "StringConcat": None, "StringSplit": None, "Col2Im": "use Fold-free formulation", "Bernoulli": "remove dropout-like sampling for inference",
    "RandomNormal": "remove random ops for inference", "RandomUniform": "remove random ops for inference",
    "DynamicQuantizeLinear": "use static QDQ (calibrated scales) instead of dynamic quantization",
    "MatMulInteger": "use QDQ + MatMul instead of integer ops", "ConvInteger": "use QDQ + Conv instead of integer ops",
    "QLinearConv": "export QDQ (QuantizeLinear/DequantizeLinear) instead of QOperator format",
    "QLinearMatMul": "export QDQ (QuantizeLinear/DequantizeLinear) instead of QOperator format",
}
QDQ = ("QuantizeLinear", "DequantizeLinear")
SYMMETRIC_RULES = ("qdq-zero-point", "qdq-int8")  # broken by asymmetric (uint8 affine) activation quantization


def _problem(rule: str, node, problem: str, workaround: str | None) -> dict[str, Any]:
    layer = node.name or (node.output[0] if node.output else node.op_type)
    return {"rule": rule, "layer": layer, "op": node.op_type, "problem": problem, "workaround": workaround}


def _weight_axis(consumer, input_index: int, rank: int) -> int | None:
    if consumer.op_type == "Conv" and input_index == 1:
        return 0
    if consumer.op_type == "ConvTranspose" and input_index == 1:
        return 1
    if consumer.op_type == "Gemm" and input_index == 1:
        trans_b = any(a.name == "transB" and a.i == 1 for a in consumer.attribute)
        return 0 if trans_b else 1
    if consumer.op_type == "MatMul" and input_index == 1:
        return rank - 1
    return None


def _attr(node, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _check_qdq(n, consts, consumers) -> list[dict[str, Any]]:
    out = []
    scale_name = n.input[1] if len(n.input) > 1 else ""
    scale = consts.get(scale_name)
    if scale is None:
        return [_problem("qdq-scale-const", n, "scale is not a constant (TensorRT needs build-time scales)",
                         "calibrate statically; fold the scale computation into a constant")]
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        out.append(_problem("qdq-scale-positive", n, "scale is zero, negative or not finite", "recalibrate"))
    if len(n.input) > 2 and n.input[2]:
        zp = consts.get(n.input[2])
        if zp is None:
            out.append(_problem("qdq-zero-point", n, "zero point is not a constant", "quantize symmetrically (zero point 0)"))
        elif np.any(zp != 0):
            out.append(_problem("qdq-zero-point", n, "non-zero zero point (TensorRT int8 is symmetric)",
                                "quantize activations symmetrically (recipe int8-sym)"))
        elif zp.dtype == np.uint8:
            out.append(_problem("qdq-int8", n, "uint8 quantization (TensorRT takes signed int8 only)",
                                "use signed int8 activations (recipe int8-sym)"))
    x_is_const = n.input[0] in consts
    if scale.size > 1:
        if not x_is_const:
            out.append(_problem("qdq-activation-per-tensor", n, f"activation quantized per channel ({scale.size} scales)",
                                "quantize activations per tensor"))
        else:
            w = consts[n.input[0]]
            axis = _attr(n, "axis", 1) % max(w.ndim, 1)
            for consumer, idx in consumers.get(n.output[0], []) if n.op_type == "DequantizeLinear" else []:
                want = _weight_axis(consumer, idx, w.ndim)
                if want is not None and (axis != want or scale.size != w.shape[want]):
                    out.append(_problem("qdq-weight-axis", n,
                                        f"per-channel weight scales on axis {axis} ({scale.size} scales) for {consumer.op_type}; "
                                        f"TensorRT needs axis {want} ({w.shape[want]} scales)", "quantize weights per output channel"))
    return out


def check_graph(model) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(problems, advice) of an ONNX ModelProto for TensorRT; each entry names rule, layer, op, problem, workaround."""
    consts = const_values(model)
    consumers: dict[str, list[tuple[Any, int]]] = {}
    producers = {o: node for node in model.graph.node for o in node.output}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    problems, advice = [], []
    for n in model.graph.node:
        if n.op_type in UNSUPPORTED_OPS:
            problems.append(_problem("op-unsupported", n, "op not supported by TensorRT's ONNX parser", UNSUPPORTED_OPS[n.op_type]))
        if n.op_type in QDQ:
            problems += _check_qdq(n, consts, consumers)
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1:
            w_prod, x_prod = producers.get(n.input[1]), producers.get(n.input[0])
            w_quant = w_prod is not None and w_prod.op_type == "DequantizeLinear"
            x_quant = x_prod is not None and x_prod.op_type == "DequantizeLinear"
            if w_quant and not x_quant:
                advice.append(_problem("advice-weighted-input", n, "weights quantized but the activation input is not: runs in float",
                                       "quantize both inputs of weighted ops"))
    return problems, advice


def check_onnx(path) -> list[dict[str, Any]]:
    """Problems TensorRT would have with the ONNX file at ``path`` (see :func:`check_graph`)."""
    import onnx

    return check_graph(onnx.load(str(path)))[0]


def needs_symmetric(problems: list[dict[str, Any]]) -> bool:
    return any(p["rule"] in SYMMETRIC_RULES for p in problems)
