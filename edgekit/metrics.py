"""Model figures: parameters, storage size, MACs per layer, output shapes, latency and output fidelity.

Before/after latency is compared with :func:`compare_latency`: both models timed interleaved in one loop,
medians with a bootstrap confidence interval of their ratio (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, percentile interval); tails (p90, p99) are reported as values, never as ratios.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from edgekit.nn_utils import eval_mode
from edgekit.records import LatencyComparison


def count_params(model: nn.Module) -> int:
    """Number of weights. A module that stores its weights packed in buffers (int8, 1-bit) reports its
    logical count through a ``param_count()`` method, and its children are skipped."""
    seen: set[int] = set()

    def visit(mod: nn.Module) -> int:
        fn = getattr(mod, "param_count", None)
        if callable(fn) and mod is not model:
            return int(fn())
        total = 0
        for t in mod.parameters(recurse=False):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel()
        return total + sum(visit(child) for child in mod.children())

    return visit(model)


def storage_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take when deployed.

    A module that defines ``storage_bytes()`` (int8 or 1-bit layers) is counted by it and its children are
    skipped; every other parameter and buffer counts ``numel * element_size``.
    """

    def visit(mod: nn.Module) -> int:
        fn = getattr(mod, "storage_bytes", None)
        if callable(fn) and mod is not model:
            return int(fn())
        own = sum(t.numel() * t.element_size() for t in mod.parameters(recurse=False))
        own += sum(t.numel() * t.element_size() for t in mod.buffers(recurse=False))
        return own + sum(visit(child) for child in mod.children())

    return visit(model)


