"""Per-layer MACs, time and MACs per second (MACpS), CPUBone's efficiency measure.

CPUBone ("CPUBone: Efficient Vision Backbone Design for Devices with Low Parallelization Capabilities")
models CPU latency as MACs / MACpS: a layer with a low MACpS (depthwise convs, small matmuls, memory-bound
ops) costs more time than its MACs suggest. ``layer_macps`` measures both for every leaf module, so
``edgekit inspect --timing`` can show where a model runs inefficiently.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn


def layer_macps(model: nn.Module, example: torch.Tensor, runs: int = 10, warmup: int = 3) -> list[dict[str, Any]]:
    """One row per leaf module in execution order: name, type, macs, seconds (median per forward), macps.

    MACs come from :func:`edgekit.metrics.layer_table` (FlopCounterMode, aten level). Seconds are wall time
    between forward pre- and post-hooks, summed over the calls of one forward, median over ``runs`` forwards
    of ``example``. ``macps`` is None for layers without MACs.
    """
    from edgekit.metrics import layer_table

    _, table = layer_table(model, example)
    macs = {row["name"]: row["macs"] for row in table}
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    starts: dict[str, float] = {}
    current: dict[str, float] = {}
    samples: dict[str, list[float]] = {n: [] for n, _ in leaves}
    order: list[str] = []
    hooks = []
    for name, mod in leaves:
        def pre(_m, _i, name=name):
            starts[name] = time.perf_counter()

        def post(_m, _i, _o, name=name):
            current[name] = current.get(name, 0.0) + time.perf_counter() - starts[name]
            if name not in order:
                order.append(name)

        hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(warmup + runs):
                current.clear()
                model(example)
                if i >= warmup:
                    for name in current:
                        samples[name].append(current[name])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    types = dict(leaves)
    rows = []
    for name in order:
        seconds = statistics.median(samples[name]) if samples[name] else 0.0
        m = int(macs.get(name, 0))
        rows.append({"name": name, "type": type(types[name]).__name__, "macs": m, "seconds": seconds,
                     "macps": (m / seconds) if m and seconds > 0 else None})
    return rows
