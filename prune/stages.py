"""Recipe stages ``prune`` (structured channel / head pruning) and ``sparsify`` (N:M semi-structured)."""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.errors import UserInputError
from edgekit.stages import StageConfig, register_stage


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(0, ge=0, description="fine-tune epochs after pruning / with the sparsity schedule (0: none)")
    lr: float = Field(1e-3, gt=0, description="fine-tune learning rate (AdamW, cosine schedule)")
    distill: float = Field(0.0, ge=0.0, le=1.0, description="weight w of distillation from the model before this stage (unpruned / dense): loss = (1 - w) * task loss + w * the task's distillation term (0: none)")


class MaskSparsityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="MaskSparsity: L1 on the BN scales of the chosen channels only, then remove")
    strength: float = Field(5e-4, gt=0, description="L1 strength s (grad_gamma += s * sign(gamma))")
    epochs: int = Field(2, ge=1, description="epochs of the masked-L1 fine-tune before removal")
    select_epochs: int = Field(0, ge=0, description="optional global L1 (network slimming) epochs before choosing")


class PruneConfig(StageConfig):
    """Structured pruning through a dependency graph: a smaller dense model, not masks."""

    ratio: float = Field(0.3, ge=0.0, lt=1.0, description="fraction of channels / heads removed (per group, or globally)")
    importance: Literal["l1", "l2", "bn_gamma", "taylor", "dimap"] = Field("l1", description="importance criterion (taylor needs labeled data)")
    global_pruning: bool = Field(False, description="rank units across all groups (scores normalised per group) instead of per layer")
    max_group_ratio: float = Field(0.9, gt=0.0, lt=1.0, description="global mode: most a single group may lose")
    round_to: int = Field(8, ge=1, description="keep channel counts at multiples of this where possible (8/16/32 suit runtimes)")
    ignore: list[str] = Field(default_factory=list, description="wildcard patterns of layer names whose output channels and heads are never pruned, e.g. ['head*'] (their inputs still follow their producers)")
    head_ratio: float | None = Field(None, ge=0.0, lt=1.0, description="fraction of attention heads removed in every heads group (default: ratio). floor(ratio * heads) is often 0 with few heads (0.34 of 2), leaving attention whole while the channels shrink; its cost grows with the square of the tokens, so at larger inputs the saving then lags the MACs'")
    ratios: dict[str, float] = Field(default_factory=dict, description="per-layer ratio overrides: {layer pattern: ratio}")
    scope: Literal["all", "depthwise"] = Field("all", description="which groups are pruned: 'all', or 'depthwise': only the groups holding a depthwise conv (the expanded channels of inverted-residual blocks), so that no dense conv loses channels on both sides and latency falls with the MACs")
    masksparsity: MaskSparsityConfig = Field(default_factory=MaskSparsityConfig, description="MaskSparsity before removal")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="fine-tune after pruning")


class SparsifyConfig(StageConfig):
    """N:M sparsity along the input dimension of conv / linear weights (TensorRT layout)."""

    n: int = Field(2, ge=1, description="N nonzeros kept in every group of M input weights")
    m: int = Field(4, ge=2, description="group size M")
    method: Literal["srste", "mdgf", "sdgf", "oneshot"] = Field("srste", description="training rule: SR-STE, mask decay (MDGF), structure decay (SDGF), or one-shot masks")
    srste_lambda: float = Field(2e-4, ge=0, description="SR-STE: lambda of the (1 - M) * W gradient term")
    decay: Literal["linear", "exp"] = Field("exp", description="MDGF: alpha(t) = max(0, 1 - c t) or exp(-c t)")
    decay_rate: float | Literal["auto"] = Field(
        "auto", description="MDGF: c. 'auto' scales it to the run: alpha falls to exp(-5) (exp) or 0 (linear) by the "
        "start of the final plain phase. The paper's 1e-4..2e-4 suits runs of tens of thousands of steps; with a "
        "short fine-tune such a c leaves alpha near 1 and the switch to W * M at the end collapses accuracy.")
    
    sdgf_schedule: str | list[str] = Field("sparsify", description="SDGF: 'sparsify' (7:8 -> 4:8 -> 2:8 -> 1:8), 'fine' (8:64 -> ... -> 1:8) or a list of 'N:M'")
    dense_epochs: int = Field(0, ge=0, description="epochs trained dense before sparsity starts")
    final_epochs: int = Field(1, ge=0, description="MDGF: last epochs with the plain sparse step W * M")
    rule: Literal["asp", "any"] = Field("asp", description="eligibility: 'asp' (out % 8, in % 16, depthwise skipped) or 'any' (in % M)")
    ignore: list[str] = Field(default_factory=list, description="wildcard patterns of layer names left dense")
    finetune: FinetuneConfig = Field(default_factory=lambda: FinetuneConfig(epochs=2), description="training with the sparsity rule (0: one-shot masks)")


def _accuracy(model, data) -> float | None:
    if data is None or not data.labeled:
        return None
    from edgekit.training import evaluate

    return evaluate(model, data.test)


def _labeled(data) -> bool:  # detection data has target dicts, not labels: its task trains it (edgekit.tasks)
    return data is not None and (data.train.y is not None or getattr(data, "task", "classification") != "classification")


