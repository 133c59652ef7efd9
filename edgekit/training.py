"""Training, fine-tuning and evaluation on a :class:`~edgekit.data.DataBundle` (CPU, seeded)."""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.nn_utils import eval_mode, train_mode
from edgekit.data import DataBundle, Split
from edgekit.errors import UserInputError
from edgekit.outputs import logits
from edgekit.progress import task, track


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Logits of ``model`` on ``x``; a tuple / dict / ModelOutput output gives its first tensor (see edgekit.outputs)."""
    eval_mode(model)
    starts = range(0, len(x), batch_size)
    return torch.cat([logits(model(x[i : i + batch_size])) for i in track(starts, "evaluating")])


def evaluate(model: nn.Module, split: Split, batch_size: int = 128) -> float | None:
    """Top-1 accuracy (0..1) on a labeled split; None for unlabeled data."""
    if split.y is None:
        return None
    logits = predict(model, split.x, getattr(split, "batch_size", None) or batch_size)  # a streamed split sets its own
    if logits.dim() != 2 or logits.shape[0] != len(split):
        raise UserInputError(f"model output has shape {tuple(logits.shape)}; accuracy needs (N, classes) logits")
    return float((logits.argmax(1) == split.y).float().mean())


def train(
    model: nn.Module,
    data: DataBundle,
    epochs: int,
    lr: float = 3e-3,
    seed: int = 0,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    label_smoothing: float = 0.0,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    step_hook: Callable[[nn.Module, int], None] | None = None,
    description: str = "training",
) -> dict[str, Any]:
    """Train ``model`` in place with AdamW and a cosine schedule; returns a history dict.

    ``teacher`` + ``distill_weight`` add a distillation term (classification: KL of the logits; another task:
    its ``distill_loss``, e.g. detection's soft scores and boxes), weighted ``(1 - w) * loss + w * distill``; ``step_hook(model, step)`` runs after every
    optimizer step (mask updates, schedules). Light augmentation (random shifts) on the train split.
    """
    from edgekit.tasks import task_of

    data_task = task_of(data)  # detection: its own loss on (outputs, target dicts), no shift augmentation
    classify = data_task.name == "classification"
    if data.train.y is None and classify:
        raise UserInputError(f"training needs labeled data; {data.name} has no labels")
    seed_everything(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if teacher is not None:
        eval_mode(teacher)
    history: dict[str, Any] = {"loss": [], "epochs": epochs, "lr": lr, "seed": seed}
    t0 = time.perf_counter()
    step = 0
    with task(description, total) as advance:
        for epoch in range(epochs):
            train_mode(model)
            running = 0.0
            for xb, yb in data.train.batches(batch_size, shuffle=True, seed=seed * 1000 + epoch):
                if not classify:  # the task's loss, and its distillation term from the teacher's raw outputs
                    out = model(xb)
                    loss = data_task.loss(out, yb, xb)
                    if teacher is not None and distill_weight > 0:
                        with torch.no_grad():
                            t_out = teacher(xb)
                        loss = (1 - distill_weight) * loss + distill_weight * data_task.distill_loss(out, t_out, xb)
                else:
                    xb = _shift(xb, seed * 7919 + step)
                    out = logits(model(xb))
                    loss = F.cross_entropy(out, yb, label_smoothing=label_smoothing)
                if classify and teacher is not None and distill_weight > 0:
                    with torch.no_grad():
                        t_logits = logits(teacher(xb))
                    kd = F.kl_div(F.log_softmax(out, 1), F.softmax(t_logits, 1), reduction="batchmean")
                    loss = (1 - distill_weight) * loss + distill_weight * kd
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if step_hook is not None:
                    step_hook(model, step)
                running += loss.item()
                advance(1)
            history["loss"].append(running / steps_per_epoch)
    eval_mode(model)
    history["seconds"] = time.perf_counter() - t0
    history["steps"] = step
    return history


def _shift(x: torch.Tensor, seed: int, max_shift: int | None = None) -> torch.Tensor:
    """Random translation by up to 1/8 of the image size (a cheap, label-preserving augmentation)."""
    h = x.shape[-1]
    m = max_shift if max_shift is not None else max(1, h // 8)
    g = torch.Generator().manual_seed(seed)
    dx, dy = (int(v) for v in torch.randint(-m, m + 1, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def finetune_copy(model: nn.Module, data: DataBundle, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a deep copy; the input model is left as it was."""
    model = copy.deepcopy(model)
    return model, train(model, data, **kw)
