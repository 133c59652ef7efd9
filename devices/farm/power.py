"""The emulated board's power: an INA3221-shaped hwmon tree driven by the board's measured CPU time.

Power model (stated, not measured): ``P(t) = idle_w + core_w * u(t)`` where ``u(t)`` is the CPU time the
board's processes use per second of wall time (0 .. number of busy host cores), read from the board's cgroup
(``cpuacct.usage``, or ``cpu.stat`` ``usage_usec`` on cgroup v2). Every board process (sshd sessions, the
runner, the runtime's threads, qemu's translation of them) runs in that cgroup, so the model follows what the
board actually does. Defaults: 2.0 W idle, 1.5 W per busy core, a 5 V input rail (Raspberry-Pi-like).

The daemon rewrites, every ``period_s`` (10 ms), the files the ``ina3221`` sensor reads on a Jetson
(``/sys/class/hwmon/hwmonN/{name,inK_label,inK_input,currK_input}``, mV and mA) with the power averaged over
the last ``average_s`` (250 ms, like an INA3221 averaging 256 conversions of 1.1 ms; longer than the
profiler's sampling interval, so a reader that samples late still sees all of the time): channel 1 ``VDD_IN`` (the whole board, the model's power), channel 2 ``VDD_CPU``
(``0.5 W + core_w * u``, informational), channel 3 ``NC`` (unconnected). Each update is an atomic rename, so a
reader never sees half a number. It also appends ``<host monotonic time> <cumulative CPU ns>`` lines to a
trace file: :func:`ground_truth` integrates the model over any window from that trace exactly, independently
of the sensor path (sampling, interpolation, idle subtraction) that a profile exercises.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

HWMON_REL = "sys/class/hwmon/hwmon0"
CPU_STATIC_W = 0.5


@dataclass(frozen=True)
class PowerModel:
    idle_w: float = 2.0
    core_w: float = 1.5
    bus_mv: int = 5000

    def watts(self, busy_cores: float) -> float:
        return self.idle_w + self.core_w * max(busy_cores, 0.0)


# -------------------------------------------------------------------------------------------------- cgroups
def _cgroup_v2_mount() -> Path | None:
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def create_cgroup(name: str) -> tuple[Path, Path]:
    """(directory, usage file) of a new CPU-accounting cgroup for board ``name`` (v1 cpuacct, else v2)."""
    v1 = Path("/sys/fs/cgroup/cpuacct")
    if (v1 / "cgroup.procs").exists():
        d = v1 / "edgekit-farm" / name
        d.mkdir(parents=True, exist_ok=True)
        return d, d / "cpuacct.usage"
    v2 = _cgroup_v2_mount()
    if v2 is None:
        from edgekit.devices.farm.host import FarmError

        raise FarmError("no cgroup hierarchy with CPU accounting (cgroup v1 cpuacct or cgroup v2) is mounted")
    d = v2 / "edgekit-farm" / name
    d.mkdir(parents=True, exist_ok=True)
    return d, d / "cpu.stat"


def read_usage_ns(usage_file: Path) -> int:
    text = usage_file.read_text()
    if usage_file.name == "cpu.stat":
        for line in text.splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) * 1000
        raise ValueError(f"{usage_file}: no usage_usec")
    return int(text.strip())


def cgroup_pids(cgroup_dir: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup_dir / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def kill_cgroup(cgroup_dir: Path, timeout_s: float = 10.0) -> None:
    """SIGKILL every process of the board until none is left (the board 'loses power')."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = cgroup_pids(cgroup_dir)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- sysfs tree
