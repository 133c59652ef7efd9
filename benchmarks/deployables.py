"""One row per compressed deployable against the float model it replaces, on the same runtime, side by side.

    python -m benchmarks.deployables [--size digits|224] [--runs 20] [--threads 2] [--only ivit ivit-tvm bivit bivit-tvm]
                                     [--bivit-out DIR ...] [--json FILE] [--no-write]

Every runner (the fp32 model on PyTorch, ONNX Runtime, OpenVINO and, for TVM rows, TVM; each deployable) is
built first, then all are timed in one interleaved loop (round robin, ``--runs`` rounds after 3 warm-up calls
each), so load changes on the shared machine hit every side alike. Medians, ``--threads`` threads, batch 1.

Columns: deployable, runtime, fp32 ms on that runtime, compressed ms, speed ratio (fp32 / compressed), the
fastest fp32 runtime on this machine (measured in the same loop) and the deployable's ratio to it, file bytes
of both artifacts (on disk, as written), top-1 of both on the digits test split (``--size digits``; at 224 the
models are random-init: no accuracy, the numerical check against PyTorch is in the note).

Rows (a row a deployable):
* ``ivit-int8`` (I-ViT, Li & Gu, ICCV 2023): the integer-only ONNX graph on ONNX Runtime, from
  :func:`benchmarks.ivit_latency.deployable_row` (bit-exact with the PyTorch integer model, float-op free).
* ``ivit-int8`` on TVM (``ivit-tvm``): the same integer graph compiled by TVM with the zero-trial schedules of the
  fp32 side below (integer matmuls on the uint8 x int8 VNNI kernel, :mod:`edgekit.exporters.tvm_int8`),
  checked bit-exact with the PyTorch integer model.
* ``bivit-w1a1`` / ``bivit-w1a8`` on ONNX Runtime (BiViT, He et al., ICCV 2023): the ONNX export with the
  binary weights packed 1 bit each; the runtime unpacks them at load and runs float matmuls.
* ``bivit-w1a1`` on TVM: :mod:`edgekit.quant.bivit.tvm_build`, the whole model compiled by TVM with every
  binarized linear layer (and Q.K^T, A.V) on bit-packed XNOR/AND-popcount kernels and the rest in fp32;
  compared with the fp32 model compiled by TVM through the same pipeline (default Relax CPU passes plus
  :mod:`edgekit.exporters.tvm_schedule`'s heuristic schedules: zero tuning trials on both sides) and with the
  fastest fp32 runtime.

One loop drives every runner, but OpenVINO and TVM run in a worker process per runtime (timed there; their
thread pools otherwise take the cores from the next runner), and the in-process ones do not spin when idle:
ONNX Runtime with ``session.intra_op.allow_spinning=0``, PyTorch with ``OMP_WAIT_POLICY=PASSIVE``. The machine is shared: the ``uptime`` load is recorded before and after the timing loop, beside the table,
and the numbers are measured under that load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's OpenMP threads sleep when idle (read at import)

import numpy as np  # noqa: E402
import torch  # noqa: E402

HEADERS = ["deployable", "runtime", "fp32 ms", "compressed ms", "speed ratio", "fastest fp32", "vs fastest",
           "fp32 bytes", "compressed bytes", "fp32 top-1", "compressed top-1", "note"]


@dataclass
class Deployable:
    """A compressed model ready to time: its runner and what the table says about it."""

    name: str
    runtime: str  # the runtime it runs on; its fp32 counterpart is timed on the same one
    run: Callable[[], object] | None  # None: timed in a worker process (Reference.worker_files)
    compressed_bytes: int
    compressed_top1: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reference:
    """The fp32 model a size's deployables replace, with its input, data and exported ONNX file."""

    model: torch.nn.Module
    info: Any
    x: np.ndarray
    data: Any
    data_spec: str
    workdir: Path
    onnx: Path | None = None
    runners: dict[str, Callable[[], object]] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    top1: float | None = None
    worker_files: dict[str, tuple[str, Path]] = field(default_factory=dict)  # key -> (runtime, file), see Worker


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def interleaved_ms(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of each no-argument callable, timed round robin (one call of each per round, the order
    reversed every other round). A callable marked ``self_timed`` returns its own ms (a run in a worker
    process, timed there without the round trip)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for i in range(runs):
        for k in keys if i % 2 == 0 else keys[::-1]:
            t0 = time.perf_counter()
            out = fns[k]()
            ms = (time.perf_counter() - t0) * 1e3
            samples[k].append(float(out) if getattr(fns[k], "self_timed", False) else ms)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _worker_main(conn, files: dict[str, tuple[str, str]], x: np.ndarray, threads: int) -> None:
    os.environ["TVM_NUM_THREADS"] = str(threads)
    runs = {}
    for key, (runtime, path) in files.items():
        if runtime == "tvm":
            from edgekit.exporters.tvm import load_vm

            runs[key] = lambda run=load_vm(Path(path), threads): run(x)
        else:  # openvino, called as every latency runner calls it (zero-copy)
            from edgekit.exporters.latency import file_runner

            runs[key] = file_runner(Path(path), x, runtime, threads)
    conn.send("ready")
    while (key := conn.recv()) is not None:
        t0 = time.perf_counter()
        runs[key]()
        conn.send((time.perf_counter() - t0) * 1e3)


class Worker:
    """Runners of one runtime in a worker process of their own, driven from the timing loop. In one process
    with the others, one runtime's thread pool takes the cores from the next runner (measured at load 20: the
    BiViT TVM library 205 ms in the loop with OpenVINO and PyTorch in-process, 44 ms with only ONNX Runtime
    beside it). ``runner(key)`` is a self-timed callable for :func:`interleaved_ms`."""

    def __init__(self, files: dict[str, tuple[str, Path]], x: np.ndarray, threads: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, {k: (r, str(p)) for k, (r, p) in files.items()}, x,
                                                           threads), daemon=True)
        self.proc.start()
        if self.conn.recv() != "ready":
            raise RuntimeError("benchmark worker did not start")

    def runner(self, key: str) -> Callable[[], float]:
        def run() -> float:
            self.conn.send(key)
            return self.conn.recv()

        run.self_timed = True  # type: ignore[attr-defined]
        return run

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=30)


