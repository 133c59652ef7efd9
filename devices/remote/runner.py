#!/usr/bin/env python3
"""edgekit's self-contained benchmark runner: copied to a board and run there.

Standard library only, plus the runtime being measured (onnxruntime or openvino, and numpy which both ship
with). Boards do not have edgekit installed, so nothing here imports edgekit. It talks to the host by
printing one JSON object per line on stdout ("events"); the host parses them as they stream in, so samples
already taken survive a connection dropped mid-run.

Sub-commands::

    runner.py info                       board description (OS, CPU, GPU, runtimes, governor, clocks, temps)
    runner.py hash FILE...               {"event": "hash", "files": {FILE: sha256}}
    runner.py run --dir D --model-file F --runtime onnxruntime [...]

Latency loop: warm-up, then timed runs until the distribution-free 95% confidence interval of the median
(order statistics of the binomial(n, 1/2)) lies within ``--target-rel-ci`` of the median, or the time
budget ends, or ``--max-runs`` is reached.

Exit codes: 0 ok, 2 bad arguments/artifact, 3 runtime missing, 4 runtime failed, 5 runtime not supported.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

PROTOCOL = 1
EXIT_BAD_INPUT, EXIT_RUNTIME_MISSING, EXIT_RUNTIME_FAILED, EXIT_UNSUPPORTED = 2, 3, 4, 5
Z95 = 1.959963984540054


def emit(event: str, **payload) -> None:
    payload = {"event": event, "t": time.time(), **payload}
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def fail(kind: str, message: str, code: int, **extra) -> "NoReturn":  # noqa: F821
    emit("error", kind=kind, message=message, **extra)
    sys.exit(code)


# ----------------------------------------------------------------------------------------------- statistics
def percentile(sorted_vals: list, q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def median_ci(sorted_vals: list, z: float = Z95) -> tuple:
    """Distribution-free CI of the median: order statistics at n/2 -+ z*sqrt(n)/2 (normal approx. of B(n,1/2))."""
    n = len(sorted_vals)
    if n < 6:
        return (float("nan"), float("nan"))
    half = z * math.sqrt(n) / 2.0
    lo = max(int(math.floor(n / 2.0 - half)), 0)
    hi = min(int(math.ceil(n / 2.0 + half)), n - 1)
    return (sorted_vals[lo], sorted_vals[hi])


def rel_ci_halfwidth(sorted_vals: list) -> float:
    """max(median - lo, hi - median) / median; inf when not computable."""
    lo, hi = median_ci(sorted_vals)
    med = percentile(sorted_vals, 50)
    if math.isnan(lo) or med <= 0:
        return float("inf")
    return max(med - lo, hi - med) / med


def summarize(samples_ms: list, batch: int = 1) -> dict:
    """Latency statistics (ms) and throughput (inferences/s, batch counted) of a list of samples."""
    s = sorted(samples_ms)
    if not s:
        return {"n": 0}
    lo, hi = median_ci(s)
    med = percentile(s, 50)
    return {
        "n": len(s),
        "latency_ms": {
            "min": s[0], "median": med, "p90": percentile(s, 90), "p99": percentile(s, 99), "max": s[-1],
            "mean": sum(s) / len(s),
        },
        "median_ci95_ms": [lo, hi],
        "median_ci95_rel": rel_ci_halfwidth(s),
        "throughput_ips": (1000.0 * batch / med) if med > 0 else None,
    }


# ------------------------------------------------------------------------------------------------ board info
def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def cpu_freqs_khz() -> dict:
    out = {}
    for path in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")):
        val = _read(path)
        if val and val.isdigit():
            out[path.split("/")[5]] = int(val)
    return out


def temperatures_c() -> dict:
    out = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        val, kind = _read(zone + "/temp"), _read(zone + "/type")
        try:
            out[f"{os.path.basename(zone)}:{kind or '?'}"] = int(val) / 1000.0
        except (TypeError, ValueError):
            continue
    return out


def throttle_counts() -> int | None:
    vals = [_read(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/thermal_throttle/*_throttle_count")]
    vals = [int(v) for v in vals if v and v.isdigit()]
    return sum(vals) if vals else None


def _version(module: str, dist: str | None = None) -> str | None:
    """Installed version of a runtime without importing it (importing tvm takes seconds)."""
    import importlib.metadata as md
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for name in (dist, module, module.replace("_", "-")):
        if not name:
            continue
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return "unknown"


def runtimes_info() -> dict:
    out = {}
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        ver = _version(module)
        out[name] = {"available": ver is not None, "version": ver, "runnable": name in RUNNERS}
    trt_py, trtexec = _version("tensorrt"), shutil.which("trtexec")
    out["tensorrt"] = {"available": bool(trt_py or trtexec), "version": trt_py, "trtexec": trtexec,
                       "runnable": False}
    tvm = _version("tvm", "apache-tvm")
    out["tvm"] = {"available": tvm is not None, "version": tvm, "runnable": "tvm" in RUNNERS}
    cm = _version("coremltools") if sys.platform == "darwin" else None
    out["coreml"] = {"available": cm is not None, "version": cm, "runnable": False,
                     "note": None if sys.platform == "darwin" else "Core ML runs on macOS only"}
    return out


def gpu_info() -> list:
    gpus = []
    for info in glob.glob("/proc/driver/nvidia/gpus/*/information"):
        text = _read(info) or ""
        for line in text.splitlines():
            if line.startswith("Model:"):
                gpus.append(line.split(":", 1)[1].strip())
    if not gpus and shutil.which("nvidia-smi"):
        try:
            res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5)
            gpus = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    model = _read("/proc/device-tree/model")
    if model and ("jetson" in model.lower() or _read("/etc/nv_tegra_release")):
        gpus.append(f"integrated (Tegra): {model.strip(chr(0))}")
    return gpus


def board_info() -> dict:
    cpu_model = platform.processor() or platform.machine()
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.split(":")[0].strip() in ("model name", "Hardware", "Model"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kb = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    governors = sorted({g for g in (_read(p) for p in glob.glob(
        "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")) if g})
    limits = {}
    for key in ("cpuinfo_min_freq", "cpuinfo_max_freq"):
        vals = [_read(p) for p in glob.glob(f"/sys/devices/system/cpu/cpu[0-9]*/cpufreq/{key}")]
        vals = [int(v) for v in vals if v and v.isdigit()]
        limits[key.split("_")[1] + "_khz"] = max(vals) if key.endswith("max_freq") and vals else (
            min(vals) if vals else None)
    return {
        "os": platform.platform(), "system": platform.system(), "arch": platform.machine(),
        "hostname": platform.node(), "python": sys.version.split()[0], "python_executable": sys.executable,
        "cpu": cpu_model, "cpu_count": os.cpu_count(), "memory_mb": mem_kb // 1024 if mem_kb else None,
        "gpus": gpu_info(), "runtimes": runtimes_info(),
        "cpu_governor": governors or None, "cpu_freq_khz": cpu_freqs_khz() or None, "cpu_freq_limits": limits,
        "temperatures_c": temperatures_c() or None,
    }


# ------------------------------------------------------------------------------------------------- runtimes
class OnnxRuntimeRunner:
    module = "onnxruntime"

    def __init__(self, model_path: str, threads: int, input_name: str | None, provider: str | None):
        import onnxruntime as ort  # noqa: PLC0415

        self.version = ort.__version__
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [provider] if provider else ["CPUExecutionProvider"]
        self.sess = ort.InferenceSession(model_path, sess_options=opts, providers=providers)
        inp = self.sess.get_inputs()[0]
        self.input_name = input_name or inp.name
        self.model_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.detail = {"providers": self.sess.get_providers()}

    def __call__(self, x):
        return self.sess.run(None, {self.input_name: x})[0]


class OpenVinoRunner:
    module = "openvino"

    def __init__(self, model_path: str, threads: int, input_name: str | None, provider: str | None):
        import openvino as ov  # noqa: PLC0415

        self.version = ov.get_version()
        core = ov.Core()
        self.model = core.read_model(model_path)
        inp = self.model.inputs[0]
        self.input_name = input_name or inp.get_any_name()
        pshape = inp.get_partial_shape()
        self.model_shape = [d.get_length() if d.is_static else None for d in pshape]
        self._core, self._device, self._threads = core, provider or "CPU", threads
        self._compiled_for = None
        self.detail = {"device": self._device}

    def _compile(self, shape):
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if self._threads > 0:
            config["INFERENCE_NUM_THREADS"] = self._threads
        if any(d is None for d in self.model_shape):
            self.model.reshape({self.model.inputs[0].get_any_name(): list(shape)})
        compiled = self._core.compile_model(self.model, self._device, config)
        self.request = compiled.create_infer_request()
        self._compiled_for = tuple(shape)

    def __call__(self, x):
        if self._compiled_for != tuple(x.shape):
            self._compile(x.shape)
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()


class TvmRunner:
    """A Relax VM executable (``model.so`` written by edgekit's TVM exporter), run on the host CPU."""

    module = "tvm"

    def __init__(self, model_path: str, threads: int, input_name: str | None, provider: str | None):
        if threads > 0:  # TVM reads its thread count once, when its runtime starts
            os.environ["TVM_NUM_THREADS"] = str(threads)
        import numpy as np  # noqa: PLC0415
        import tvm  # noqa: PLC0415
        from tvm import relax  # noqa: PLC0415

        self.version = tvm.__version__
        self._np, self._tvm = np, tvm
        self._fn = relax.VirtualMachine(tvm.runtime.load_module(model_path), tvm.cpu())["main"]
        self.input_name = input_name or "input"
        self.model_shape = None  # a compiled library does not expose it: the manifest's input_shape is used
        self.detail = {"device": "cpu", "threads": threads or None}

    def __call__(self, x):
        out = self._fn(self._tvm.runtime.tensor(self._np.ascontiguousarray(x)))
        out = out[0] if isinstance(out, (tuple, list)) or not hasattr(out, "numpy") else out
        return out.numpy()


RUNNERS = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVinoRunner, "tvm": TvmRunner}
DETECT_ONLY = ("tensorrt", "coreml")


