"""Accuracy-controlled int8: keep the most sensitive layers in float until the accuracy drop holds.

The idea of NNCF's ``quantize_with_accuracy_control`` (and of AIMET's automatic mixed precision), written
for edgekit's quantizer: quantize everything, measure the top-1 drop on the validation split (the labeled
calibration split, never the test split the report quotes), rank the quantized layers by their single-layer
sensitivity (:func:`edgekit.quant.sensitivity.layer_sensitivity`: output SQNR, lowest first), then return
layers to float one at a time, most sensitive first, re-quantizing and re-measuring after each, until the drop
is at most ``max_drop`` points or ``max_reverted`` layers are float. If the budget cannot be met the best model
found is returned with ``report["met"] = False`` (the stage then fails with that best figure, exit 1).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from edgekit.quant.config import PTQConfig


def quantize_with_max_drop(model: nn.Module, calib: torch.Tensor, labels: torch.Tensor, example: torch.Tensor,
                           opts: PTQConfig, max_drop: float, max_reverted: int | None = None,
                           evaluate: Callable[[nn.Module], float] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Int8 PTQ of ``model`` whose top-1 drop on ``(calib, labels)`` is at most ``max_drop`` points, if possible.

    Returns ``(model, report)``; the report lists the layers kept in float, the drop after each step and
    whether the budget was met. ``evaluate`` (default: top-1 on ``calib``/``labels``) may be given for tests.
    """
    from edgekit.outputs import logits
    from edgekit.quant.ptq import quantize_ptq
    from edgekit.quant.sensitivity import layer_sensitivity

    if evaluate is None:
        @torch.no_grad()
        def evaluate(m: nn.Module) -> float:
            m.eval()
            pred = torch.cat([logits(m(calib[i : i + 128])).argmax(1) for i in range(0, len(calib), 128)])
            return float((pred == labels).float().mean())

    reference = evaluate(model)
    q, rep = quantize_ptq(model, calib, example, opts)
    acc = evaluate(q)
    steps = [{"kept_float": [], "accuracy": acc, "drop_pt": round((reference - acc) * 100, 3)}]
    best = (reference - acc, q, rep, [])
    kept: list[str] = []
    if (reference - acc) * 100 > max_drop:
        calibrated, _ = quantize_ptq(model, calib, example, opts, do_freeze=False)
        ranking = [r["layer"] for r in layer_sensitivity(calibrated, calib, labels)]
        limit = len(ranking) if max_reverted is None else min(max_reverted, len(ranking))
        for layer in ranking[:limit]:
            kept.append(layer)
            q, rep = quantize_ptq(model, calib, example, opts.model_copy(update={"ignore": [*opts.ignore, *kept]}))
            acc = evaluate(q)
            steps.append({"kept_float": list(kept), "accuracy": acc, "drop_pt": round((reference - acc) * 100, 3)})
            if reference - acc < best[0]:
                best = (reference - acc, q, rep, list(kept))
            if (reference - acc) * 100 <= max_drop:
                break
    drop, q, rep, kept = best
    rep = {**rep, "accuracy_control": {
        "max_drop_pt": max_drop, "met": drop * 100 <= max_drop, "split": "calibration (validation)",
        "accuracy_float": reference, "accuracy_int8": reference - drop, "drop_pt": round(drop * 100, 3),
        "kept_float": kept, "steps": steps,
    }}
    return q, rep
