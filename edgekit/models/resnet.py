"""ResNet-50-shaped model ("Deep Residual Learning for Image Recognition", He et al., CVPR 2016): bottleneck
blocks [3, 4, 6, 3] built from ConvBN. The 224 configuration is ResNet-50 (widths 64..512, expansion 4);
the digits configuration is the same depth at 1/8 width with a 3x3 stem and no max-pool."""

from __future__ import annotations

from torch import nn

from edgekit.models import register_model
from edgekit.ops import ConvBN


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = ConvBN(cin, width, 1, act="relu")
        self.conv2 = ConvBN(width, width, 3, stride, act="relu")
        self.conv3 = ConvBN(width, cout, 1)
        self.downsample = ConvBN(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.downsample(x))


class ResNet(nn.Module):
    def __init__(self, base: int, depths=(3, 4, 6, 3), stem: str = "imagenet", num_classes: int = 10) -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(ConvBN(3, base, 7, 2, act="relu"), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = ConvBN(3, base, 3, 1, act="relu")
        layers, cin = [], base
        for i, d in enumerate(depths):
            width = base * 2**i
            blocks = []
            for j in range(d):
                blocks.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * Bottleneck.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.pool(x).flatten(1))


@register_model("resnet50", description="ResNet-50-shaped bottleneck network [3,4,6,3] (digits: 1/8 width)",
                family="cnn", epochs=6, lr=3e-3)
def resnet50(size: str = "digits", num_classes: int = 10) -> nn.Module:
    if size == "digits":
        return ResNet(8, stem="small", num_classes=num_classes)
    return ResNet(64, stem="imagenet", num_classes=num_classes)