def make_runner(args):
    if args.runtime in DETECT_ONLY:
        info = runtimes_info()[args.runtime]
        fail("runtime_unsupported", f"runtime {args.runtime!r} is detected by edgekit but this runner cannot "
             f"run it yet (available on this board: {info['available']})", EXIT_UNSUPPORTED,
             runtime=args.runtime)
    if args.runtime not in RUNNERS:
        fail("bad_input", f"unknown runtime {args.runtime!r}; accepted: {', '.join(sorted(RUNNERS))}",
             EXIT_BAD_INPUT)
    module = RUNNERS[args.runtime].module
    try:
        __import__(module)
        import numpy  # noqa: F401, PLC0415
    except ImportError as exc:
        fail("runtime_missing", f"runtime {args.runtime!r} is not installed for {sys.executable} "
             f"({exc})", EXIT_RUNTIME_MISSING, runtime=args.runtime, python=sys.executable)
    model_path = os.path.join(args.dir, args.model_file)
    if not os.path.isfile(model_path):
        fail("bad_input", f"model file not found: {model_path}", EXIT_BAD_INPUT)
    try:
        return RUNNERS[args.runtime](model_path, args.threads, args.input_name, args.provider)
    except Exception as exc:  # noqa: BLE001 - any runtime load failure is reported, not hidden
        fail("runtime_failed", f"{args.runtime} could not load {args.model_file}: {exc}", EXIT_RUNTIME_FAILED,
             runtime=args.runtime)


