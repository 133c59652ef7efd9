"""Generic hwmon power and energy files (``/sys/class/hwmon/hwmonN``).

``energyN_input`` is a cumulative counter in microjoules (preferred: exact over a window);
``powerN_input`` / ``powerN_average`` are instantaneous/averaged power in microwatts. INA3221 chips (Jetson)
are handled by the jetson module, and RAPL mirrors (amd_energy) are skipped when RAPL is counted.
"""

from __future__ import annotations

import re

from edgekit.devices.power.base import FS, EnergyCounter, PowerReader, join, power_sensor, readable

HWMON = "/sys/class/hwmon"
SKIP_CHIPS = {"ina3221"}  # read by the jetson sensor
RAPL_MIRRORS = {"amd_energy", "zenpower"}
ENERGY_RE = re.compile(r"^energy(\d+)_input$")
POWER_RE = re.compile(r"^power(\d+)_(input|average)$")


class HwmonEnergyReader(PowerReader):
    kind = "energy"

    def __init__(self, fs: FS, files: list[tuple[str, str]]) -> None:
        self.fs, self.files = fs, files
        self.name, self.source = "hwmon-energy", HWMON
        self.rails = [label for _, label in files]
        self.counters = [EnergyCounter(None) for _ in files]

    def read(self) -> float:
        return sum(c.update(int(self.fs.read_text(p))) for (p, _), c in zip(self.files, self.counters)) / 1e6


class HwmonPowerReader(PowerReader):
    kind = "power"

    def __init__(self, fs: FS, files: list[tuple[str, str]]) -> None:
        self.fs, self.files = fs, files
        self.name, self.source = "hwmon-power", HWMON
        self.rails = [label for _, label in files]

    def read(self) -> float:
        return sum(int(self.fs.read_text(p)) for p, _ in self.files) / 1e6


def _label(fs: FS, chip_dir: str, stem: str, chip: str) -> str:
    try:
        return f"{chip}:{fs.read_text(join(chip_dir, stem + '_label'))}"
    except OSError:
        return f"{chip}:{stem}"


@power_sensor("hwmon", scope="domain", order=90, summary="generic hwmon power*_input / energy*_input files")
def discover(fs: FS, options: dict) -> list[PowerReader]:
    energy, power = [], []
    for entry in fs.listdir(HWMON):
        chip_dir = join(HWMON, entry)
        try:
            chip = fs.read_text(join(chip_dir, "name"))
        except OSError:
            chip = entry
        if chip in SKIP_CHIPS or (chip in RAPL_MIRRORS and options.get("have_rapl")):
            continue
        files = fs.listdir(chip_dir)
        chip_energy = [(join(chip_dir, f), _label(fs, chip_dir, f.rsplit("_", 1)[0], chip))
                       for f in files if ENERGY_RE.match(f) and readable(fs, join(chip_dir, f))]
        if chip_energy:  # a chip with energy counters: use them, not its power files (same rails)
            energy += chip_energy
            continue
        seen: set[str] = set()
        for f in files:
            m = POWER_RE.match(f)
            if m and m.group(1) not in seen and readable(fs, join(chip_dir, f)):
                seen.add(m.group(1))
                power.append((join(chip_dir, f), _label(fs, chip_dir, f"power{m.group(1)}", chip)))
    readers: list[PowerReader] = []
    if energy:
        readers.append(HwmonEnergyReader(fs, energy))
    if power:
        readers.append(HwmonPowerReader(fs, power))
    return readers