@register_stage("prune", config=PruneConfig, summary="structured channel/head pruning through a dependency graph")
def apply_prune(model, cfg: PruneConfig, ctx) -> tuple[Any, dict[str, Any]]:
    from edgekit.prune.masksparsity import masksparsity
    from edgekit.prune.structured import prune

    if not ctx.example_inputs:
        raise UserInputError("prune: needs example inputs to trace the model")
    from edgekit.outputs import rewrap, unwrap

    wrapped, output_path = model, None
    teacher = copy.deepcopy(wrapped).eval() if cfg.finetune.epochs > 0 and cfg.finetune.distill > 0 else None
    model, output_path = unwrap(model)  # prune the user's own model; its output selection is put back after
    acc0 = _accuracy(wrapped, ctx.data)
    if cfg.masksparsity.enabled:
        ms = cfg.masksparsity
        new, report = masksparsity(model, ctx.example_inputs, ctx.data, cfg.ratio, ms.strength, ms.epochs,
                                   cfg.finetune.lr, cfg.importance, cfg.global_pruning, ms.select_epochs,
                                   cfg.round_to, cfg.ignore, ctx.seed, cfg.ratios, cfg.scope,
                                   cfg.head_ratio)
    else:
        new, report = prune(model, ctx.example_inputs, cfg.ratio, cfg.importance, cfg.global_pruning, cfg.round_to,
                            cfg.ignore, ctx.data, cfg.max_group_ratio, cfg.ratios, scope=cfg.scope,
                            head_ratio=cfg.head_ratio)
    new = rewrap(new, output_path)
    report["accuracy"] = {"before": acc0, "pruned": _accuracy(new, ctx.data)}
    if cfg.finetune.epochs > 0:
        if not _labeled(ctx.data):
            report["finetune"] = "skipped: no labeled data"
        else:
            from edgekit.training import train

            hist = train(new, ctx.data, epochs=cfg.finetune.epochs, lr=cfg.finetune.lr, seed=ctx.seed,
                         teacher=teacher, distill_weight=cfg.finetune.distill, description="prune: fine-tune")
            report["finetune"] = {"epochs": cfg.finetune.epochs, "lr": cfg.finetune.lr, "distill": cfg.finetune.distill,
                                  "seconds": hist["seconds"]}
            report["accuracy"]["finetuned"] = _accuracy(new, ctx.data)
    return new.eval(), report


@register_stage("sparsify", config=SparsifyConfig, summary="N:M sparsity (SR-STE / progressive gradient flow)")
def apply_sparsify(model, cfg: SparsifyConfig, ctx) -> tuple[Any, dict[str, Any]]:
    from edgekit.prune import nm

    if cfg.n > cfg.m:
        raise UserInputError(f"sparsify: n={cfg.n} must be <= m={cfg.m}")
    dense, model = model, copy.deepcopy(model).eval()  # the stage's input stays dense: the distillation teacher
    acc0 = _accuracy(model, ctx.data)
    frames = nm.sdgf_frames(cfg.n, cfg.m, cfg.sdgf_schedule) if cfg.method == "sdgf" else []
    max_m = max([cfg.m] + [f[1] for f in frames])
    layers, skipped = nm.eligible_layers(model, max_m, cfg.rule, cfg.ignore)
    if not layers:
        raise UserInputError(f"sparsify: no layer is eligible for {cfg.n}:{cfg.m}; skipped: {skipped[:5]}")
    report: dict[str, Any] = {"pattern": f"{cfg.n}:{cfg.m}", "method": cfg.method, "layers": layers, "skipped": skipped}
    epochs = cfg.finetune.epochs
    if cfg.method == "oneshot" or epochs == 0 or not _labeled(ctx.data):
        nm.apply_masks(model, layers, cfg.n, cfg.m)
        if cfg.method != "oneshot" and epochs > 0:
            report["training"] = "skipped: no labeled data; one-shot masks"
    else:
        from edgekit.training import train

        spe = math.ceil(len(ctx.data.train) / 64)
        total = (cfg.dense_epochs + epochs) * spe
        final_steps = cfg.final_epochs * spe
        rate = cfg.decay_rate
        if rate == "auto":
            decay_steps = max(1, total - cfg.dense_epochs * spe - final_steps)
            rate = (5.0 if cfg.decay == "exp" else 1.0) / decay_steps
        sched = nm.Schedule(cfg.n, cfg.m, "masked" if cfg.method == "oneshot" else cfg.method, cfg.srste_lambda,
                            cfg.decay, rate, cfg.dense_epochs * spe, total, final_steps, frames)
        nm.attach(model, layers, sched)

        def hook(_m, step: int) -> None:
            sched.step = step

        hist = train(model, ctx.data, epochs=cfg.dense_epochs + epochs, lr=cfg.finetune.lr, seed=ctx.seed,
                     step_hook=hook, teacher=dense if cfg.finetune.distill > 0 else None,
                     distill_weight=cfg.finetune.distill, description=f"sparsify {cfg.n}:{cfg.m} ({cfg.method})")
        nm.finalize(model, layers, cfg.n, cfg.m)
        report["training"] = {"epochs": cfg.dense_epochs + epochs, "steps": hist["steps"], "seconds": hist["seconds"],
                              "decay_rate": rate if cfg.method == "mdgf" else None,
                              "frames": [f"{a}:{b}" for a, b in frames] or None}
    mods = dict(model.named_modules())
    dense_b = sum(mods[n].weight.numel() * 2 for n in layers)
    sparse_b = sum(nm.compressed_bytes(mods[n].weight, cfg.n, cfg.m) for n in layers)
    report["per_layer"] = [r for r in nm.describe_pattern(model) if r["layer"] in set(layers)]
    report["storage_fp16_bytes"] = {"dense": dense_b, "compressed": sparse_b, "ratio": sparse_b / max(1, dense_b)}
    report["accuracy"] = {"before": acc0, "after": _accuracy(model, ctx.data)}
    ctx.state["sparsity"] = {"n": cfg.n, "m": cfg.m, "layers": layers}  # read by exporters (TensorRT flag)
    return model, report
