"""MobileNetV2 ("MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler et al., CVPR 2018) built
from :class:`~edgekit.ops.InvertedResidual` and ConvBN. The 224 configuration is width 1.0."""

from __future__ import annotations

from torch import nn

from edgekit.models import register_model
from edgekit.ops import ConvBN, InvertedResidual

# (expand ratio t, channels c, repeats n, first stride s)
_CFG_224 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_CFG_DIGITS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2), (4, 96, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, cfg, stem: int, stem_stride: int, last: int, num_classes: int = 10) -> None:
        super().__init__()
        layers = [ConvBN(3, stem, 3, stem_stride, act="relu6")]
        cin = stem
        for t, c, n, s in cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBN(cin, last, 1, act="relu6"))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


@register_model("mobilenetv2", description="MobileNetV2 (inverted residuals, depthwise 3x3)", family="cnn",
                epochs=15, lr=3e-3)
def mobilenetv2(size: str = "digits", num_classes: int = 10) -> nn.Module:
    if size == "digits":
        return MobileNetV2(_CFG_DIGITS, 16, 1, 256, num_classes)
    return MobileNetV2(_CFG_224, 32, 2, 1280, num_classes)