def resolve_shape(args, runner) -> list:
    if args.input_shape:
        shape = [int(v) for v in args.input_shape.split(",")]
    else:
        if runner.model_shape is None:
            fail("bad_input", "the model file does not record its input shape: pass --input-shape", EXIT_BAD_INPUT)
        shape = list(runner.model_shape)
        if any(d is None for d in shape[1:]):
            fail("bad_input", f"model input shape {runner.model_shape} has dynamic dimensions other than the "
                 "batch: pass --input-shape", EXIT_BAD_INPUT)
    fixed_batch = runner.model_shape[0] if runner.model_shape else None
    if args.batch and args.batch > 0:
        if fixed_batch is not None and fixed_batch != args.batch:
            fail("bad_input", f"the model has a fixed batch of {fixed_batch}; batch {args.batch} was asked "
                 "(export with a dynamic batch axis)", EXIT_BAD_INPUT)
        shape[0] = args.batch
    elif shape[0] is None:
        shape[0] = 1
    return shape


# ----------------------------------------------------------------------------------------------- validation
def validate(args, runner, np, precision_tol: float) -> dict:
    ref_path = os.path.join(args.dir, "reference.npz")
    if not os.path.isfile(ref_path):
        return {"status": "skipped", "reason": "no reference.npz in the artifact"}
    with np.load(ref_path, allow_pickle=False) as ref:
        inputs, expected = ref["inputs"].astype(np.float32), ref["outputs"].astype(np.float32)
    fixed = runner.model_shape[0] if runner.model_shape else None
    step = fixed or 1
    if len(inputs) % step:
        return {"status": "skipped", "reason": f"{len(inputs)} reference inputs do not split into the model's "
                f"fixed batch {fixed}"}
    outs = [np.asarray(runner(np.ascontiguousarray(inputs[i:i + step]))) for i in range(0, len(inputs), step)]
    got = np.concatenate(outs, axis=0).astype(np.float64).reshape(len(inputs), -1)
    exp = expected.astype(np.float64).reshape(len(inputs), -1)
    if got.shape != exp.shape:
        return {"status": "failed", "reason": f"output shape {got.shape} != reference {exp.shape}"}
    cos = [float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)) for a, b in zip(got, exp)]
    res = {
        "n": int(len(inputs)), "cosine_min": min(cos), "cosine_mean": sum(cos) / len(cos),
        "max_abs": float(np.max(np.abs(got - exp))), "cosine_threshold": precision_tol,
    }
    if exp.shape[1] > 1:
        res["top1_agreement"] = float(np.mean(np.argmax(got, 1) == np.argmax(exp, 1)))
    res["status"] = "passed" if res["cosine_min"] >= precision_tol else "failed"
    return res


