"""Per-layer quantization sensitivity and mixed precision ("which layers must stay in float?").

For every quantized layer, only that layer is quantized (its int8 weights and the activation quantizer on its
input) while the rest of the model runs in float; the model output is compared with the float output:

    SQNR_dB = 10 * log10( sum(y_float^2) / sum((y_float - y_quant)^2) )

and, with labels, the top-1 accuracy is measured too. Low SQNR = sensitive. :func:`choose_float_layers`
turns the ranking into an ``ignore`` list: the ``top_n`` most sensitive layers, or every layer whose SQNR is
below a budget in dB.

Second criterion, layer relevance (after LRP-QViT: Ranjan & Savakis, "LRP-QViT: Mixed-Precision Vision
Transformer Quantization via Layer-wise Relevance Propagation", 2024): the share of the predicted-class logit
attributed to each layer's output, computed as ``sum |a * d y_c / d a|`` over the layer output ``a``
(gradient x input, which equals LRP-0 for piecewise-linear networks), normalised to sum to 1 over layers.
LRP-QViT gives more bits to more relevant layers; here ``criterion: relevance`` keeps the ``top_n`` most
relevant layers in float.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import fx, nn

from edgekit.outputs import logits
from edgekit.progress import track
from edgekit.quant.fakequant import ActMode, WeightMode
from edgekit.quant.ptq import act_quants, graph_of, layer_input_quantizers, weight_layers


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``ref`` in dB (inf when identical)."""
    noise = (ref.double() - test.double()).pow(2).sum()
    signal = ref.double().pow(2).sum()
    if noise == 0:
        return math.inf
    return float(10.0 * torch.log10(signal / noise))


def batched_logits(gm: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The logits of ``gm`` on ``x``, run ``batch_size`` at a time."""
    return torch.cat([logits(gm(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


@contextmanager
def all_float(quants: dict, layers: dict) -> Iterator[None]:
    """Within the block every activation quantizer is off and every weight layer float (the float reference a
    sensitivity is measured against); their modes are restored on exit."""
    saved = ({n: q.mode for n, q in quants.items()}, {n: m.wmode for n, m in layers.items()})
    try:
        for q in quants.values():
            q.mode = ActMode.OFF
        for m in layers.values():
            m.wmode = WeightMode.FLOAT
        yield
    finally:
        for n, q in quants.items():
            q.mode = saved[0][n]
        for n, m in layers.items():
            m.wmode = saved[1][n]


@torch.no_grad()
def layer_sensitivity(gm: fx.GraphModule, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 64) -> list[dict[str, Any]]:
    """Sensitivity of each quantized layer of a calibrated, not yet frozen model, most sensitive first."""
    graph = graph_of(gm)  # names are the graph's; gm (maybe a FixedBatch around it) is what runs
    quants, layers = act_quants(graph), weight_layers(graph)
    inputs = layer_input_quantizers(graph)
    out = []
    with all_float(quants, layers):
        ref = batched_logits(gm, x, batch_size)
        for name in track(list(layers), "sensitivity"):
            layers[name].wmode = WeightMode.FAKE
            for qn in inputs.get(name, []):
                quants[qn].mode = ActMode.QUANT
            yq = batched_logits(gm, x, batch_size)
            row: dict[str, Any] = {"layer": name, "sqnr_db": round(sqnr_db(ref, yq), 2)}
            if y is not None and yq.dim() == 2:
                row["top1"] = round(float((yq.argmax(1) == y[: len(yq)]).float().mean()), 4)
            out.append(row)
            layers[name].wmode = WeightMode.FLOAT
            for qn in inputs.get(name, []):
                quants[qn].mode = ActMode.OFF
    relevance = layer_relevance(gm, x, batch_size)
    for row in out:
        if row["layer"] in relevance:
            row["relevance"] = round(relevance[row["layer"]], 4)
    return sorted(out, key=lambda r: r["sqnr_db"])


def layer_relevance(gm: fx.GraphModule, x: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Relevance share of each quantized layer's output for the predicted class (float weights, no act quant)."""
    graph = graph_of(gm)
    quants, layers = act_quants(graph), weight_layers(graph)
    saved = ({n: q.mode for n, q in quants.items()}, {n: m.wmode for n, m in layers.items()})
    outs: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, m in layers.items():
        def hook(_m, _i, out, name=name):
            out.retain_grad()
            outs.setdefault(name, []).append(out)
        hooks.append(m.register_forward_hook(hook))
    rel = {n: 0.0 for n in layers}
    try:
        for q in quants.values():
            q.mode = ActMode.OFF
        for m in layers.values():
            m.wmode = WeightMode.FLOAT
        for i in range(0, len(x), batch_size):
            outs.clear()
            with torch.enable_grad():
                y = logits(gm(x[i : i + batch_size]))
                if y.dim() != 2:
                    return {}
                y.gather(1, y.argmax(1, keepdim=True)).sum().backward()
            for name, acts in outs.items():
                rel[name] += float(sum((a * a.grad).abs().sum() for a in acts if a.grad is not None))
    finally:
        for h in hooks:
            h.remove()
        for n, q in quants.items():
            q.mode = saved[0][n]
        for n, m in layers.items():
            m.wmode = saved[1][n]
        gm.zero_grad(set_to_none=True)
    total = sum(rel.values()) or 1.0
    return {n: v / total for n, v in rel.items()}


def choose_float_layers(sens: list[dict[str, Any]], top_n: int | None = None, sqnr_budget_db: float | None = None,
                        criterion: str = "sqnr") -> list[str]:
    """Layers to keep in float: the ``top_n`` lowest-SQNR (or most relevant) layers and/or those below
    ``sqnr_budget_db``."""
    keep: dict[str, None] = {}
    if criterion == "relevance":
        for r in sorted(sens, key=lambda r: -r.get("relevance", 0.0))[: top_n or 0]:
            keep[r["layer"]] = None
        top_n = None
    ranked = sorted(sens, key=lambda r: r["sqnr_db"])
    if top_n:
        for r in ranked[:top_n]:
            keep[r["layer"]] = None
    if sqnr_budget_db is not None:
        for r in ranked:
            if r["sqnr_db"] < sqnr_budget_db:
                keep[r["layer"]] = None
    return list(keep)
