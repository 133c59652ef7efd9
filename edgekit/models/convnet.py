"""A small plain CNN (conv-BN-ReLU stages): the default zoo model and the foundation's fusion test case."""

from __future__ import annotations

from torch import nn

from edgekit.models import register_model


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        layers, cin = [], 3
        for i, w in enumerate(widths):
            layers += [_block(cin, w, 1 if i == 0 else 2), _block(w, w, 1)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


@register_model("convnet", description="plain 6-layer conv-BN-ReLU CNN (default model)", family="cnn", epochs=15, lr=3e-3)
def convnet(size: str = "digits", num_classes: int = 10) -> nn.Module:
    return ConvNet(num_classes, (16, 32, 64) if size == "digits" else (32, 64, 128))
