"""The zoo detector on the hybrid ViT backbone (``detector-hybrid``): the FCOS-style detector of
:mod:`edgekit.models.detector` (same FPN-lite neck, decoupled heads and packed raw outputs) on a Next-ViT-like
backbone built from :mod:`edgekit.models.hybrid`'s blocks (Li et al., "Next-ViT: Next Generation Vision
Transformer for Efficient Deployment in Realistic Industrial Scenarios", 2022): convolution stages at high
resolution, then attention stages (:class:`~edgekit.ops.TransformerBlock` over the feature-map tokens) at the
two levels the head predicts at (strides 8 and 16). The FPN's top-down upsample is written as shape ops
(:func:`~edgekit.models.detector.repeat_upsample`, same values as a nearest resize) so that the I-ViT integer
executor and its ONNX lowering, which have no resize, run the whole detector.

The transformer blocks are where the ViT recipes act: ``ivit-int8`` (I-ViT, Li & Gu ICCV 2023) and
``bivit-w1a*`` (BiViT, He et al. ICCV 2023), the detection head kept in int8 (I-ViT) / float (BiViT, ``head*``).
"""

from __future__ import annotations

from torch import nn

from edgekit.models import register_model
from edgekit.models.detector import Detector
from edgekit.models.hybrid import AttentionStage, ConvBlock
from edgekit.ops import ConvBN


class HybridBackbone(nn.Module):
    """stem (two stride-2 ConvBN) -> conv block -> [down, conv block, attention] at stride 8 -> [down, attention]
    at stride 16; returns the stride-8 and stride-16 maps.

    ``group_channels``: channels per group of the conv blocks' 3x3 (:class:`~edgekit.models.hybrid.ConvBlock`).
    The zoo detector uses 1 (depthwise): structured pruning keeps a grouped conv's group count, so 16-channel
    groups left pruned widths of 22 / 33 channels (off the runtimes' 16-channel blocks: prune-30 ran at 0.96x the
    fp32 latency for 0.60x MACs on ORT, vs 0.80x for 0.68x MACs depthwise); the 16-channel-group variant scored
    mAP 0.547 vs 0.507 depthwise, same training (docs/detection.md)."""

    def __init__(self, widths: tuple[int, int, int, int], attn_depths: tuple[int, int], head_dim: int = 32,
                 group_channels: int = 16) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(ConvBN(3, w0, 3, 2, act="relu"), ConvBN(w0, w1, 3, 2, act="relu"),
                                  ConvBlock(w1, group_channels))
        self.stage3 = nn.Sequential(ConvBN(w1, w2, 3, 2, act="relu"), ConvBlock(w2, group_channels),
                                    AttentionStage(w2, attn_depths[0], max(1, w2 // head_dim)))
        self.stage4 = nn.Sequential(ConvBN(w2, w3, 3, 2, act="relu"),
                                    AttentionStage(w3, attn_depths[1], max(1, w3 // head_dim)))

    def forward(self, x):
        c3 = self.stage3(self.stem(x))
        return c3, self.stage4(c3)


@register_model("detector-hybrid", description="FCOS-style anchor-free detector: hybrid ViT backbone (conv stages, "
                "then TransformerBlocks at strides 8/16), FPN-lite, decoupled head (trained on digits-det 64x64)",
                family="hybrid", task="detection", sizes={"digits": (3, 64, 64), "224": (3, 320, 320)},
                epochs=60, lr=2e-3, weight_decay=0.05)
def detector_hybrid(size: str = "digits", num_classes: int = 10) -> nn.Module:
    widths, attn, neck = ((16, 32, 48, 64), (1, 2), 48) if size == "digits" else ((32, 64, 96, 128), (2, 2), 96)
    return Detector(neck=neck, num_classes=num_classes, backbone=HybridBackbone(widths, attn, group_channels=1),
                    feat_channels=(widths[2], widths[3]), upsample="repeat")
