"""Intel/AMD RAPL energy counters through the powercap sysfs interface.

``/sys/class/powercap/intel-rapl:N`` (packages, ``psys``) and ``intel-rapl:N:M`` sub-zones (core, uncore,
dram). Each zone has ``energy_uj`` (a counter that wraps at ``max_energy_range_uj``) and ``name``. We count
the top-level package zones plus DRAM sub-zones (DRAM is not part of the package domain); a ``psys``
(platform) zone, where present, covers all of them and is used alone.
"""

from __future__ import annotations

from edgekit.devices.power.base import FS, EnergyCounter, PowerReader, join, power_sensor, readable

POWERCAP = "/sys/class/powercap"


class RaplReader(PowerReader):
    kind = "energy"

    def __init__(self, fs: FS, zones: list[tuple[str, str]]) -> None:
        self.fs = fs
        self.zones = zones  # (zone dir, label)
        self.name = "rapl"
        self.source = POWERCAP
        self.rails = [label for _, label in zones]
        self.counters = []
        for zone, _ in zones:
            try:
                max_range = int(fs.read_text(join(zone, "max_energy_range_uj")))
            except (OSError, ValueError):
                max_range = None
            self.counters.append(EnergyCounter(max_range))

    def read(self) -> float:
        total = 0
        for (zone, _), counter in zip(self.zones, self.counters):
            total += counter.update(int(self.fs.read_text(join(zone, "energy_uj"))))
        return total / 1e6

    @property
    def wraps(self) -> int:
        return sum(c.wraps for c in self.counters)


def rapl_zones(fs: FS) -> list[tuple[str, str]]:
    top, dram, psys = [], [], []
    for entry in fs.listdir(POWERCAP):
        if not entry.startswith(("intel-rapl:", "amd-rapl:")):
            continue
        zone = join(POWERCAP, entry)
        if not readable(fs, join(zone, "energy_uj")):
            continue
        try:
            label = fs.read_text(join(zone, "name"))
        except OSError:
            label = entry
        depth = entry.count(":")
        if depth == 1:
            (psys if label.startswith("psys") else top).append((zone, f"{entry}:{label}"))
        elif label.startswith("dram"):
            dram.append((zone, f"{entry}:{label}"))
    return psys if psys else top + dram


@power_sensor("rapl", scope="domain", order=10, summary="Intel/AMD RAPL package/DRAM energy (powercap sysfs)")
def discover(fs: FS, options: dict) -> list[PowerReader]:
    zones = rapl_zones(fs)
    return [RaplReader(fs, zones)] if zones else []
