"""Runner overhead: edgekit's profiled median vs. a bare loop calling onnxruntime directly (same model,
same session options, same input), interleaved in one run. Issue 7 asks for edgekit within 5%.

    flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.runner_overhead
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import command_line, machine_note, markdown_table, write_section  # noqa: E402


def bare_median_ms(model: Path, shape: list[int], threads: int, seconds: float) -> tuple[float, int]:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t_end = time.perf_counter() + 0.5
    while time.perf_counter() < t_end:  # warm-up, as the runner does
        sess.run(None, {name: x})
    samples = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter_ns()
        sess.run(None, {name: x})
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(samples), len(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from edgekit.devices import read_artifact
    from edgekit.devices.profile import ProfileOptions, profile
    from edgekit.devices.spec import LocalDevice
    from tests.device_artifacts import make_onnx_artifact

    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        art = read_artifact(make_onnx_artifact(Path(tmp) / "tiny", shape=(3, 64, 64), width=16))
        shape = art.input_shape
        opts = ProfileOptions(threads=args.threads, budget_s=args.seconds, warmup_s=0.5, target_rel_ci=0.0,
                              idle_s=0.0, validate=False)
        for i in range(args.rounds):
            bare, n_bare = bare_median_ms(art.root / art.model_file, shape, args.threads, args.seconds)
            res = profile(art, LocalDevice(name="local"), opts)
            ek = res.latency_ms.median
            ratios.append(ek / bare)
            rows.append([i + 1, bare, n_bare, ek, res.samples.n, ek / bare])
            print(f"round {i + 1}: bare {bare:.4f} ms ({n_bare} runs), edgekit {ek:.4f} ms "
                  f"({res.samples.n} runs), ratio {ek / bare:.3f}", flush=True)
    med = statistics.median(ratios)
    verdict = "within" if abs(med - 1) <= 0.05 else "NOT within"
    md = (f"## Runner overhead (issue 7)\n\n`{command_line()}`\n\nMachine: {machine_note()}. Model: tiny conv net "
          f"1x3x64x64 (ONNX, onnxruntime, {args.threads} threads), {args.seconds:.0f} s per measurement, "
          "bare loop and `edgekit.devices.profile` (local transport: runner in a subprocess) interleaved.\n\n"
          + markdown_table(["round", "bare median ms", "bare runs", "edgekit median ms", "edgekit runs",
                            "edgekit / bare"], rows)
          + f"\n\nMedian ratio **{med:.3f}**: edgekit's median is {verdict} 5% of the bare loop.\n")
    print(md)
    if not args.no_write:
        write_section("runner_overhead", md)


if __name__ == "__main__":
    main()
