"""Latency of a model on an inference runtime (batch 1, a fixed thread count): median and p90 in milliseconds.

Used by the compress pipeline (before/after latency on the runtime a recipe names) and by
``benchmarks/runtimes.py``. The model is exported to a temporary ONNX file (and, for OpenVINO, compiled from
it) so the number is what a deployed artifact would see, not eager PyTorch.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Callable, Iterator


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
    """Median / p90 latency (ms) of ``model`` on ``runtime`` for ``example`` (batch 1 is used): the one latency
    function of edgekit (the pipeline interleaves two :func:`latency_runner` calls instead, see
    ``edgekit.metrics.compare_latency``).

    ``runtime``: ``torch`` (eager), ``onnxruntime`` (CPU EP), ``openvino`` (CPU plugin) or ``tvm`` (Relax VM,
    llvm for the host). Returns ``{"median", "p90", "runs", "runtime", "threads"}``.
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-latency-") as tmp, latency_runner(model, example, runtime, threads, Path(tmp)) as run:
        res = time_callable(run, runs, warmup)
    return {**res, "runtime": runtime, "threads": threads}


@contextlib.contextmanager
def latency_runner(model: nn.Module, example: torch.Tensor, runtime: str, threads: int, workdir: Path) -> Iterator[Callable[[], object]]:
    """A no-argument callable that runs ``model`` once on ``runtime`` (batch 1, ``threads`` threads).

    Non-torch runtimes run the model's ONNX graph (written into ``workdir``), so the time is what a deployed
    artifact would see, not eager PyTorch.
    """
    if runtime not in latency_runtimes():
        raise UserInputError(f"runtime {runtime!r}: accepted: {', '.join(latency_runtimes())}")
    if threads < 1:
        raise UserInputError(f"threads={threads}: need at least 1")
    x = example[:1].detach().float().contiguous()
    if runtime == "torch":
        from edgekit.exporters.torch2onnx import safe_eval

        model = safe_eval(model)
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)

        def run() -> object:
            with torch.inference_mode():
                return model(x)

        try:
            yield run
        finally:
            torch.set_num_threads(prev)
        return
    from edgekit.exporters.torch2onnx import to_onnx

    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = to_onnx(model, x, workdir / "model.onnx")
    yield file_runner(onnx_path, x.numpy(), runtime, threads)


def file_runner(
    path: Path, x: np.ndarray, runtime: str, threads: int = 2, ort_spinning: bool = True
) -> Callable[[], object]:
    """A no-argument callable running an ONNX file once on ``onnxruntime`` / ``openvino`` / ``tvm``
    (``ort_spinning``: see :func:`edgekit.exporters.runtimes.ort_session`), for timing: OpenVINO is called
    zero-copy, so what it returns views the request's own buffers (copy it to keep it past the next call)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if runtime == "onnxruntime":
        sess = ort_session(path, threads, spinning=ort_spinning)
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: x})
    if runtime == "openvino":
        request = openvino_compiled(path, threads).create_infer_request()
        return lambda: request.infer({0: x}, share_inputs=True, share_outputs=True)  # zero-copy, as deployed
    if runtime == "tvm":
        from edgekit.exporters.tvm import compile_onnx_for_host

        run = compile_onnx_for_host(path, x.shape, threads=threads)
        return lambda: run(x)
    raise UserInputError(f"runtime {runtime!r}: accepted for files: onnxruntime, openvino, tvm")


def measure_file_latency(
    path: Path, x: np.ndarray, runtime: str, threads: int = 2, runs: int = 50, warmup: int = 10
) -> dict:
    """Latency of an ONNX file on ``onnxruntime`` / ``openvino`` / ``tvm`` (compiled on the fly)."""
    return time_callable(file_runner(path, x, runtime, threads), runs, warmup)

