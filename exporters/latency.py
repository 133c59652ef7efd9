"""Latency of a model on an inference runtime (batch 1, a fixed thread count): median and p90 in milliseconds.

Used by the compress pipeline (before/after latency on the runtime a recipe names) and by
``benchmarks/runtimes.py``. The model is exported to a temporary ONNX file (and, for OpenVINO, compiled from
it) so the number is what a deployed artifact would see, not eager PyTorch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


import numpy as np
import torch
from torch import nn

from edgekit.errors import UserInputError
from edgekit.metrics import time_callable  # noqa: F401 - re-exported for benchmarks

from edgekit.exporters.runtimes import latency_runtimes, openvino_compiled, ort_session  # noqa: F401 (re-exported)


def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    runtime: str,
    threads: int = 2,
    runs: int = 50,
    warmup: int = 10,
) -> dict:
    """Median / p90 latency (ms) of ``model`` on ``runtime`` for ``example`` (batch 1 is used).

    ``runtime``: ``torch`` (eager), ``onnxruntime`` (CPU EP), ``openvino`` (CPU plugin) or ``tvm`` (Relax VM,
    llvm for the host). Returns ``{"median", "p90", "runs", "runtime", "threads"}``.
    """
    if runtime not in latency_runtimes():
        raise UserInputError(f"runtime {runtime!r}: accepted: {', '.join(latency_runtimes())}")
    if threads < 1:
        raise UserInputError(f"threads={threads}: need at least 1")
    x = example[:1].detach().float().contiguous()
    if runtime == "torch":
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                from edgekit.exporters.torch2onnx import safe_eval

                model = safe_eval(model)
                res = time_callable(lambda: model(x), runs, warmup)
        finally:
            torch.set_num_threads(prev)
    else:
        from edgekit.exporters.torch2onnx import to_onnx

        with tempfile.TemporaryDirectory(prefix="edgekit-latency-") as tmp:
            onnx_path = to_onnx(model, x, Path(tmp) / "model.onnx")
            res = measure_file_latency(onnx_path, x.numpy(), runtime, threads, runs, warmup)
    return {**res, "runtime": runtime, "threads": threads}


def measure_file_latency(
    path: Path, x: np.ndarray, runtime: str, threads: int = 2, runs: int = 50, warmup: int = 10
) -> dict:
    """Latency of an ONNX file on ``onnxruntime`` / ``openvino`` / ``tvm`` (compiled on the fly)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if runtime == "onnxruntime":
        sess = ort_session(path, threads)
        name = sess.get_inputs()[0].name
        return time_callable(lambda: sess.run(None, {name: x}), runs, warmup)
    if runtime == "openvino":
        compiled = openvino_compiled(path, threads)
        request = compiled.create_infer_request()
        return time_callable(lambda: request.infer({0: x}), runs, warmup)
    if runtime == "tvm":
        from edgekit.exporters.tvm import compile_onnx_for_host

        run = compile_onnx_for_host(path, x.shape, threads=threads)
        return time_callable(lambda: run(x), runs, warmup)
    raise UserInputError(f"runtime {runtime!r}: accepted for files: onnxruntime, openvino, tvm")