def _write(path: Path, value: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


def write_tree(root: Path, model: PowerModel, busy_cores: float) -> None:
    d = root / HWMON_REL
    total_ma = model.watts(busy_cores) / model.bus_mv * 1e6
    cpu_ma = (CPU_STATIC_W + model.core_w * max(busy_cores, 0.0)) / model.bus_mv * 1e6
    for k, (label, ma) in enumerate((("VDD_IN", total_ma), ("VDD_CPU", cpu_ma), ("NC", 0.0)), start=1):
        _write(d / f"curr{k}_input", str(int(round(ma))))
        if not (d / f"in{k}_label").exists():
            _write(d / f"in{k}_label", label)
            _write(d / f"in{k}_input", str(model.bus_mv))


def init_tree(root: Path, model: PowerModel, cpus: int) -> None:
    """The hwmon tree (idle readings) and the cpu topology files a runtime reads on a real board."""
    d = root / HWMON_REL
    d.mkdir(parents=True, exist_ok=True)
    _write(d / "name", "ina3221")
    write_tree(root, model, 0.0)
    cpu = root / "sys" / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    for f in ("online", "possible", "present"):
        _write(cpu / f, f"0-{cpus - 1}" if cpus > 1 else "0")


# ---------------------------------------------------------------------------------------------- the daemon
def serve(root: Path, usage_file: Path, trace: Path, model: PowerModel, period_s: float = 0.01,
          average_s: float = 0.25) -> None:
    """Update the tree every ``period_s`` with the power averaged over the last ``average_s`` (an INA3221
    averages its conversions the same way), and log the CPU-time trace, until SIGTERM or the board is gone."""
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    recent: collections.deque[tuple[float, int]] = collections.deque()
    with open(trace, "a", buffering=1) as log:
        while not stop["now"] and (root / HWMON_REL).exists():
            try:
                ns = read_usage_ns(usage_file)
            except (OSError, ValueError):
                break  # the board's cgroup is gone: the board was stopped
            t = time.monotonic()
            log.write(f"{t:.6f} {ns}\n")
            recent.append((t, ns))
            while len(recent) > 2 and recent[1][0] <= t - average_s:
                recent.popleft()
            t0, ns0 = recent[0]
            if t > t0:
                write_tree(root, model, (ns - ns0) / 1e9 / (t - t0))
            time.sleep(period_s)


def read_trace(trace: str | Path) -> list[tuple[float, int]]:
    out = []
    for line in Path(trace).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((float(parts[0]), int(parts[1])))
    return out


TRACE_SLACK_S = 0.02  # two trace periods: a window edge read just past the last line (the writer lags a period)


def _cpu_ns_at(points: list[tuple[float, int]], t: float) -> float:
    ts = [p[0] for p in points]
    if points and ts[-1] < t <= ts[-1] + TRACE_SLACK_S:
        return float(points[-1][1])  # at most 20 ms of CPU time unseen: < 1% of the >= 2 s windows the tests use
    if points and ts[0] - TRACE_SLACK_S <= t < ts[0]:
        return float(points[0][1])
    if not points or t < ts[0] or t > ts[-1]:
        raise ValueError(f"time {t:.3f} is outside the power trace ({ts[0] if ts else '-'} .. "
                         f"{ts[-1] if ts else '-'})")
    j = max(bisect.bisect_left(ts, t), 1)
    (t0, n0), (t1, n1) = points[j - 1], points[j]
    return n0 + (n1 - n0) * (t - t0) / (t1 - t0) if t1 > t0 else n1


def ground_truth(trace: str | Path, t0: float, t1: float, model: PowerModel) -> dict:
    """Energy the model assigns to [t0, t1] (host monotonic times), from the board's CPU-time trace alone."""
    points = read_trace(trace)
    cpu_s = (_cpu_ns_at(points, t1) - _cpu_ns_at(points, t0)) / 1e9
    energy = model.idle_w * (t1 - t0) + model.core_w * cpu_s
    return {"seconds": t1 - t0, "cpu_s": cpu_s, "energy_j": energy, "power_w": energy / (t1 - t0)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="edgekit emulated board power daemon")
    p.add_argument("--root", required=True, help="the board's root file system (merged overlay)")
    p.add_argument("--usage", required=True, help="the board cgroup's CPU usage file")
    p.add_argument("--trace", required=True)
    p.add_argument("--idle-w", type=float, default=PowerModel.idle_w)
    p.add_argument("--core-w", type=float, default=PowerModel.core_w)
    p.add_argument("--period", type=float, default=0.01)
    p.add_argument("--average", type=float, default=0.25)
    a = p.parse_args(argv)
    serve(Path(a.root), Path(a.usage), Path(a.trace), PowerModel(a.idle_w, a.core_w), a.period, a.average)


if __name__ == "__main__":
    main()
