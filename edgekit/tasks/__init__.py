"""Tasks: what a model's outputs mean, and so how it is trained, scored and compared.

A :class:`Task` owns four things that the stages and exporters must not know about:

- its **data format**: what a split's targets are (class indices; for detection a list of ``{"boxes",
  "labels"}`` dicts, boxes ``x1,y1,x2,y2`` in input pixels);
- its **loss** for fine-tuning (``loss(outputs, targets)``) and, where defined, its distillation term from a
  teacher's outputs (``distill_loss(outputs, teacher_outputs, inputs)``; detection: soft scores and boxes);
- its **metric** (``evaluate(model, split) -> {name: value}``; the first key is the headline figure: top-1 for
  classification, COCO mAP@[.5:.95] for detection);
- its **fidelity** measure of a compressed model against the reference (``fidelity(reference, model, x, n)``):
  cosine of the raw outputs for every task, plus what agreement means for the task (top-1 agreement; for
  detection, matched boxes' IoU and score agreement after decoding); ``compare_outputs(actual, reference, hw)``
  gives the same agreement for raw outputs, which export validation judges (``exporters.validation.task_checks``).

Tasks are found by name in :data:`TASKS` (an :class:`edgekit.registry.Registry` filled from the modules of
this package); a :class:`~edgekit.data.DataBundle` names its task (``bundle.task``).

Adding segmentation is one new module ``edgekit/tasks/segmentation.py``: a ``Task`` subclass with a target
format (an ``H x W`` int64 mask per sample), a loss (per-pixel cross-entropy), a metric (mean IoU over
classes) and a fidelity (pixel agreement of the argmax maps), registered with ``@register_task("segmentation")``.
Nothing else changes: the pipeline asks the bundle's task for its figures, the stages see tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgekit.registry import Registry


class Task:
    """Base of every task; subclasses override the four parts (see the module docstring)."""

    name = "task"
    metric_names: tuple[str, ...] = ()

    def evaluate(self, model: nn.Module, split: Any) -> dict[str, float | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def distill_loss(self, outputs: Any, teacher_outputs: Any, inputs: torch.Tensor) -> torch.Tensor:
        """Distillation term pulling a student's raw outputs towards a teacher's (fine-tuning after compression)."""
        raise NotImplementedError(f"task {self.name!r} defines no distillation loss")

    def fidelity(self, reference: nn.Module, model: nn.Module, x: Any, n: int | None = None,
                 batch_size: int = 32) -> dict[str, Any]:
        from edgekit.metrics import fidelity

        return fidelity(reference, model, x, batch_size=batch_size, n=n)


TASKS: Registry[Task] = Registry("task", lazy=[("edgekit.tasks", "[!_]*")])


def register_task(name: str):
    """Class decorator: register an instance of a :class:`Task` subclass under ``name``."""

    def decorator(cls):
        TASKS.add(name, cls())
        return cls

    return decorator


def get_task(name: str) -> Task:
    return TASKS.get(name)


def task_of(data: Any) -> Task:
    """The task of a :class:`~edgekit.data.DataBundle` (``bundle.task``; classification when it says none)."""
    return get_task(getattr(data, "task", None) or "classification")


def default_data(info: Any) -> str | None:
    """The data a model is compressed with when none is given: a zoo model of another task names its
    built-in set (detection: ``digits-det``); None means the built-in digits."""
    source = str(getattr(info, "source", None) or "")
    if not source.startswith("zoo:"):
        return None
    from edgekit import models

    entry = models.MODELS.get(source[4:])
    return DEFAULT_DATA.get(entry.task)


DEFAULT_DATA = {"detection": "digits-det"}
