"""Profile an artifact on a device: latency statistics, power and energy per inference, on-device validation.

Flow: read + verify the artifact -> connect the device's transport -> push (boards) -> find power sensors ->
sample idle power -> run the runner while sampling -> a typed :class:`~edgekit.devices.record.Profile`
(``profile.json``, fields: docs/profile.md).
Several devices are profiled concurrently (one thread each). A run that fails half-way keeps the samples it
already streamed back and says why it stopped (``status: "partial"``).
"""

from __future__ import annotations

import datetime as _dt
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

from edgekit.devices.artifact import Artifact, check_architecture
from edgekit.devices.record import (ArtifactRef, DeviceRef, LatencyStats, PerInference, PowerFigures, PowerWindows,
                                    Profile, RuntimeRef, Samples, Validation)
from edgekit.devices.remote.runner.stats import summarize
from edgekit.errors import EdgekitError, UserInputError

NO_SENSOR = "no power sensor"
EMULATED_EXTRA_S = 240.0


@dataclass
class ProfileOptions:
    runtime: str | None = None  # default: the artifact target's runtime
    provider: str | None = None  # onnxruntime execution provider / openvino device
    batch: int = 0  # 0 = the artifact's batch
    threads: int = 0  # 0 = runtime default
    input_shape: list[int] | None = None  # needed only for bare models with dynamic dims
    warmup_runs: int = 10
    warmup_s: float = 0.5
    budget_s: float = 10.0
    min_runs: int = 20
    max_runs: int = 100000
    target_rel_ci: float = 0.02  # stop when the 95% CI of the median is within this fraction
    chunk_s: float = 0.2  # how often samples are streamed back
    validate: bool = True
    idle_s: float = 2.0  # idle-power measurement before the run (when a sensor exists)
    # the idle window opens this long after the sampler starts, so that a sensor's own averaging (250 ms on the
    # emulated INA3221, up to a second for tegrastats) does not carry the setup's activity into the idle figure
    idle_settle_s: float = 0.3
    power_interval_s: float = 0.05
    timeout_s: float | None = None  # whole run; default budget + warm-up + 60 s (+ 240 s on an emulated board)

    def runner_opts(self, art: Artifact) -> dict[str, Any]:
        d = asdict(self)
        d["runtime"] = self.runtime or art.default_runtime()
        d["input_name"] = art.input_name
        d["input_shape"] = self.input_shape or art.input_shape
        d["cosine_threshold"] = art.cosine_threshold
        d["validate"] = self.validate and not art.bare  # a bare model has no reference outputs
        for k in ("idle_s", "idle_settle_s", "power_interval_s", "timeout_s"):
            d.pop(k)
        return d


def transport_for(spec, timeout_s: float = 60.0):
    from edgekit.devices.transports.base import TRANSPORTS

    return TRANSPORTS.get(spec.transport)(spec, timeout_s=timeout_s)


def _power_readers(transport, spec) -> tuple[list, str | None]:
    from edgekit.devices.power import discover

    try:
        fs = transport.power_fs()
    except Exception as exc:  # noqa: BLE001 - no sysfs access means no sensor, said plainly
        return [], f"{NO_SENSOR} (cannot read the board's sysfs: {exc})"
    if fs is None:
        return [], f"{NO_SENSOR} (transport {spec.transport} gives no sysfs access)"
    readers = discover(fs, spec.power, {"power_command": spec.power_command}, local=transport.local)
    return readers, None if readers else NO_SENSOR


def _energy(idle: dict | None, run: dict, inferences: int) -> dict:
    total_w = run["power_w"]
    idle_w = idle["power_w"] if idle else None
    above = None if (total_w is None or idle_w is None) else total_w - idle_w
    secs = run["seconds"]

    def per_inf(watts):
        return None if watts is None or inferences == 0 else watts * secs / inferences * 1000.0

    def ipj(watts):
        e = per_inf(watts)
        return None if not e or e <= 0 else 1000.0 / e

    return {
        "power_w": PowerFigures(total_w, idle_w, above, run["per_sensor_w"]),
        "energy_mj_per_inference": PerInference(per_inf(total_w), per_inf(above)),
        "inferences_per_joule": PerInference(ipj(total_w), ipj(above)),
    }


