"""A model written outside the zoo, loaded by tests as ``tests.core_models:small_net``."""

import torch.nn.functional as F
from torch import nn


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def small_net() -> nn.Module:
    return SmallNet()


def not_a_module():
    return 42
