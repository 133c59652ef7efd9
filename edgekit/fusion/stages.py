"""Recipe stage ``fuse``."""

from __future__ import annotations

from typing import Literal

from edgekit.fusion.fuse import fuse
from edgekit.stages import StageConfig, register_stage


class FuseConfig(StageConfig):
    mode: Literal["deploy"] = "deploy"


@register_stage("fuse", config=FuseConfig, summary="fold BatchNorm into the preceding conv/linear")
def apply(model, cfg: FuseConfig, ctx):
    return fuse(model, mode=cfg.mode)
