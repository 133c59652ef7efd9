"""One interface over several power sensors.

A reader's ``read()`` returns either a cumulative energy counter in joules (``kind == "energy"``: RAPL,
hwmon energy*_input, NVML total energy) or an instantaneous power in watts (``kind == "power"``). The
sampler turns both into one power-over-time series and integrates energy over a time window. Readers get
their files through a small file-system object rooted anywhere (``LocalFS("/")`` on this machine, an
SFTP-backed one on an SSH board, a fixture tree in tests).
"""

from __future__ import annotations

import os
import posixpath
from typing import Callable, Iterable, Protocol

from edgekit.registry import Registry


class FS(Protocol):
    def read_text(self, path: str) -> str: ...
    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...


class LocalFS:
    """Files under ``root`` (``/`` on this machine; a fixture directory in tests)."""

    def __init__(self, root: str | os.PathLike = "/") -> None:
        self.root = os.fspath(root)

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def read_text(self, path: str) -> str:
        with open(self._p(path)) as fh:
            return fh.read().strip()

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._p(path)))
        except OSError:
            return []

    def exists(self, path: str) -> bool:
        return os.path.exists(self._p(path))

    def __repr__(self) -> str:
        return f"LocalFS({self.root!r})"


def readable(fs: FS, path: str) -> bool:
    """True when the file exists and can actually be read (RAPL is often root-only)."""
    try:
        fs.read_text(path)
    except (OSError, PermissionError, IOError):
        return False
    return True


def join(*parts: str) -> str:
    return posixpath.join(*parts)


class PowerReader:
    """Base class: subclasses set name/kind/rails and implement ``read``."""

    name: str = "?"
    kind: str = "power"  # "energy" (cumulative joules) or "power" (watts)
    source: str = ""  # where it reads from, for reports
    rails: list[str]

    def read(self) -> float:
        raise NotImplementedError

    def close(self) -> None:  # readers that own a process or library handle release it here
        return None

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "source": self.source, "rails": list(self.rails)}


class EnergyCounter:
    """Unwraps a hardware energy counter that wraps at ``max_range`` (RAPL's max_energy_range_uj)."""

    def __init__(self, max_range: int | None) -> None:
        self.max_range = max_range
        self.last: int | None = None
        self.total = 0
        self.wraps = 0

    def update(self, raw: int) -> int:
        if self.last is not None:
            if raw >= self.last:
                self.total += raw - self.last
            elif self.max_range:
                self.total += self.max_range - self.last + raw
                self.wraps += 1
            # a counter that went backwards with no known range was reset: count nothing for that step
        self.last = raw
        return self.total


Discover = Callable[[FS, dict], list[PowerReader]]
# every public module of edgekit.devices.power is imported on first lookup; each registers its sensors
SENSORS: Registry[Discover] = Registry("power sensor", lazy=[("edgekit.devices.power", "[!_]*")])
SCOPES = ("board", "domain", "manual")


def power_sensor(name: str, scope: str, order: int = 50, **meta) -> Callable[[Discover], Discover]:
    """Register a sensor's discover function. ``scope``: ``board`` (a whole-board sensor, tried first by
    ``auto``: it includes everything else), ``domain`` (one part: summed with the others by ``auto``) or
    ``manual`` (only when named); ``order`` sorts ``auto``'s tries; ``local_only=True``: this machine only."""
    if scope not in SCOPES:
        raise ValueError(f"power sensor {name!r}: scope {scope!r}; accepted: {', '.join(SCOPES)}")
    return SENSORS.register(name, scope=scope, order=order, **meta)


def _auto_names(scope: str, local: bool) -> list[str]:
    names = [n for n in SENSORS.names() if SENSORS.meta(n)["scope"] == scope
             and (local or not SENSORS.meta(n).get("local_only"))]
    return sorted(names, key=lambda n: (SENSORS.meta(n)["order"], n))


def discover(fs: FS, sensor: str = "auto", options: dict | None = None, local: bool = True) -> list[PowerReader]:
    """Readers for ``sensor`` (a registered name, ``auto`` or ``none``). Empty list = no power sensor.

    ``auto`` picks a whole-board sensor (Jetson INA3221/tegrastats) if there is one, otherwise the sum of the
    per-domain sensors found (RAPL packages + NVML GPUs + generic hwmon). ``local=False`` skips sensors that
    only work on this machine (NVML, tegrastats, external meters run here).
    """
    options = dict(options or {})
    if sensor == "none":
        return []
    if sensor == "auto" and options.get("power_command"):
        sensor = "external"  # the user named a meter: use it, not a guess
    if sensor != "auto":
        options["explicit"] = True
    if sensor != "auto":
        return SENSORS.get(sensor)(fs, options)
    for name in _auto_names("board", local):
        found = SENSORS.get(name)(fs, options)
        if found:
            return found
    readers: list[PowerReader] = []
    for name in _auto_names("domain", local):
        options["have_rapl"] = any(r.name.startswith("rapl") for r in readers)
        readers += SENSORS.get(name)(fs, options)
    return readers


def first_line_floats(lines: Iterable[str]) -> Iterable[float]:
    for line in lines:
        try:
            yield float(line.strip().split()[0])
        except (ValueError, IndexError):
            continue
