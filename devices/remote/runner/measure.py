"""On-board validation against reference.npz, the clock/temperature monitor and the timed loop."""

from __future__ import annotations

import os
import sys
import time

from .events import EXIT_RUNTIME_FAILED, PROTOCOL, emit, fail
from .runtimes import make_runner, resolve_shape
from .stats import rel_ci_halfwidth
from .sysinfo import cpu_freqs_khz, emulation, temperatures_c, throttle_counts


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
         threads=args.threads, detail=runner.detail, pid=os.getpid(), emulation=emulation())
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