def onnx_top1(run_one: Callable[[np.ndarray], np.ndarray], data) -> float | None:
    """Top-1 on the test split, one image at a time (None without labels)."""
    if data is None or data.test.y is None:
        return None
    xs = data.test.x.numpy()
    pred = np.concatenate([np.asarray(run_one(xs[i:i + 1])).argmax(1) for i in range(len(xs))])
    return float(np.mean(pred == data.test.y.numpy()))


def ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime session like :func:`edgekit.exporters.runtimes.ort_session`, but whose idle threads sleep
    instead of spinning: in one process with other runtimes, spinning threads left by one run take the cores
    from the next runner (measured under load: TVM after a spinning ORT run 252 ms, after a sleeping one 40 ms)."""
    from edgekit.exporters.runtimes import ort_session

    sess = ort_session(path, threads, spinning=False)
    name = sess.get_inputs()[0].name
    return lambda a: sess.run(None, {name: a})[0]


def export_onnx(model, info, data_spec: str, out: Path) -> Path:
    """The ``onnx`` export target (validated, binary weights packed): the file a user deploys."""
    from edgekit.exporters.base import export

    return export(model, "onnx", "fp32", out=out, force=True, info=info, data=data_spec, validation_samples=32).model_file


def reference(size: str, threads: int, workdir: Path) -> Reference:
    """The fp32 model of ``size`` on every fp32 runtime (digits: the trained zoo vit; 224: DeiT-Tiny-shaped,
    random init, seed 0)."""
    from edgekit.data import load_data
    from edgekit.loading import load_model
    from edgekit.models.vit import vit
    from edgekit.records import ModelInfo

    torch.set_num_threads(threads)
    if size == "digits":
        loaded = load_model("vit")
        model, info = loaded.model.eval(), loaded.info
        data, spec = load_data("digits", info.input_shape), "digits"
    else:
        torch.manual_seed(0)
        model = vit("224", 1000).eval()
        info = ModelInfo(name="vit-224", input_shape=(3, 224, 224), num_classes=1000)
        data, spec = None, "random:3x224x224"
    x = torch.randn(1, *info.input_shape, generator=torch.Generator().manual_seed(0)).numpy()
    ref = Reference(model, info, x, data, spec, workdir)
    ref.onnx = export_onnx(model, info, spec, workdir / "fp32")
    ref.bytes["onnx"] = ref.onnx.stat().st_size
    xt = torch.from_numpy(x)

    def torch_run():
        with torch.inference_mode():
            return model(xt)

    ort = ort_runner(ref.onnx, threads)
    ref.runners = {"torch": torch_run, "onnxruntime": lambda: ort(x), "openvino": None}
    ref.worker_files["fp32/openvino"] = ("openvino", ref.onnx)  # timed in its own process (see Worker)
    ref.top1 = onnx_top1(ort, data)
    return ref


def tvm_fp32(ref: Reference, threads: int) -> None:
    """Add the fp32 model compiled by TVM with the same pipeline as the BiViT build (the default Relax CPU
    pipeline plus :mod:`edgekit.exporters.tvm_schedule`'s zero-trial schedules) to the reference runners."""
    if "tvm" in ref.runners:
        return
    from edgekit.exporters.tvm import host_target, import_onnx
    from edgekit.exporters.tvm_schedule import compile_scheduled

    lib = ref.workdir / "fp32-tvm.so"
    compile_scheduled(import_onnx(ref.onnx, ref.x.shape), host_target()).export_library(str(lib))
    ref.worker_files["fp32/tvm"] = ("tvm", lib)
    ref.runners["tvm"] = None  # timed in the TVM worker process (see Worker)
    ref.bytes["tvm"] = lib.stat().st_size


# ----------------------------------------------------------------------------------------------- rows


def _bivit_model(ref: Reference, act_bits: int, given: dict[str, Any]):
    from edgekit.quant.bivit.convert import BinarizeOptions, convert
    from edgekit.quant.bivit.modules import freeze

    name = f"bivit-w1a{act_bits}"
    if name in given:
        return given[name], "compress output"
    model, _ = convert(ref.model, BinarizeOptions(act_bits=act_bits))
    freeze(model)
    return model.eval(), "binarized without fine-tuning (accuracy is not the recipe's)"


def _given_bivit(args) -> dict[str, Any]:
    from edgekit.loading import load_model

    out = {}
    for d in args.bivit_out:
        name = json.loads((Path(d) / "manifest.json").read_text()).get("recipe", {}).get("name", "bivit")
        out[str(name)] = load_model(d).model.eval()
    return out


def bivit_rows(ref: Reference, args) -> list[Deployable]:
    """BiViT W1A1 / W1A8 ONNX exports on ONNX Runtime (packed on disk, float matmuls at run time)."""
    rows, given = [], _given_bivit(args)
    for bits in (1, 8):
        model, note = _bivit_model(ref, bits, given)
        path = export_onnx(model, ref.info, ref.data_spec, ref.workdir / f"bivit-w1a{bits}")
        run = ort_runner(path, args.threads)
        rows.append(Deployable(f"bivit-w1a{bits}", "onnxruntime", lambda run=run: run(ref.x), path.stat().st_size,
                               onnx_top1(run, ref.data), note + "; ONNX Runtime unpacks the bits at load and runs "
                               "float matmuls (no XNOR kernel on this runtime)"))
    return rows


def bivit_tvm_rows(ref: Reference, args) -> list[Deployable]:
    """BiViT W1A1 compiled whole by TVM with the XNOR-popcount kernels (validated against PyTorch first)."""
    from edgekit.quant.bivit import tvm_build

    tvm_fp32(ref, args.threads)
    model, note = _bivit_model(ref, 1, _given_bivit(args))
    lib = ref.workdir / "bivit-w1a1-tvm.so"
    built = tvm_build.build(model, torch.from_numpy(ref.x))
    built.save(lib)
    run = tvm_build.load(lib, args.threads)
    check = tvm_build.compare(model, run, torch.from_numpy(ref.x), n=4)
    top1 = onnx_top1(run, ref.data)
    parts = built.storage
    ref.worker_files["bivit-w1a1/tvm"] = ("tvm", lib)
    return [Deployable("bivit-w1a1", "tvm", None, lib.stat().st_size, top1,
                       f"{note}; XNOR/AND-popcount kernels for {parts['binary_layers']} linear layers and "
                       f"{parts['binary_matmuls']} attention matmuls, the rest fp32; both sides built with the same zero-trial schedules; binarized "
                       f"weights {parts['binary_bytes']:,} B vs {parts['binary_fp32_bytes']:,} B fp32 "
                       f"({parts['binary_fp32_bytes'] / max(1, parts['binary_bytes']):.1f}x); vs PyTorch BiViT: "
                       f"{check['summary']}", {"storage": parts, "check": check})]


def ivit_rows(ref: Reference, args) -> list[Deployable]:
    from benchmarks.ivit_latency import deployable_row

    return [deployable_row(ref, args.threads)]


def ivit_tvm_rows(ref: Reference, args) -> list[Deployable]:
    from benchmarks.ivit_latency import tvm_deployable_row

    tvm_fp32(ref, args.threads)
    return [tvm_deployable_row(ref, args.threads)]


ROWS: dict[str, Callable[[Reference, Any], list[Deployable]]] = {
    "ivit": ivit_rows, "bivit": bivit_rows, "bivit-tvm": bivit_tvm_rows, "ivit-tvm": ivit_tvm_rows}


def table_rows(ref: Reference, deployables: list[Deployable], ms: dict[str, float]) -> list[dict[str, Any]]:
    fp = {rt: ms[f"fp32/{rt}"] for rt in ref.runners}
    fastest = min(fp, key=lambda rt: fp[rt])  # every fp32 runtime timed in the loop (TVM too when a row needs it)
    rows = []
    for d in deployables:
        c = ms[f"{d.name}/{d.runtime}"]
        rows.append({"deployable": d.name, "runtime": d.runtime, "fp32_ms": fp[d.runtime], "compressed_ms": c,
                     "speed_ratio": fp[d.runtime] / c, "fastest_fp32_runtime": fastest, "fastest_fp32_ms": fp[fastest],
                     "ratio_vs_fastest": fp[fastest] / c,
                     "fp32_bytes": ref.bytes["tvm" if d.runtime == "tvm" else "onnx"],
                     "compressed_bytes": d.compressed_bytes, "fp32_top1": ref.top1, "compressed_top1": d.compressed_top1,
                     "note": d.note, **d.extra})
    return rows


def _cell(v: Any) -> Any:
    return "n/a" if v is None else v


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import command_line, machine_note, markdown_table, write_section

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("digits", "224"), default="224")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bivit-out", nargs="*", default=[])
    ap.add_argument("--only", nargs="*", choices=sorted(ROWS), default=list(ROWS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgekit-deployables-") as tmp:
        ref = reference(args.size, args.threads, Path(tmp))
        deployables = [d for key in args.only for d in ROWS[key](ref, args)]
        fns = {f"fp32/{rt}": fn for rt, fn in ref.runners.items() if fn is not None}
        fns.update({f"{d.name}/{d.runtime}": d.run for d in deployables if d.run is not None})
        workers = {rt: Worker({k: v for k, v in ref.worker_files.items() if v[0] == rt}, ref.x, args.threads)
                   for rt in sorted({v[0] for v in ref.worker_files.values()})}
        try:
            fns.update({k: workers[rt].runner(k) for k, (rt, _) in ref.worker_files.items()})
            load_before = uptime()
            ms = interleaved_ms(fns, args.runs)
            load_after = uptime()
        finally:
            for w in workers.values():
                w.close()
    rows = table_rows(ref, deployables, ms)
    fastest = rows[0]["fastest_fp32_runtime"] if rows else "?"
    cells = [[_cell(r[k]) for k in ("deployable", "runtime", "fp32_ms", "compressed_ms", "speed_ratio")]
             + [f"{r['fastest_fp32_runtime']} {r['fastest_fp32_ms']:.3g} ms", r["ratio_vs_fastest"]]
             + [_cell(r[k]) for k in ("fp32_bytes", "compressed_bytes", "fp32_top1", "compressed_top1", "note")]
             for r in rows]
    table = markdown_table(HEADERS, cells)
    fp_line = ", ".join(f"{rt} {ms[f'fp32/{rt}']:.3g} ms" for rt in ref.runners)
    load = f"before the timing loop `{load_before}`; after `{load_after}`"
    print(table)
    print(f"fp32 medians: {fp_line}; fastest fp32 runtime: {fastest}")
    print(f"uptime {load} (measured under this load: the machine is shared)")
    shape = "DeiT-Tiny-shaped `vit`, 3x224x224, random init" if args.size == "224" else "zoo `vit` on digits (32x32)"
    if not args.no_write:
        write_section("deployables", "\n\n".join([
            f"## Deployables vs fp32 ({shape}, batch 1, {args.threads} threads)",
            f"Command: `{command_line()}`  \nMachine: {machine_note()}. Medians of {args.runs} interleaved rounds "
            f"(every runner once per round). uptime {load}: a shared machine, numbers measured under that load.",
            f"fp32 on every runtime in the same loop: {fp_line}. *speed ratio* = fp32 ms / compressed ms on the "
            "row's runtime; *vs fastest* = the fastest fp32 runtime's ms / compressed ms (above 1 = faster than "
            "every fp32 runtime here). Bytes: the artifact files on disk (ONNX, or the TVM library).",
            table]))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "fp32_ms": {rt: ms[f"fp32/{rt}"] for rt in ref.runners},
                                               "uptime_before": load_before, "uptime_after": load_after,
                                               "size": args.size, "runs": args.runs, "threads": args.threads},
                                              indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
