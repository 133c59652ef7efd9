"""Latency of every zoo model on every runtime that runs here: PyTorch eager, ONNX Runtime, OpenVINO, TVM.

Batch 1, 3x224x224 (the zoo's ``224`` configuration, random init), 2 threads, fp32 and fp16, median and p90
in one table. Run under the shared lock:

    flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.runtimes [--models a,b] [--runs 20]

fp16 per runtime: PyTorch ``model.half()`` (CPU half kernels); ONNX Runtime the fp16 ONNX graph (fp32 I/O);
OpenVINO the IR with fp16 weights compiled with ``INFERENCE_PRECISION_HINT=f16`` (the plugin reports the
precision it really runs; shown in the notes); TVM the fp16 graph (``ToMixedPrecision`` where that fails), as
the tvm exporter does. TVM uses the default Relax CPU
pipeline without MetaSchedule tuning; each TVM model runs in a subprocess with a time cap, and a model that
exceeds it is reported as such instead of a number.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import machine_note, markdown_table, write_section  # noqa: E402

THREADS = 2
COLUMNS = [(rt, p) for rt in ("torch", "onnxruntime", "openvino", "tvm") for p in ("fp32", "fp16")]


def _fmt(res) -> str:
    if isinstance(res, str):
        return res
    return f"{res['median']:.2f} / {res['p90']:.2f}"


def _tvm_worker(onnx_path: str, shape, precision: str, runs: int, warmup: int, q) -> None:
    os.environ["TVM_NUM_THREADS"] = str(THREADS)
    try:
        import tvm
        from tvm import relax

        from edgekit.exporters.latency import time_callable
        from edgekit.exporters.tvm import compile_module, host_target, import_onnx, load_vm

        if precision == "fp16":  # same order as the tvm exporter: the fp16 graph, else ToMixedPrecision
            try:
                ex = compile_module(import_onnx(Path(onnx_path).with_name("m16.onnx"), shape), host_target())
            except Exception:  # noqa: BLE001
                mod = relax.transform.ToMixedPrecision(out_dtype="float16")(import_onnx(Path(onnx_path), shape))
                ex = compile_module(mod, host_target())
        else:
            ex = compile_module(import_onnx(Path(onnx_path), shape), host_target())
        lib = Path(onnx_path).with_suffix(f".{precision}.so")
        ex.export_library(str(lib))
        run = load_vm(lib, THREADS)
        import numpy as np

        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        t0 = time.perf_counter()
        run(x)
        first = time.perf_counter() - t0
        q.put({"first_s": first, **time_callable(lambda: run(x), runs, warmup)})
        del tvm
    except Exception as exc:  # noqa: BLE001
        q.put(f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:60] if str(exc) else ''}")


def tvm_latency(onnx_path: Path, shape, precision: str, runs: int, warmup: int, cap_s: float):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_tvm_worker, args=(str(onnx_path), tuple(shape), precision, runs, warmup, q))
    p.start()
    p.join(cap_s)
    if p.is_alive():
        p.kill()
        p.join()
        return f"> {cap_s:.0f} s cap (untuned)"
    return q.get() if not q.empty() else "error"


def measure_model(name: str, runs: int, warmup: int, tvm_cap: float, notes: dict) -> dict:
    import copy

    import numpy as np
    import torch

    import edgekit.models as zoo
    from edgekit.exporters.latency import openvino_compiled, ort_session, time_callable
    from edgekit.exporters.onnx import cleanup
    from edgekit.exporters.torch2onnx import to_onnx, to_onnx_fp16

    model = zoo.create(name, pretrained=False, size="224").eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    out: dict = {}
    torch.set_num_threads(THREADS)
    with torch.inference_mode():
        out[("torch", "fp32")] = time_callable(lambda: model(x), runs, warmup)
        half, xh = copy.deepcopy(model).half(), x.half()
        try:
            out[("torch", "fp16")] = time_callable(lambda: half(xh), max(3, runs // 4), 1)  # slow CPU half kernels
        except RuntimeError as exc:
            out[("torch", "fp16")] = f"n/a ({str(exc)[:40]})"
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        f32 = to_onnx(model, x, Path(tmp) / "m32.onnx")
        f16 = to_onnx_fp16(model, x, Path(tmp) / "m16.onnx")
        for path in (f32, f16):  # the same graph cleanup the exporters apply (TVM needs its constant folding)
            cleanup(path)
        for prec, path in (("fp32", f32), ("fp16", f16)):
            sess = ort_session(path, THREADS)
            out[("onnxruntime", prec)] = time_callable(lambda: sess.run(None, {"input": xn}), runs, warmup)
        import openvino as ov

        for prec in ("fp32", "fp16"):
            xml = Path(tmp) / f"m{prec}.xml"
            ov.save_model(ov.convert_model(str(f32)), str(xml), compress_to_fp16=prec == "fp16")
            compiled = openvino_compiled(xml, THREADS, precision_hint="f32" if prec == "fp32" else "f16")
            notes.setdefault("openvino", set()).add(f"{prec} IR runs as {compiled.get_property('INFERENCE_PRECISION_HINT')}")
            req = compiled.create_infer_request()
            out[("openvino", prec)] = time_callable(lambda: req.infer({0: xn}), runs, warmup)
        for prec in ("fp32", "fp16"):
            if prec == "fp16" and isinstance(out.get(("tvm", "fp32")), str) and "cap" in out[("tvm", "fp32")]:
                out[("tvm", prec)] = "not run (fp32 over the cap)"  # CPU fp16 is slower than fp32 in TVM
                continue
            res = tvm_latency(f32, x.shape, prec, max(3, runs // 4), 1, tvm_cap)
            if isinstance(res, dict):
                notes.setdefault("tvm_first", []).append(f"{name} {prec}: first run {res['first_s']:.2f} s")
            out[("tvm", prec)] = res
    del np
    return out


def main(argv: list[str] | None = None) -> int:
    import edgekit.models as zoo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma-separated zoo names (default: every zoo model)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tvm-cap", type=float, default=40.0, help="seconds per TVM model (compile + runs)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n] or zoo.names()
    notes: dict = {}
    rows = []
    t0 = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        res = measure_model(name, args.runs, args.warmup, args.tvm_cap, notes)
        rows.append([name] + [_fmt(res[c]) for c in COLUMNS])
        print(name, f"{time.perf_counter() - t:.0f} s", rows[-1], flush=True)
    headers = ["model"] + [f"{rt} {p}" for rt, p in COLUMNS]
    md = [
        "## Runtimes: latency per zoo model (batch 1, 3x224x224, 2 threads)",
        "",
        f"Command: `flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.runtimes"
        f"{' --models ' + args.models if args.models else ''} --runs {args.runs}`  ",
        f"Machine: {machine_note()}; total {time.perf_counter() - t0:.0f} s. Cells: median / p90 in ms "
        f"({args.runs} timed runs after {args.warmup} warm-up; PyTorch fp16 and TVM {max(3, args.runs // 4)} runs after 1). "
        "Random-init 224 models (latency does not depend on weights).",
        "",
        markdown_table(headers, rows),
        "",
        "Notes: OpenVINO " + "; ".join(sorted(notes.get("openvino", []))) + ". "
        "TVM: default Relax CPU pipeline, no MetaSchedule tuning, so its kernels are unscheduled loops; "
        "the numbers show what an untuned build gives, not what TVM can reach after tuning. "
        "PyTorch fp16 uses CPU half kernels, which are not optimised for latency on x86.",
    ]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("runtimes", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
