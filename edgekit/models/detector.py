"""A small anchor-free single-stage detector built from :mod:`edgekit.ops` (FCOS-style).

FCOS: "FCOS: Fully Convolutional One-Stage Object Detection", Tian et al., ICCV 2019 (per-location class
scores, ltrb box distances and centerness); the neck is an FPN-lite (Lin et al., "Feature Pyramid Networks for
Object Detection", CVPR 2017: 1x1 laterals, nearest-neighbour top-down sum, one 3x3 smoothing conv per level)
and the head is decoupled (separate classification and regression towers, as in YOLOX, Ge et al. 2021), one
head per level (not shared, so that pruning and per-level quantization see ordinary convolutions).

The backbone is RepVGG-style (:class:`~edgekit.ops.RepConv` blocks, Ding et al. CVPR 2021) and reparameterizes
for deployment like the zoo classifiers.

Outputs (raw, no decoding in the graph): per level ``(N, 5 + C, H_l, W_l)``, channels ``[0:4]`` the log-scale
ltrb distances in strides, ``[4]`` the centerness logit, ``[5:]`` the class logits. ``packed=True`` (the
default, what the pipeline and exporters handle) flattens each level and concatenates them finest first into
one ``(N, 5 + C, A)`` tensor; ``packed=False`` returns the tuple of per-level tensors. Decoding and NMS run
outside the graph: :func:`edgekit.tasks.detection.decode`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.models import register_model
from edgekit.ops import ConvBN, RepConv

STRIDES = (8, 16)  # P3, P4: the levels the head predicts at (input pixels per output cell)


class Backbone(nn.Module):
    """RepVGG-style: four stride-2 stages; returns the stride-8 and stride-16 feature maps."""

    def __init__(self, widths: tuple[int, int, int, int], depths: tuple[int, int, int, int]) -> None:
        super().__init__()
        cin, stages = 3, []
        for w, d in zip(widths, depths):
            stages.append(nn.Sequential(RepConv(cin, w, 3, stride=2), *[RepConv(w, w, 3) for _ in range(d - 1)]))
            cin = w
        self.stem, self.stage2, self.stage3, self.stage4 = stages

    def forward(self, x):
        c3 = self.stage3(self.stage2(self.stem(x)))
        return c3, self.stage4(c3)


def repeat_upsample(x: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour upsample by the integer factor ``size / x.shape[-2:]`` written as shape ops (unsqueeze,
    expand, reshape): the same values as ``F.interpolate(mode="nearest")``, in a form that backends without a
    resize (the I-ViT integer executor and its ONNX lowering) run as data movement. Width then height, so that no
    tensor has more than 5 dimensions (Core ML's limit)."""
    n, c, h, w = x.shape
    sh, sw = size[0] // h, size[1] // w
    x = x.unsqueeze(4).expand(n, c, h, w, sw).reshape(n, c, h, w * sw)
    return x.unsqueeze(3).expand(n, c, h, sh, w * sw).reshape(n, c, h * sh, w * sw)


class FPNLite(nn.Module):
    """``upsample``: "resize" (``F.interpolate`` nearest: an ONNX Resize) or "repeat" (:func:`repeat_upsample`)."""

    def __init__(self, in_channels: tuple[int, ...], width: int, upsample: str = "resize") -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvBN(c, width, 1, act=None) for c in in_channels)
        self.smooth = nn.ModuleList(ConvBN(width, width, 3, act="relu") for _ in in_channels)
        self.repeat = upsample == "repeat"

    def forward(self, feats):
        lat = [lateral(f) for lateral, f in zip(self.lateral, feats)]
        outs = [lat[-1]]
        for f in reversed(lat[:-1]):  # top-down: coarse to fine
            up = (repeat_upsample(outs[0], f.shape[-2:]) if self.repeat
                  else F.interpolate(outs[0], size=f.shape[-2:], mode="nearest"))
            outs.insert(0, f + up)
        return [smooth(o) for smooth, o in zip(self.smooth, outs)]


class DecoupledHead(nn.Module):
    """One level: a classification tower -> C logits, a regression tower -> 4 distances + 1 centerness."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.cls_tower = ConvBN(width, width, 3, act="relu")
        self.reg_tower = ConvBN(width, width, 3, act="relu")
        self.cls = nn.Conv2d(width, num_classes, 1)
        self.reg = nn.Conv2d(width, 5, 1)
        nn.init.constant_(self.cls.bias, -4.6)  # prior 0.01 (focal loss, Lin et al. ICCV 2017)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.01)
        nn.init.zeros_(self.reg.bias)

    def forward(self, x):
        return torch.cat([self.reg(self.reg_tower(x)), self.cls(self.cls_tower(x))], 1)


class Detector(nn.Module):
    """Backbone -> FPN-lite -> one decoupled head per level. ``backbone`` (default: the RepVGG one of ``widths`` /
    ``depths``) returns the stride-8 and stride-16 maps of ``feat_channels`` channels (other backbones:
    :mod:`edgekit.models.detector_hybrid`)."""

    def __init__(self, widths=(16, 32, 48, 64), depths=(1, 2, 2, 2), neck: int = 48, num_classes: int = 10,
                 packed: bool = True, backbone: nn.Module | None = None,
                 feat_channels: tuple[int, int] | None = None, upsample: str = "resize") -> None:
        super().__init__()
        self.backbone = Backbone(widths, depths) if backbone is None else backbone
        self.neck = FPNLite(feat_channels or (widths[2], widths[3]), neck, upsample)
        self.head = nn.ModuleList(DecoupledHead(neck, num_classes) for _ in STRIDES)
        self.packed = packed
        self.num_classes = num_classes

    def forward(self, x):
        levels = [head(f) for head, f in zip(self.head, self.neck(self.backbone(x)))]
        if not self.packed:
            return tuple(levels)
        return torch.cat([lv.flatten(2) for lv in levels], 2)


@register_model("detector", description="FCOS-style anchor-free detector: RepVGG backbone, FPN-lite, decoupled head "
                "(strides 8/16; trained on digits-det 64x64)", family="cnn", task="detection",
                sizes={"digits": (3, 64, 64), "224": (3, 320, 320)}, epochs=30, lr=2e-3)
def detector(size: str = "digits", num_classes: int = 10) -> nn.Module:
    if size == "digits":
        return Detector(num_classes=num_classes)
    return Detector(widths=(32, 64, 96, 128), depths=(1, 2, 3, 2), neck=96, num_classes=num_classes)
