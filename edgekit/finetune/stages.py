"""Recipe stages ``finetune`` and ``evaluate``."""

from __future__ import annotations

from pydantic import Field

from edgekit.errors import UserInputError
from edgekit.stages import StageConfig, StageContext, register_stage
from edgekit.training import evaluate, train


class FinetuneConfig(StageConfig):
    """Fine-tune on the training split (AdamW, cosine schedule, random shifts)."""

    epochs: int = Field(3, ge=0, description="Epochs over the training split.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (cosine decay to 0).")
    weight_decay: float = Field(5e-4, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(64, ge=1, description="Batch size.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    distill: float = Field(0.0, ge=0, le=1, description="Weight of KL distillation from the original model (0: none).")


class EvaluateConfig(StageConfig):
    """Record top-1 accuracy on the test split at this point of the recipe (the model is unchanged)."""

    split: str = Field("test", pattern="^(train|calib|test)$", description="Which split: train, calib or test.")


@register_stage("finetune", config=FinetuneConfig, summary="fine-tune on the training split, optionally distilled")
def finetune(model, cfg: FinetuneConfig, ctx: StageContext):
    if ctx.data is None or not ctx.data.labeled:
        raise UserInputError("stage 'finetune' needs labeled data (--data digits, a .npz with y, or an image folder)")
    teacher = ctx.reference if cfg.distill > 0 else None
    hist = train(
        model, ctx.data, epochs=cfg.epochs, lr=cfg.lr, seed=ctx.seed, weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size, label_smoothing=cfg.label_smoothing, teacher=teacher, distill_weight=cfg.distill,
        description="fine-tuning",
    )
    return model, {"epochs": cfg.epochs, "final_loss": hist["loss"][-1] if hist["loss"] else None,
                   "accuracy": evaluate(model, ctx.data.test), "seconds": hist["seconds"]}


@register_stage("evaluate", config=EvaluateConfig, summary="record top-1 accuracy at this point of the recipe")
def evaluate_stage(model, cfg: EvaluateConfig, ctx: StageContext):
    if ctx.data is None:
        raise UserInputError("stage 'evaluate' needs data")
    return model, {"split": cfg.split, "accuracy": evaluate(model, getattr(ctx.data, cfg.split))}
