"""I-ViT latency: fp32 vs integer-only DeiT-Tiny-shaped `vit` (batch 1, 3x224x224) on ONNX Runtime and TVM,
side by side in one run, plus where the integer graph's time goes per ONNX op type (ORT profiling). The integer
graph is checked bit-exact against the fake-integer PyTorch model and free of float ops before it is timed.

Both sides are those of :mod:`benchmarks.deployables` (its ``ivit-int8`` row): the same model and input
(:func:`benchmarks.deployables.reference`), the fp32 graph written by the ``onnx`` export target, ONNX Runtime
sessions whose idle threads sleep (:func:`benchmarks.deployables.ort_runner`), timed round robin
(:func:`benchmarks.deployables.interleaved_ms`). Two sessions in one process that both spin (ONNX Runtime's
default) take the cores from each other between calls: measured 1 Dec, quiet machine, the fp32 graph 25 ms
interleaved with a spinning integer session against 16.5 ms with both sleeping (12.7 ms alone, spinning).

TVM row: both graphs compiled with the zero-trial schedules (:func:`edgekit.quant.ivit.tvm_build.compile_graph`;
the integer graph's matmuls on the VNNI kernel where the CPU has it) and timed round robin in a worker process of
their own (in-process beside the ORT sessions and PyTorch, TVM's thread pool ran both graphs about 2x slower).

    flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.ivit_latency [--no-tvm] [--runs 20] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._report import command_line, machine_note, markdown_table, write_section


def integer_graph(ref, threads: int = 2):
    """The I-ViT integer-only graph of ``ref.model`` (calibrated on ``ref``'s data), checked float-op free and
    bit-exact with the PyTorch integer model on ONNX Runtime, written to ``ref.workdir / "ivit-int8.onnx"``;
    returns ``(proto, integer model, path)`` (built once per ``ref``)."""
    from edgekit.data import load_data
    from edgekit.quant.ivit import checker, onnx_export
    from edgekit.quant.ivit.convert import convert, freeze

    cached = getattr(ref, "_ivit_graph", None)
    if cached is not None:
        return cached
    calib = ref.data.calib.x[:32] if ref.data is not None else load_data(ref.data_spec).calib.x[:4]
    q = freeze(convert(ref.model, calib, batch_size=len(calib), max_batches=1))
    x = torch.from_numpy(ref.x)
    proto = onnx_export.build(q, x)
    floats = checker.float_tensors(proto)
    if floats:
        raise AssertionError(f"I-ViT integer graph has float tensors inside: {floats[:5]}")
    with torch.no_grad():
        exact = np.array_equal(onnx_export.run_onnxruntime(proto, x, threads), q(x).numpy())
    if not exact:
        raise AssertionError("I-ViT integer graph on ONNX Runtime != the PyTorch integer model")
    path = ref.workdir / "ivit-int8.onnx"
    path.write_bytes(proto.SerializeToString())
    ref._ivit_graph = (proto, q, path)
    return ref._ivit_graph


def deployable_row(ref, threads: int = 2):
    """The I-ViT integer-only graph on ONNX Runtime as a :class:`benchmarks.deployables.Deployable`."""
    from benchmarks.deployables import Deployable, onnx_top1, ort_runner

    proto, _, path = integer_graph(ref, threads)
    run = ort_runner(path, threads)
    return Deployable("ivit-int8", "onnxruntime", lambda: run(ref.x), path.stat().st_size, onnx_top1(run, ref.data),
                      f"integer-only graph ({len(proto.graph.node)} nodes), bit-exact with the PyTorch integer "
                      "model, no float op inside; per-op table: python -m benchmarks.ivit_latency")


def tvm_deployable_row(ref, threads: int = 2):
    """The same integer graph compiled by TVM with the zero-trial schedules the fp32 side gets
    (:func:`edgekit.exporters.tvm_schedule.compile_scheduled`: integer matmuls on the VNNI kernel where the CPU
    has it), checked bit-exact with the PyTorch integer model before it is timed."""
    from benchmarks.deployables import Deployable, onnx_top1
    from edgekit.exporters import tvm_int8
    from edgekit.exporters.tvm import host_target, import_onnx, load_vm
    from edgekit.quant.ivit import tvm_build
    from tvm import relax

    proto, q, path = integer_graph(ref, threads)
    counts = tvm_int8.rewrite_integer_graph(  # what the build below rewrites, for the note
        relax.transform.DecomposeOpsForInference()(import_onnx(path, ref.x.shape)), host_target())[1]
    lib = ref.workdir / "ivit-int8-tvm.so"
    tvm_build.compile_graph(proto).export_library(str(lib))
    run = load_vm(lib, threads)
    with torch.no_grad():
        if not np.array_equal(run(ref.x), q(torch.from_numpy(ref.x)).numpy()):
            raise AssertionError("I-ViT integer graph on TVM != the PyTorch integer model")
    ref.worker_files["ivit-int8/tvm"] = ("tvm", lib)
    kernels = (f"{counts['matmuls']} integer matmuls on the uint8 x int8 VNNI kernel" if counts["matmuls"]
               else "integer matmuls in int32 (no AVX-512 VNNI on this CPU)")
    return Deployable("ivit-int8", "tvm", None, lib.stat().st_size, onnx_top1(run, ref.data),
                      f"integer-only graph, bit-exact with the PyTorch integer model; {kernels}, "
                      f"{counts['divisions']} runtime integer divisions in kernels of their own; both sides built "
                      "with the same zero-trial schedules")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-tvm", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write docs/benchmarks.md")
    args = ap.parse_args()
    import onnx

    from benchmarks.deployables import interleaved_ms, ort_runner, reference
    from edgekit.quant.placement_report import ort_kernel_profile

    with tempfile.TemporaryDirectory(prefix="ivit-latency-") as tmp:
        ref = reference("224", 2, Path(tmp))  # DeiT-Tiny-shaped, random init (seed 0), the onnx target's fp32 graph
        row = deployable_row(ref, 2)  # checked float-op free and bit-exact first
        int_path = ref.workdir / "ivit-int8.onnx"
        int_proto, fp_proto = onnx.load(str(int_path)), onnx.load(str(ref.onnx))
        fp_run = ort_runner(ref.onnx, 2)
        load_before = os.getloadavg()[0]
        ort_ms = interleaved_ms({"fp32": lambda: fp_run(ref.x), "I-ViT int": row.run}, args.runs)
        load_after = os.getloadavg()[0]
        ms = {("ort", k): v for k, v in ort_ms.items()}
        if not args.no_tvm:  # both graphs with the zero-trial schedules, timed in a worker process of their own
            from benchmarks.deployables import Worker
            from edgekit.quant.ivit import tvm_build

            libs = {}
            for label, proto in (("fp32", fp_proto), ("I-ViT int", int_proto)):
                t = time.perf_counter()
                libs[label] = ("tvm", ref.workdir / f"tvm-{len(libs)}.so")
                tvm_build.compile_graph(proto).export_library(str(libs[label][1]))
                ms[("tvm-build-s", label)] = time.perf_counter() - t
            worker = Worker(libs, ref.x, 2)
            try:
                tvm_ms = interleaved_ms({k: worker.runner(k) for k in libs}, args.runs)
            finally:
                worker.close()
            ms.update({("tvm", k): v for k, v in tvm_ms.items()})
        # where the integer graph's time goes (ORT's own profiler, kernel ms per run summed per op type)
        per_op = ort_kernel_profile(int_path, ref.x, runs=5, threads=2)
    fallbacks = {p.key: p.value for p in int_proto.metadata_props}.get("int64_fallbacks", "?")
    rows = []
    for rt in ("ort", "tvm"):
        if (rt, "fp32") in ms:
            fp, it = ms[(rt, "fp32")], ms[(rt, "I-ViT int")]
            rows.append([{"ort": "ONNX Runtime 2 threads", "tvm": "TVM, zero-trial schedules (both graphs)"}[rt], fp, it, fp / it])
    total = sum(per_op.values()) or 1.0
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:10]
    md = [
        "## I-ViT latency (integer-only vs fp32, DeiT-Tiny-shaped `vit`, batch 1, 3x224x224)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_note()}. Medians of {args.runs} rounds, fp32 and integer interleaved (the order "
        "reversed every other round); random weights (latency only). The same fp32 graph (the `onnx` export "
        "target's), input and session options (intra-op threads sleep when idle) as the `deployables` "
        f"section. Load average (`uptime`, 1 min) {load_before:.1f} before / {load_after:.1f} after the ORT "
        "runs: on a shared machine, absolute times are inflated under load; the ratio is the figure.",
        "",
        markdown_table(["runtime", "fp32 ms", "I-ViT integer ms", "fp32 / integer"], rows),
        "",
        "History: int64 arithmetic with floor shifts as divisions of values offset by 2**62 and s8 x s8 "
        "`MatMulInteger` (4,444 nodes) ran at 0.07-0.09x fp32; the int32 lowering (uint8 activations with zero "
        "point 128, int32 requantization, Shiftmax / ShiftGELU as tables, 2,916 nodes) at 0.40x (41 vs 16.5 ms, "
        "1 Dec, quiet). Since: tables read with `GatherElements` (ONNX Runtime's `Gather` copies element by "
        "element, 4-5x slower), straight from the producer's division (its output `Clip` folded into the "
        "table); an 8-bit residual branch rescaled by a table; the LayerNorm square root started from one "
        "comparison against the powers of 4 with only the Newton steps its variance bound needs; "
        "requantizations with tight or scalar clamps (no output `Clip` where the scale is at most 1, scalar "
        "constants where all channels agree); no Cast back to int32 of a value narrowed from int32; dead nodes "
        "pruned. Converter: an `IntMatMul` output grid never finer than the product's (the 16-bit softmax "
        "input's requantization becomes one `Clip`), and a residual sum keeps its wide input's grid when that "
        "covers its range within one bit (that branch is added as stored; else one bit of headroom).",
        "",
        f"Integer graph: {len(int_proto.graph.node)} ONNX nodes ({fallbacks} requantizations left in int64), "
        "bit-exact with the PyTorch model, checker: no float tensor inside. "
        + (f"TVM build s: fp32 {ms[('tvm-build-s', 'fp32')]:.0f}, integer {ms[('tvm-build-s', 'I-ViT int')]:.0f}." if not args.no_tvm else "TVM not run (--no-tvm)."),
        "",
        "Where the integer graph's time goes on ONNX Runtime (kernel time per op type, ms per inference):",
        "",
        markdown_table(["op", "ms", "share"], [[k, v, f"{100 * v / total:.0f}%"] for k, v in top]),
    ]
    if not args.no_write:
        write_section("ivit-latency", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