# ----------------------------------------------------------------------------------------------- run loop
class Monitor:
    """Samples CPU clocks, temperatures and throttle counters between timed runs (never inside one)."""

    def __init__(self, period_s: float = 0.25):
        self.period, self.next_t = period_s, 0.0
        self.freq_min, self.freq_max, self.temp_max = {}, {}, {}
        self.throttle_start = throttle_counts()
        self.temp_start = temperatures_c()

    def poll(self, now: float) -> None:
        if now < self.next_t:
            return
        self.next_t = now + self.period
        for cpu, f in cpu_freqs_khz().items():
            self.freq_min[cpu] = min(f, self.freq_min.get(cpu, f))
            self.freq_max[cpu] = max(f, self.freq_max.get(cpu, f))
        for zone, t in temperatures_c().items():
            self.temp_max[zone] = max(t, self.temp_max.get(zone, t))

    def report(self) -> dict:
        events = []
        for cpu in sorted(self.freq_max):
            hi, lo = self.freq_max[cpu], self.freq_min[cpu]
            if hi > 0 and (hi - lo) / hi > 0.05:
                events.append(f"{cpu} clock changed {lo / 1000:.0f}-{hi / 1000:.0f} MHz during the run")
        end = throttle_counts()
        if end is not None and self.throttle_start is not None and end > self.throttle_start:
            events.append(f"thermal throttling: throttle counters rose by {end - self.throttle_start}")
        return {
            "readable": bool(self.freq_max or self.temp_max),
            "cpu_freq_khz_min": self.freq_min or None, "cpu_freq_khz_max": self.freq_max or None,
            "temperature_c_start": self.temp_start or None, "temperature_c_max": self.temp_max or None,
            "events": events,
        }


