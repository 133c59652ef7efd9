"""Recipe stage ``ivit``: integer-only ViT (I-ViT, "I-ViT: Integer-only Quantization for Efficient Vision
Transformer Inference", Li & Gu, ICCV 2023) -- convert, QAT fine-tune, freeze, verify on the executor."""

from __future__ import annotations

from collections import Counter

import torch

from edgekit.errors import UserInputError
from edgekit.stages import StageConfig, register_stage


class IViTConfig(StageConfig):
    epochs: int = 3  # QAT fine-tune on the built-in / given data (0: calibration only)
    lr: float = 1e-4
    distill_weight: float = 0.5  # KL to the float model during QAT
    calibration_batches: int = 4
    batch_size: int = 64
    verify_samples: int = 8  # compare the integer executor with the model bit for bit on this many inputs


@register_stage("ivit", config=IViTConfig, summary="integer-only ViT: dyadic requant, Shiftmax, ShiftGELU, I-LayerNorm + QAT")
def apply(model, cfg: IViTConfig, ctx):
    from edgekit.quant.ivit import executor
    from edgekit.quant.ivit.convert import convert, freeze, int_modules
    from edgekit.training import evaluate, train

    data = ctx.data
    calib = data.calib.x if data is not None and len(data.calib) else ctx.example_inputs[0]
    if calib is None or len(calib) == 0:
        raise UserInputError("stage ivit: needs calibration data (ctx.data or example inputs)")
    q = convert(model, calib, batch_size=cfg.batch_size, max_batches=cfg.calibration_batches)
    report: dict = {"layers": dict(Counter(type(m).__name__ for _, m in int_modules(q)))}
    labeled = data is not None and data.labeled
    if labeled:
        report["accuracy_converted"] = evaluate(q, data.test)
    if cfg.epochs > 0:  # detection data has targets but no top-1 labels: train() uses its task's loss
        if not (labeled or (data is not None and getattr(data, "task", "classification") != "classification")):
            raise UserInputError("stage ivit: QAT (epochs > 0) needs labeled data; set epochs: 0 for calibration only")
        teacher = ctx.reference if cfg.distill_weight > 0 else None
        hist = train(q, data, cfg.epochs, cfg.lr, seed=ctx.seed, teacher=teacher, distill_weight=cfg.distill_weight,
                     batch_size=cfg.batch_size, weight_decay=0.0, description="I-ViT QAT")
        report["qat"] = {"epochs": cfg.epochs, "lr": cfg.lr, "loss": hist["loss"], "seconds": hist["seconds"]}
    q = freeze(q)
    if labeled:
        report["accuracy_integer"] = evaluate(q, data.test)
    if cfg.verify_samples:
        x = calib[: cfg.verify_samples]
        with torch.no_grad():
            ref = q(x).numpy()
        got = executor.run(q, x)
        report["executor_bit_exact"] = bool((ref == got).all())
        if not report["executor_bit_exact"]:
            raise UserInputError("stage ivit: the integer executor disagrees with the converted model (a bug; please report)")
    report["storage_bytes"] = sum(m.storage_bytes() for _, m in int_modules(q))
    return q, report  # an IViTModel: it writes its own integer-only ONNX graph (edgekit.records.OnnxWriter)