def layer_table(model: nn.Module, example: torch.Tensor) -> tuple[int, list[dict[str, Any]]]:
    """Total MACs and a per-leaf-module table (name, type, output shape, params, MACs).

    MACs come from PyTorch's FlopCounterMode (aten-level: convs, matmuls, attention), so functional calls
    are counted too; a module's MACs are what ran inside it.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shapes: dict[str, list[int]] = {}
    hooks = []
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    for name, mod in leaves:
        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor):
                shapes[name] = list(out.shape)
        hooks.append(mod.register_forward_hook(hook))
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            eval_mode(model)(example)
    finally:
        for h in hooks:
            h.remove()
    flops = counter.get_flop_counts()
    total = sum(flops.get("Global", {}).values()) // 2
    model_key = next((k for k in flops if k != "Global" and "." not in k), None)
    rows = []
    for name, mod in leaves:
        key = f"{model_key}.{name}" if model_key else name
        macs = sum(flops.get(key, {}).values()) // 2
        rows.append(
            {
                "name": name,
                "type": type(mod).__name__,
                "output_shape": shapes.get(name),
                "params": sum(p.numel() for p in mod.parameters(recurse=False)),
                "macs": int(macs),
            }
        )
    return int(total), rows


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        eval_mode(model)(example)
    return int(counter.get_total_flops() // 2)


def _pct(s: list[float], q: float) -> float:
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def summarize_ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median": statistics.median(s), "p90": _pct(s, 0.9), "p99": _pct(s, 0.99), "min": s[0], "runs": len(s)}


def bootstrap_ratio_ci(before: list[float], after: list[float], confidence: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(after) / median(before) (each sample resampled on its own)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    ma = np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], axis=1)
    ratios = mb / np.maximum(ma, 1e-12)
    tail = (1.0 - confidence) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


def compare_latency(before_fn: Callable[[], object], after_fn: Callable[[], object], runs: int = 50, warmup: int = 10,
                    confidence: float = 0.95, n_boot: int = 2000, seed: int = 0,
                    clock: Callable[[], float] = time.perf_counter) -> LatencyComparison:
    """Time ``before_fn`` and ``after_fn`` interleaved in one loop (ABBA order, so neither always runs first
    or second), ``runs`` timed calls each after ``warmup`` each; medians, p90/p99 and a bootstrap CI of the
    median ratio after/before. Load drifts hit both sides alike instead of one of them."""
    if runs < 2 or warmup < 0 or not 0 < confidence < 1:
        from edgekit.errors import UserInputError

        raise UserInputError(f"runs={runs}, warmup={warmup}, confidence={confidence}: need runs >= 2, warmup >= 0, 0 < confidence < 1")
    for _ in range(warmup):
        before_fn()
        after_fn()
    samples: dict[int, list[float]] = {0: [], 1: []}
    fns = (before_fn, after_fn)
    for i in range(runs):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = clock()
            fns[k]()
            samples[k].append((clock() - t0) * 1e3)
    b, a = summarize_ms(samples[0]), summarize_ms(samples[1])
    low, high = bootstrap_ratio_ci(samples[0], samples[1], confidence, n_boot, seed)
    return LatencyComparison(b, a, a["median"] / max(b["median"], 1e-12), low, high, confidence)


def time_callable(fn: Callable[[], object], runs: int = 50, warmup: int = 10) -> dict[str, float]:
    """Call ``fn`` ``warmup`` + ``runs`` times; median, p90 and min (ms) of the timed calls."""
    if runs < 1 or warmup < 0:
        from edgekit.errors import UserInputError

        raise UserInputError(f"runs={runs}, warmup={warmup}: need runs >= 1 and warmup >= 0")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize_ms(samples)


@torch.inference_mode()
def torch_latency(model: nn.Module, example: torch.Tensor, runs: int = 50, warmup: int = 10, threads: int | None = None) -> dict[str, float]:
    """Batch-as-given latency of eager PyTorch on the local CPU, in milliseconds."""
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        eval_mode(model)
        return time_callable(lambda: model(example), runs, warmup)
    finally:
        torch.set_num_threads(prev)


def measure_latency(model: nn.Module, example: torch.Tensor, runtime: str = "torch", runs: int = 50, warmup: int = 10, threads: int = 2) -> dict[str, Any]:
    """Latency of ``model`` on ``runtime``: :func:`edgekit.exporters.latency.measure_latency` (the one latency function)."""
    from edgekit.exporters.latency import measure_latency as _measure

    return _measure(model, example, runtime, threads=threads, runs=runs, warmup=warmup)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flat tensors, scaled first: no eps clamp (cosine_similarity reads ~0 for tiny
    identical logits); identical -> 1, a zero vector against a non-zero one -> 0."""
    if torch.equal(a, b):
        return 1.0
    scale = torch.maximum(a.abs().max(), b.abs().max()).clamp_min(torch.finfo(a.dtype).tiny)
    a, b = a / scale, b / scale
    na, nb = a.norm(), b.norm()
    return float((a @ b) / (na * nb)) if na > 0 and nb > 0 else 0.0


@torch.no_grad()
def fidelity(reference: nn.Module, model: nn.Module, x: torch.Tensor, batch_size: int = 32, n: int | None = None) -> dict[str, float]:
    """Cosine similarity and max abs difference of the outputs (flattened over the batch) on the first ``n``
    samples of ``x`` (all by default).

    ``x`` may be a lazy split (``split.x`` of a streamed split): samples are read ``batch_size`` at a time and
    only the outputs are kept, so memory is bounded by the batch (224x224 inputs add up)."""
    eval_mode(reference), eval_mode(model)
    n = len(x) if n is None else min(n, len(x))
    ya, yb = [], []
    for i in range(0, n, batch_size):
        c = x[i : min(i + batch_size, n)]
        ya.append(reference(c))
        yb.append(model(c))
    ya, yb = torch.cat(ya), torch.cat(yb)
    a, b = ya.double().flatten(), yb.double().flatten()
    out = {"cosine": cosine(a, b), "max_abs": float((a - b).abs().max())}
    if ya.dim() == 2:
        out["top1_agreement"] = float((ya.argmax(1) == yb.argmax(1)).float().mean())
    return out
