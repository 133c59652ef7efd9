"""Reproduce the zoo detector's checkpoint: ``python -m edgekit.models.detector_train`` (or ``edgekit zoo train
detector``).

Trains the registered settings (``register_model(..., epochs=, lr=)``) on the built-in ``digits-det`` data at
the model's ``digits`` input shape with :func:`edgekit.training.train` (the detection task's FCOS loss), seeded,
and writes the state_dict atomically to ``edgekit/models/checkpoints/<name>.pt``; prints COCO mAP on the test
split.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from edgekit import models as zoo


def train_detector(name: str = "detector", epochs: int | None = None, seed: int = 0, out: Path | None = None,
                   batch_size: int = 32) -> dict[str, Any]:
    from edgekit.models._train import _save_atomic
    from edgekit.tasks import get_task
    from edgekit.tasks.detection_data import digits_detection
    from edgekit.training import train

    meta = zoo.info(name)
    settings = dict(meta.train)
    epochs = int(settings.pop("epochs", 24) if epochs is None else epochs)
    settings.pop("epochs", None)
    data = digits_detection(meta.input_shape("digits"), seed=0)
    torch.manual_seed(seed)
    model = zoo.create(name, pretrained=False, size="digits", num_classes=data.num_classes)
    t0 = time.perf_counter()
    settings.setdefault("weight_decay", 1e-4)
    train(model, data, epochs=epochs, seed=seed, batch_size=batch_size, description=f"training {name}", **settings)
    seconds = time.perf_counter() - t0
    metrics = get_task("detection").evaluate(model, data.test)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    _save_atomic(state, out or meta.checkpoint)
    return {"name": name, **metrics, "epochs": epochs, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="detector")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = train_detector(args.name, args.epochs, args.seed, args.out)
    print(f"{r['name']}: mAP@[.5:.95] {r['map']:.4f}, mAP@.5 {r['map50']:.4f} on digits-det test after "
          f"{r['epochs']} epochs in {r['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
