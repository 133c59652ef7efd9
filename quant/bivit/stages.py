"""Recipe stage ``binarize``: BiViT (He et al., "BiViT: Extremely Compressed Binary Vision Transformers",
ICCV 2023) - convert, fine-tune with distillation from the float model through the cross-layer phases,
freeze to 1-bit packed weights, and (when the run has an output directory) write ``packed_weights.npz``.

    stages:
      - binarize:
          activation_bits: 1          # 1 (W1A1), 8 (W1A8) or 32 (weights only)
          softmax_aware: true
          cross_layer: {enabled: true, order: [[mlp], [attn]]}
          keep_fp: ["patch_embed*", "head*"]
          distill_weight: 0.5
          epochs: 6
          lr: 0.001
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgekit.errors import UserInputError
from edgekit.stages import StageConfig, StageContext, register_stage

PACKED_FILE = "packed_weights.npz"


class CrossLayerConfig(BaseModel):
    """Cross-layer binarization: which groups are binarized in which phase (cumulative)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    enabled: bool = True
    order: list[list[str]] = Field(default_factory=lambda: [["mlp"], ["attn"]])
    phase_epochs: list[int] | None = None  # default: the epochs split evenly over the phases

    @field_validator("order")
    @classmethod
    def _groups(cls, v: list[list[str]]) -> list[list[str]]:
        from edgekit.quant.bivit.convert import GROUPS

        bad = sorted({g for p in v for g in p} - set(GROUPS))
        if bad:
            raise ValueError(f"unknown group(s) {bad}; accepted: {', '.join(GROUPS)}")
        return v


class BinarizeConfig(StageConfig):
    weight_bits: Literal[1] = 1
    activation_bits: Literal[1, 8, 32] = 1
    softmax_aware: bool = True
    binarize_attention: bool = True
    act_shift: bool = True
    attention_mean: bool = True  # divide A @ V by the number of selected tokens (A stays 0/1)
    cross_layer: CrossLayerConfig = Field(default_factory=CrossLayerConfig)
    keep_fp: list[str] = Field(default_factory=lambda: ["patch_embed*", "head*"])
    distill_weight: float = Field(0.5, ge=0.0, le=1.0)
    epochs: int = Field(6, ge=0)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(64, ge=1)
    pack: bool = True  # write packed_weights.npz into the run's output directory

    def options(self):
        from edgekit.quant.bivit.convert import BinarizeOptions

        return BinarizeOptions(self.activation_bits, self.softmax_aware, self.binarize_attention, self.act_shift,
                               self.attention_mean, tuple(self.keep_fp))


def _storage(model) -> dict[str, Any]:
    from edgekit.metrics import storage_bytes
    from edgekit.quant.bivit.modules import BinaryLinear

    layers = [m for m in model.modules() if isinstance(m, BinaryLinear)]
    fp32 = sum(4 * (m.out_features * m.in_features + m.out_features) for m in layers)
    packed = sum(m.storage_bytes() for m in layers)
    return {
        "binarized_layers_fp32_bytes": fp32,
        "binarized_layers_packed_bytes": packed,
        "binarized_layers_ratio": round(fp32 / max(1, packed), 2),
        "model_bytes": storage_bytes(model),
    }


@register_stage("binarize", config=BinarizeConfig, summary="BiViT binarization: 1-bit weights (+1/8-bit activations), packed")
def apply(model, cfg: BinarizeConfig, ctx: StageContext):
    from edgekit.metrics import storage_bytes
    from edgekit.quant.bivit.convert import convert, has_block_converter
    from edgekit.quant.bivit.modules import freeze
    from edgekit.quant.bivit.pack import save_packed
    from edgekit.quant.bivit.schedule import make_phases, run_schedule
    from edgekit.training import evaluate, train

    opts = cfg.options()
    size_before = storage_bytes(model)
    if has_block_converter(model) or not ctx.example_inputs:
        new, conv_report = convert(model, opts)
    else:  # a third-party model: its captured graph, layers found by op (quant/bivit/graph.py)
        from edgekit.quant.bivit.graph import convert_graph

        new, conv_report = convert_graph(model, ctx.example_inputs[0][:1], opts)
    cl = cfg.cross_layer
    phases = make_phases(conv_report["groups"], cfg.epochs, cl.enabled, cl.order, cl.phase_epochs)
    if any(p.epochs for p in phases) and ctx.data is None:
        raise UserInputError("stage 'binarize': fine-tuning needs data; set epochs: 0 to binarize without fine-tuning")
    teacher = ctx.reference if cfg.distill_weight > 0 else None

    def train_phase(m, phase, i):
        hist = train(m, ctx.data, epochs=phase.epochs, lr=cfg.lr, seed=ctx.seed + i, weight_decay=cfg.weight_decay,
                     batch_size=cfg.batch_size, teacher=teacher, distill_weight=cfg.distill_weight,
                     description=f"bivit phase {i + 1}/{len(phases)} [{'+'.join(phase.groups)}]")
        out = {"final_loss": round(hist["loss"][-1], 4), "seconds": round(hist["seconds"], 1)}
        if ctx.data is not None and ctx.data.test.y is not None:
            out["test_accuracy"] = evaluate(m, ctx.data.test)
        return out

    phase_reports = run_schedule(new, phases, train_phase)
    frozen = freeze(new)
    new.eval()
    report: dict[str, Any] = {
        "config": {"weights": 1, "activations": cfg.activation_bits, "softmax_aware": cfg.softmax_aware,
                   "cross_layer": cl.enabled, "distill_weight": cfg.distill_weight},
        "conversion": conv_report,
        "phases": phase_reports,
        "frozen": frozen,
        "storage": {**_storage(new), "model_bytes_before": size_before},
    }
    if cfg.pack and ctx.out_dir is not None:
        path = save_packed(new, ctx.out_dir / PACKED_FILE, config=opts.to_dict())
        report["packed_file"] = path.name
        report["packed_file_bytes"] = path.stat().st_size
    return new, report
