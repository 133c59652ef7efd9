"""Model figures: parameters, storage size, MACs per layer, output shapes, latency and output fidelity."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from edgekit.nn_utils import eval_mode


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


def summarize_ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return {"median": statistics.median(s), "p90": p90, "min": s[0], "runs": len(s)}


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
    if runtime == "torch":
        out = torch_latency(model, example, runs, warmup, threads)
    else:
        from edgekit.exporters import measure_latency as runtime_latency

        out = dict(runtime_latency(model, example, runtime=runtime, threads=threads, runs=runs, warmup=warmup))
    out["runtime"] = runtime
    return out


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
def fidelity(reference: nn.Module, model: nn.Module, x: torch.Tensor, batch_size: int = 32) -> dict[str, float]:
    """Cosine similarity and max abs difference of the outputs (flattened over the batch).

    Runs ``batch_size`` samples at a time, so memory is bounded by the batch (224x224 activations add up)."""
    eval_mode(reference), eval_mode(model)
    chunks = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    ya = torch.cat([reference(c) for c in chunks])
    yb = torch.cat([model(c) for c in chunks])
    a, b = ya.double().flatten(), yb.double().flatten()
    out = {"cosine": cosine(a, b), "max_abs": float((a - b).abs().max())}
    if ya.dim() == 2:
        out["top1_agreement"] = float((ya.argmax(1) == yb.argmax(1)).float().mean())
    return out
