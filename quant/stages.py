"""Recipe stages ``quantize`` (int8 PTQ or QAT, optional mixed precision) and ``sensitivity`` (report only).

    - quantize:
        mode: ptq                    # ptq | qat
        calibration: {method: mse, samples: 256}
        ignore: ["head"]             # wildcard patterns on layer names stay float
        keep_float: {top_n: 2}       # or {sqnr_budget_db: 25}: mixed precision from per-layer sensitivity
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.errors import UserInputError
from edgekit.quant.config import PTQConfig
from edgekit.stages import StageConfig, StageContext, register_stage


class KeepFloatConfig(BaseModel):
    """Mixed precision: keep the ``top_n`` most sensitive layers, and/or every layer whose single-layer output
    SQNR is below ``sqnr_budget_db``, in float."""

    model_config = ConfigDict(extra="forbid")
    top_n: int | None = Field(None, ge=0)
    sqnr_budget_db: float | None = None
    criterion: Literal["sqnr", "relevance"] = "sqnr"  # relevance: LRP-style layer relevance (top_n most relevant)


class QATConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-4, gt=0)
    distill_weight: float = Field(0.5, ge=0.0, le=1.0)


class QuantizeConfig(StageConfig, PTQConfig):
    """The ``quantize`` stage: the PTQ options (:class:`~edgekit.quant.config.PTQConfig`) plus mode and mixed precision."""

    mode: Literal["ptq", "qat"] = "ptq"
    keep_float: KeepFloatConfig | None = None
    # Accuracy control (PTQ): keep the most sensitive layers in float until the top-1 drop on the validation
    # images is at most this many points; the stage fails with the best it found otherwise.
    max_drop: float | None = Field(None, ge=0.0)
    max_reverted: int | None = Field(None, ge=1)  # at most this many layers go back to float
    max_drop_validation: Literal["train", "calibration"] = Field(
        "train", description="max_drop: where the drop is measured: labeled training images not used for calibration, "
        "or the calibration images themselves (optimistic)")
    max_drop_samples: int = Field(2000, ge=1, description="max_drop_validation train: at most this many images (the accuracy_control default)")
    max_drop_criterion: Literal["disagreement", "drop"] = Field(
        "disagreement", description="max_drop: judge the share of images whose top-1 changes against float (on the "
        "validation and on the calibration images, each; no label needed; bounds the drop) or the labeled top-1 drop "
        "(NNCF's criterion)")
    max_drop_confidence: float = Field(1.0, ge=0.0, description="max_drop: z, judged at its value + z * its standard error "
                                       "(sqrt(images changed) / images); 0: the measured value")
    max_drop_requantize: Literal["bonferroni", "same"] = Field(
        "bonferroni", description="max_drop: the backward pass (re-quantizing reverts the budget does not need) judges "
        "each of its m trials at the Bonferroni-corrected z (the whole pass at one test's level) or at the same z")
    qat: QATConfig = Field(default_factory=QATConfig)


class SensitivityConfig(StageConfig, PTQConfig):
    samples: int = Field(256, ge=1)  # samples the SQNR/accuracy are measured on
    worst: int = Field(10, ge=1)


def _need_data(ctx: StageContext, stage: str):
    if ctx.data is None or ctx.data.calib is None or len(ctx.data.calib) == 0:
        raise UserInputError(f"stage {stage!r} needs calibration data (pass --data, or use the built-in digits)")
    return ctx.data


def sensitivity_table(model, ctx: StageContext, opts: PTQConfig, samples: int) -> list[dict[str, Any]]:
    from edgekit.quant.ptq import quantize_ptq
    from edgekit.quant.sensitivity import layer_sensitivity

    data = ctx.data
    gm, _ = quantize_ptq(model, data.calib.x, ctx.example_inputs[0], opts, do_freeze=False)
    y = data.calib.y[:samples] if data.calib.y is not None else None
    return layer_sensitivity(gm, data.calib.x[:samples], y)


@register_stage("quantize", config=QuantizeConfig, summary="int8 quantization (PTQ or QAT, QDQ-exportable, mixed precision)")
def apply(model, cfg: QuantizeConfig, ctx: StageContext):
    from edgekit.quant.ptq import check_calibration, quantize_ptq

    data = _need_data(ctx, "quantize")
    example = ctx.example_inputs[0]
    opts: PTQConfig = cfg
    check_calibration(data.calib.x, example, cfg.calibration.samples)
    extra: dict[str, Any] = {}
    if cfg.keep_float is not None and (cfg.keep_float.top_n or cfg.keep_float.sqnr_budget_db is not None):
        from edgekit.quant.sensitivity import choose_float_layers

        sens = sensitivity_table(model, ctx, cfg, cfg.calibration.samples)
        keep = choose_float_layers(sens, cfg.keep_float.top_n, cfg.keep_float.sqnr_budget_db, cfg.keep_float.criterion)
        opts = cfg.model_copy(update={"ignore": [*cfg.ignore, *keep]})
        extra = {"sensitivity_worst": sens[:10], "kept_float": keep}
    if cfg.mode == "qat":
        from edgekit.quant.qat import quantize_qat

        q = cfg.qat
        gm, report = quantize_qat(model, data, example, opts, epochs=q.epochs, lr=q.lr,
                                  distill_weight=q.distill_weight, seed=ctx.seed, teacher=ctx.reference)
    elif cfg.max_drop is not None:
        gm, report = _with_max_drop(model, cfg, opts, data, example)
    else:
        gm, report = quantize_ptq(model, data.calib.x, example, opts)
        report["mode"] = "ptq"
    report.update(extra)
    if report.get("float_ops"):
        report["note"] = "ops listed in float_ops are not quantized and run in float"
    return gm, report


def _with_max_drop(model, cfg: QuantizeConfig, opts: PTQConfig, data, example):
    from edgekit.errors import EdgekitError
    from edgekit.quant.accuracy_control import quantize_with_max_drop, validation_images

    if data.calib.y is None:
        raise UserInputError("quantize.max_drop needs labeled data to measure the drop (the calibration split has no labels)")
    n = cfg.calibration.samples
    vx, vy, info = validation_images(data, cfg.max_drop_validation, cfg.max_drop_samples, n)
    gm, report = quantize_with_max_drop(model, data.calib.x[:n], data.calib.y[:n], example, opts, cfg.max_drop,
                                        cfg.max_reverted, validation=(vx, vy), validation_info=info,
                                        confidence=cfg.max_drop_confidence, criterion=cfg.max_drop_criterion,
                                        unlabeled=data.calib.x if info["held_out"] else None,
                                        requantize=cfg.max_drop_requantize)
    report["mode"] = "ptq"
    ac = report["accuracy_control"]
    if not ac["met"]:
        raise EdgekitError(
            f"quantize.max_drop {cfg.max_drop} pt cannot be met: the best found drops {ac['drop_pt']} pt "
            f"({ac.get('criterion', 'drop')} judged at {ac.get('drop_bound_pt', ac['drop_pt'])} pt) on the "
            f"{ac['validation']['images']} {ac['validation']['set']} validation images with {len(ac['kept_float'])} "
            f"layer(s) in float ({', '.join(ac['kept_float']) or 'none'}); "
            "raise max_drop or max_reverted, or use quantization-aware training (mode: qat)"
        )
    return gm, report


@register_stage("sensitivity", config=SensitivityConfig, summary="per-layer int8 sensitivity report (model unchanged)")
def sensitivity(model, cfg: SensitivityConfig, ctx: StageContext):
    from edgekit.quant.ptq import check_calibration

    data = _need_data(ctx, "sensitivity")
    check_calibration(data.calib.x, ctx.example_inputs[0], cfg.calibration.samples)
    sens = sensitivity_table(model, ctx, cfg, cfg.samples)
    return model, {"layers": len(sens), "worst": sens[: cfg.worst], "all": sens}