def profile(art: Artifact, spec, opts: ProfileOptions | None = None,
            on_event: Callable[[str, dict], None] | None = None) -> Profile:
    """Profile ``art`` on the device ``spec`` (raises on setup failures; a run cut short is ``partial``)."""
    opts = opts or ProfileOptions()
    ropts = opts.runner_opts(art)
    runtime = ropts["runtime"]
    if spec.runtimes and runtime not in spec.runtimes:
        raise UserInputError(f"device {spec.name} lists runtimes {spec.runtimes}; {runtime!r} is not one of "
                             "them (pick --runtime or edit the devices file)")
    timeout = opts.timeout_s or (opts.budget_s + opts.warmup_s + 60.0)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t_begin = time.monotonic()
    notify = (lambda ev: on_event(spec.name, ev)) if on_event else None
    with transport_for(spec, timeout_s=timeout) as tr:
        info = tr.info()
        check_architecture(art, info.get("arch"), spec.name)
        art_dir = tr.prepare(art)
        push = getattr(tr, "last_push", None)
        readers, power_status = _power_readers(tr, spec)
        sampler = idle_window = None
        if readers:
            from edgekit.devices.power import PowerSampler

            sampler = PowerSampler(readers, opts.power_interval_s).start()
            if opts.idle_s > 0:
                time.sleep(opts.idle_settle_s)
            t0 = time.monotonic()
            time.sleep(opts.idle_s)
            idle_window = (t0, time.monotonic())  # evaluated once the sampler has stopped (edges covered)
        if info.get("emulation") and not opts.timeout_s:
            timeout += EMULATED_EXTRA_S  # an emulated board starts its runtime slowly (qemu translates it)
        try:
            stream = tr.run(art_dir, art, ropts, on_event=notify, timeout_s=timeout)
        finally:
            if sampler:
                sampler.stop()
                sampler.close()
    stream.raise_for_setup_error(spec.name)
    hello = stream.hello or {}
    emulation = hello.get("emulation") or info.get("emulation")
    batch = hello.get("input_shape", [1])[0] or 1
    stats = summarize(stream.samples_ms, batch)
    error = None
    if stream.error:
        error = stream.error.get("message")
    elif stream.failure:
        error = f"{stream.failure} after {len(stream.samples_ms)} samples"
    result = Profile(
        status="ok" if stream.complete else ("partial" if stream.samples_ms else "failed"),
        error=error,
        started=started,
        artifact=ArtifactRef(str(art.root / art.model_file) if art.bare else str(art.root), art.name, art.target,
                             art.precision, art.digest, art.bare),
        device=DeviceRef(spec.name, spec.transport, list(spec.tags), info),
        runtime=RuntimeRef(runtime, hello.get("runtime_version"), hello.get("python"), opts.threads or None,
                           hello.get("detail")),
        latency_kind="emulated" if emulation else "native",
        emulation=emulation,
        input_shape=hello.get("input_shape"),
        batch=batch,
        latency_ms=LatencyStats(**stats["latency_ms"]) if "latency_ms" in stats else None,
        median_ci95_ms=stats.get("median_ci95_ms"),
        median_ci95_rel=stats.get("median_ci95_rel"),
        throughput_ips=stats.get("throughput_ips"),
        samples=Samples(len(stream.samples_ms), stream.samples_ms, (stream.end or {}).get("stop_reason", "interrupted"),
                        (stream.warmup or {}).get("runs")),
        thermal=(stream.end or {}).get("monitor"),
        validation=_validation(stream.validation) if stream.validation else _no_validation(art, opts),
        push=push,
        options=asdict(opts),
        power_status=power_status or "measured",
        power_sensors=[r.describe() for r in readers],
    )
    if stream.measure_start is not None:
        t_end = stream.measure_end or (stream.sample_times[-1] if stream.sample_times else stream.measure_start)
        result.measure_window = [stream.measure_start, t_end]
        if sampler:
            _add_power(result, sampler, idle_window, len(stream.samples_ms) * batch)
    result.seconds = time.monotonic() - t_begin
    return result


def _add_power(result: Profile, sampler, idle_window: tuple[float, float] | None, inferences: int) -> None:
    t_start, t_end = result.measure_window
    idle = sampler.window(*idle_window) if idle_window and idle_window[1] > idle_window[0] else None
    if idle is not None and idle["power_w"] is None:
        idle = None
    run_win = sampler.window(t_start, t_end)
    if run_win["power_w"] is None:
        errs = [e for e in sampler.errors if e]
        result.power_status = "sensor failed: " + ("; ".join(errs) or "no samples in the run window")
        return
    for key, value in _energy(idle, run_win, inferences).items():
        setattr(result, key, value)
    result.power_windows = PowerWindows(list(idle_window) if idle else None, [t_start, t_end])
    result.power_trace = {name: [[round(t, 4), round(w, 4)] for t, w in pts]
                          for name, pts in sampler.power_series(t_start).items()}


def _validation(event: dict) -> Validation:
    known = {f.name for f in fields(Validation)}
    return Validation(**{k: v for k, v in event.items() if k in known})


def _no_validation(art: Artifact, opts: ProfileOptions) -> Validation:
    if art.bare:
        return Validation("skipped", "bare model file: no reference outputs to validate against")
    if not opts.validate:
        return Validation("skipped", "validation disabled (--no-validate)")
    return Validation("skipped", "the runner reported no validation")


def profile_many(art: Artifact, specs: list, opts: ProfileOptions | None = None,
                 on_event: Callable[[str, dict], None] | None = None) -> dict[str, Profile | EdgekitError]:
    """Profile on several devices concurrently; each value is a :class:`Profile` or the error it raised."""
    if len(specs) == 1:
        try:
            return {specs[0].name: profile(art, specs[0], opts, on_event)}
        except EdgekitError as exc:
            return {specs[0].name: exc}
    out: dict[str, Profile | EdgekitError] = {}
    with ThreadPoolExecutor(max_workers=min(len(specs), 8)) as pool:
        futs = {s.name: pool.submit(profile, art, s, opts, on_event) for s in specs}
        for name, fut in futs.items():
            try:
                out[name] = fut.result()
            except EdgekitError as exc:
                out[name] = exc
    return out


def check_device(spec, timeout_s: float = 60.0) -> dict:
    """Connect and describe the device: the runner's board info plus the power sensors found."""
    with transport_for(spec, timeout_s=timeout_s) as tr:
        info = tr.info()
        readers, status = _power_readers(tr, spec)
        sensors = []
        for r in readers:
            d = r.describe()
            try:
                val = r.read()
                d["reading"] = f"{val:.3f} {'J (counter)' if r.kind == 'energy' else 'W'}"
            except (OSError, ValueError) as exc:
                d["reading"] = f"unreadable: {exc}"
            finally:
                r.close()
            sensors.append(d)
    info["power_sensors"] = sensors
    info["power_status"] = status or "measured"
    info["device"] = {"name": spec.name, "transport": spec.transport}
    return info
