"""Classification: targets are class indices, the loss is cross-entropy, the metric top-1 accuracy and the
fidelity the cosine of the logits plus top-1 agreement (what edgekit did before tasks existed; it wraps
:mod:`edgekit.training` and :func:`edgekit.metrics.fidelity`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.tasks import Task, register_task


@register_task("classification")
class Classification(Task):
    name = "classification"
    metric_names = ("top1",)

    def evaluate(self, model: nn.Module, split: Any) -> dict[str, float | None]:
        from edgekit.training import evaluate

        return {"top1": evaluate(model, split)}

    def loss(self, outputs: Any, targets: Any, inputs: torch.Tensor | None = None) -> torch.Tensor:
        from edgekit.outputs import logits

        return F.cross_entropy(logits(outputs), targets)
