"""Pieces several zoo families share."""

from __future__ import annotations

from torch import nn


class PooledNormHead(nn.Module):
    """Base of staged backbones: ``features`` -> global average pool -> LayerNorm -> linear ``head``.

    Subclasses build their stages and call :meth:`_finish`; the attribute names (features, pool, norm, head)
    are what the shipped checkpoints and the ``ignore`` patterns of recipes refer to.
    """

    def _finish(self, layers: list[nn.Module], width: int, num_classes: int) -> None:
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.norm(self.pool(self.features(x)).flatten(1)))