def cmd_run(args) -> None:
    runner = make_runner(args)
    import numpy as np  # noqa: PLC0415 - numpy ships with every supported runtime

    shape = resolve_shape(args, runner)
    emit("hello", protocol=PROTOCOL, runtime=args.runtime, runtime_version=runner.version,
         python=sys.version.split()[0], python_executable=sys.executable, input_shape=shape,
         threads=args.threads, detail=runner.detail, pid=os.getpid())
    if args.validate:
        try:
            emit("validation", **validate(args, runner, np, args.cosine_threshold))
        except Exception as exc:  # noqa: BLE001
            emit("validation", status="error", reason=f"{type(exc).__name__}: {exc}")
    x = np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)
    try:
        start = time.perf_counter()
        n = 0
        while n < args.warmup_runs or time.perf_counter() - start < args.warmup_s:
            runner(x)
            n += 1
    except Exception as exc:  # noqa: BLE001
        fail("runtime_failed", f"{args.runtime} failed on input {shape}: {exc}", EXIT_RUNTIME_FAILED)
    emit("warmup_done", runs=n, seconds=time.perf_counter() - start)

    monitor = Monitor()
    samples: list = []
    pending: list = []
    clock = time.perf_counter_ns
    t_start = time.perf_counter()
    emit("measure_start")
    last_flush = t_start
    stop_reason = "max_runs"
    while len(samples) < args.max_runs:
        t0 = clock()
        runner(x)
        dt = (clock() - t0) / 1e6
        samples.append(dt)
        pending.append(dt)
        now = time.perf_counter()
        monitor.poll(now)
        if now - last_flush >= args.chunk_s:
            emit("samples", ms=pending)
            pending, last_flush = [], now
        if now - t_start >= args.budget_s:
            stop_reason = "time_budget"
            break
        n = len(samples)
        if n >= args.min_runs and n % max(1, n // 50) == 0:  # sort cost stays ~O(n log n) overall
            if rel_ci_halfwidth(sorted(samples)) <= args.target_rel_ci:
                stop_reason = "converged"
                break
    if pending:
        emit("samples", ms=pending)
    emit("measure_end", stop_reason=stop_reason, runs=len(samples), seconds=time.perf_counter() - t_start,
         monitor=monitor.report())


def cmd_hash(args) -> None:
    out = {}
    for path in args.files:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            out[path] = h.hexdigest()
        except OSError:
            out[path] = None
    emit("hash", files=out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info")
    h = sub.add_parser("hash")
    h.add_argument("files", nargs="+")
    r = sub.add_parser("run")
    r.add_argument("--dir", required=True)
    r.add_argument("--model-file", required=True)
    r.add_argument("--runtime", default="onnxruntime")
    r.add_argument("--provider", default=None)
    r.add_argument("--input-name", default=None)
    r.add_argument("--input-shape", default=None, help="comma-separated, e.g. 1,3,224,224")
    r.add_argument("--batch", type=int, default=0)
    r.add_argument("--threads", type=int, default=0, help="0 = runtime default")
    r.add_argument("--warmup-runs", type=int, default=10)
    r.add_argument("--warmup-s", type=float, default=0.5)
    r.add_argument("--budget-s", type=float, default=10.0)
    r.add_argument("--min-runs", type=int, default=20)
    r.add_argument("--max-runs", type=int, default=100000)
    r.add_argument("--target-rel-ci", type=float, default=0.02)
    r.add_argument("--chunk-s", type=float, default=0.2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--cosine-threshold", type=float, default=0.999)
    r.add_argument("--no-validate", dest="validate", action="store_false")
    args = p.parse_args(argv)
    if args.cmd == "info":
        emit("info", **board_info())
    elif args.cmd == "hash":
        cmd_hash(args)
    else:
        cmd_run(args)


if __name__ == "__main__":
    main()
