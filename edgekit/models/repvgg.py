"""RepVGG ("RepVGG: Making VGG-style ConvNets Great Again", Ding et al., CVPR 2021): a plain stack of
:class:`~edgekit.ops.RepConv` blocks (3x3 + 1x1 + identity branches) that reparameterizes into a VGG of 3x3
convs. The 224 configuration is RepVGG-A0 (widths 48/96/192/1280, depths 1/2/4/14/1)."""

from __future__ import annotations

from torch import nn

from edgekit.models import register_model
from edgekit.ops import RepConv


class RepVGG(nn.Module):
    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], num_classes: int = 10) -> None:
        super().__init__()
        stages, cin = [], 3
        for w, d in zip(widths, depths):
            blocks = [RepConv(cin, w, 3, stride=2)] + [RepConv(w, w, 3) for _ in range(d - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.stages(x)).flatten(1))


@register_model("repvgg", description="RepVGG (RepConv 3x3+1x1+identity, reparameterizes to plain 3x3 convs)",
                family="cnn", epochs=15, lr=3e-3)
def repvgg(size: str = "digits", num_classes: int = 10) -> nn.Module:
    if size == "digits":
        return RepVGG((16, 32, 64, 96), (1, 2, 2, 1), num_classes)
    return RepVGG((48, 48, 96, 192, 1280), (1, 2, 4, 14, 1), num_classes)
