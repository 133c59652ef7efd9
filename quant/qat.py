"""Quantization-aware training: PTQ initialisation, then fine-tuning through fake quantization.

Rounding uses the straight-through estimator; activation scales (per tensor) and weight scales (per output
channel) are learned as in LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020), initialised
from calibration (activations) and max|W| / 127 (weights). The float model can act as a teacher
(distillation weight ``distill_weight``). Finally the weights are frozen to int8.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from edgekit.data import DataBundle
from edgekit.errors import UserInputError
from edgekit.quant.config import PTQConfig
from edgekit.quant.ptq import act_quants, freeze, quantize_ptq, weight_layers


def quantize_qat(model: nn.Module, data: DataBundle, example: torch.Tensor, opts: PTQConfig | None = None,
                 epochs: int = 3, lr: float = 1e-4, distill_weight: float = 0.5, seed: int = 0,
                 teacher: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Int8 QAT of ``model`` (not modified); returns the int8 model (as :func:`quantize_ptq` does) and a report."""
    from edgekit.training import evaluate, train

    if data.train.y is None:
        raise UserInputError(f"quantize mode 'qat' needs labeled training data; {data.name} has none")
    if epochs < 1:
        raise UserInputError(f"quantize.qat.epochs: {epochs}; accepted: >= 1")
    opts = opts or PTQConfig()
    t0 = time.perf_counter()
    gm, report = quantize_ptq(model, data.calib.x, example, opts, do_freeze=False)
    ptq_top1 = evaluate(gm, data.calib)
    for q in act_quants(gm).values():
        q.enable_lsq()
    for m in weight_layers(gm).values():
        m.enable_lsq()
    hist = train(gm, data, epochs=epochs, lr=lr, seed=seed, teacher=teacher if distill_weight > 0 else None,
                 distill_weight=distill_weight, description="QAT")
    freeze(gm, int32_gemm_bias=opts.target != "tensorrt")
    report.update({
        "mode": "qat", "epochs": epochs, "lr": lr, "distill_weight": distill_weight,
        "calib_top1_after_ptq": ptq_top1, "calib_top1_after_qat": evaluate(gm, data.calib),
        "final_loss": hist["loss"][-1] if hist["loss"] else None,
        "seconds": round(time.perf_counter() - t0, 2),
    })
    return gm, report
