"""NVIDIA Jetson power: INA3221 rail monitors (hwmon or older iio sysfs) and ``tegrastats`` output.

Layouts read:
- hwmon (L4T 34+): ``/sys/class/hwmon/hwmonN/name == "ina3221"`` with ``inK_label`` (rail), ``inK_input``
  (bus voltage, mV) and ``currK_input`` (current, mA); power = V * I.
- iio (L4T 32): ``/sys/bus/i2c/drivers/ina3221x/<addr>/iio:deviceN/in_powerK_input`` (mW) and
  ``rail_name_K``.
- tegrastats lines: ``VDD_IN 5071mW/5071mW`` (L4T 34+) or ``POM_5V_IN 3247/3247`` (L4T 32), current/average.

The board-input rail (VDD_IN, POM_5V_IN, ...) covers the whole module; when present it is used alone,
otherwise the rails found are summed.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from typing import Callable, Iterable

from edgekit.devices.power.base import FS, PowerReader, join, power_sensor, readable

HWMON = "/sys/class/hwmon"
IIO_DRIVER = "/sys/bus/i2c/drivers/ina3221x"
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VDD_IN_SYS")
TEGRA_RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?\b")


def _pick_rails(rails: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """rails: tuples whose last item is the rail name; keep only the board-input rail when there is one."""
    inputs = [r for r in rails if r[-1].upper() in INPUT_RAILS]
    return inputs[:1] if inputs else rails


class Ina3221HwmonReader(PowerReader):
    kind = "power"

    def __init__(self, fs: FS, channels: list[tuple[str, str, str]]) -> None:
        self.fs, self.channels = fs, channels  # (voltage file, current file, rail)
        self.name, self.source = "ina3221", HWMON
        self.rails = [c[-1] for c in channels]

    def read(self) -> float:
        return sum(int(self.fs.read_text(v)) * int(self.fs.read_text(i)) for v, i, _ in self.channels) / 1e6


class Ina3221IioReader(PowerReader):
    kind = "power"

    def __init__(self, fs: FS, channels: list[tuple[str, str]]) -> None:
        self.fs, self.channels = fs, channels  # (power file in mW, rail)
        self.name, self.source = "ina3221", IIO_DRIVER
        self.rails = [c[-1] for c in channels]

    def read(self) -> float:
        return sum(int(self.fs.read_text(p)) for p, _ in self.channels) / 1e3


def _hwmon_channels(fs: FS) -> list[tuple[str, str, str]]:
    out = []
    for entry in fs.listdir(HWMON):
        chip = join(HWMON, entry)
        try:
            if fs.read_text(join(chip, "name")) != "ina3221":
                continue
        except OSError:
            continue
        for f in fs.listdir(chip):
            m = re.fullmatch(r"in(\d+)_input", f)
            if not m:
                continue
            k = m.group(1)
            v, i = join(chip, f), join(chip, f"curr{k}_input")
            if not (readable(fs, v) and readable(fs, i)):
                continue
            try:
                rail = fs.read_text(join(chip, f"in{k}_label"))
            except OSError:
                rail = f"{entry}:in{k}"
            if rail.upper().startswith("NC"):  # unconnected channel
                continue
            out.append((v, i, rail))
    return out


def _iio_channels(fs: FS) -> list[tuple[str, str]]:
    out = []
    for addr in fs.listdir(IIO_DRIVER):
        base = join(IIO_DRIVER, addr)
        for dev in fs.listdir(base):
            if not dev.startswith("iio:device"):
                continue
            d = join(base, dev)
            for f in fs.listdir(d):
                m = re.fullmatch(r"in_power(\d+)_input", f)
                if m and readable(fs, join(d, f)):
                    try:
                        rail = fs.read_text(join(d, f"rail_name_{m.group(1)}"))
                    except OSError:
                        rail = f"{dev}:power{m.group(1)}"
                    out.append((join(d, f), rail))
    return out


@power_sensor("ina3221", scope="board", order=10, summary="Jetson INA3221 rail monitors (hwmon or iio sysfs)")
def discover_ina3221(fs: FS, options: dict) -> list[PowerReader]:
    hw = _hwmon_channels(fs)
    if hw:
        return [Ina3221HwmonReader(fs, _pick_rails(hw))]
    iio = _iio_channels(fs)
    return [Ina3221IioReader(fs, _pick_rails(iio))] if iio else []


def parse_tegrastats(line: str) -> dict[str, int]:
    """Rail -> current power in mW from one tegrastats line (only rails that look like power rails)."""
    rails = {}
    for name, cur, _avg in TEGRA_RAIL_RE.findall(line):
        if name.startswith(("VDD", "POM", "VIN")) or name.endswith("_IN"):
            rails[name] = int(cur)
    return rails


def tegrastats_watts(line: str) -> float | None:
    rails = parse_tegrastats(line)
    if not rails:
        return None
    picked = _pick_rails([(r,) for r in rails])
    return sum(rails[r[0]] for r in picked) / 1e3


class TegrastatsReader(PowerReader):
    """Runs ``tegrastats --interval MS`` (or any line source) in the background; ``read()`` = latest watts."""

    kind = "power"

    def __init__(self, lines: Callable[[], Iterable[str]], source: str = "tegrastats") -> None:
        self.name, self.source, self.rails = "tegrastats", source, []
        self._latest: float | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(lines,), daemon=True)
        self._thread.start()

    def _pump(self, lines: Callable[[], Iterable[str]]) -> None:
        for line in lines():
            if self._stop.is_set():
                break
            watts = tegrastats_watts(line)
            if watts is not None:
                if not self.rails:
                    self.rails = sorted(parse_tegrastats(line))
                self._latest = watts
                self._ready.set()

    def read(self) -> float:
        if not self._ready.wait(timeout=3.0):
            raise OSError("tegrastats printed no power rails within 3 s")
        return float(self._latest)  # type: ignore[arg-type]

    def close(self) -> None:
        self._stop.set()


def _tegrastats_lines(argv: list[str], proc_holder: list) -> Callable[[], Iterable[str]]:
    def gen() -> Iterable[str]:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        proc_holder.append(proc)
        assert proc.stdout is not None
        yield from proc.stdout

    return gen


class _LocalTegrastats(TegrastatsReader):
    def __init__(self, argv: list[str]) -> None:
        self._procs: list = []
        super().__init__(_tegrastats_lines(argv, self._procs), source=" ".join(argv))

    def close(self) -> None:
        super().close()
        for p in self._procs:
            p.terminate()
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()


@power_sensor("tegrastats", scope="board", order=20, summary="Jetson tegrastats power rails (this machine)", local_only=True)
def discover_tegrastats(fs: FS, options: dict) -> list[PowerReader]:
    import shutil

    exe = options.get("tegrastats") or shutil.which("tegrastats")
    if not exe or not fs.exists("/etc/nv_tegra_release") and not options.get("tegrastats"):
        return []
    reader = _LocalTegrastats([exe, "--interval", str(int(options.get("interval_ms", 100)))])
    try:
        reader.read()
    except OSError:
        reader.close()
        return []
    time.sleep(0)
    return [reader]
