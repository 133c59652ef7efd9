"""Recipe stage ``fuse``: fold BatchNorm / reparameterize (deploy) or switch ConvBN blocks (tune, eval)."""

from __future__ import annotations

from typing import Literal

from edgekit.fusion.fuse import fuse
from edgekit.stages import StageConfig, register_stage


class FuseConfig(StageConfig):
    mode: Literal["deploy", "tune", "eval"] = "deploy"


@register_stage("fuse", config=FuseConfig, summary="fold BatchNorm and reparameterize multi-branch blocks (deploy), or switch ConvBN to tune/eval")
def apply(model, cfg: FuseConfig, ctx):
    example = tuple(ctx.example_inputs) if ctx is not None and ctx.example_inputs else None
    return fuse(model, mode=cfg.mode, example_inputs=example)
