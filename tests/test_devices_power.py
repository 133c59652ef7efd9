"""Power readers against fixture sysfs trees (RAPL, hwmon, Jetson INA3221), tegrastats lines, external meters,
the sampler's energy integration, and NVML when a GPU is present."""

from __future__ import annotations

import glob
import sys
import time
from pathlib import Path

import pytest

from edgekit.devices.power import LocalFS, PowerSampler, discover
from edgekit.devices.power.base import PowerReader
from edgekit.devices.power.jetson import parse_tegrastats, tegrastats_watts
from edgekit.devices.power.nvml import load_nvml


def _w(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def rapl_tree(root: Path, pkg_uj: int = 1_000_000, dram_uj: int = 500_000, max_uj: int = 262_143_328_850):
    base = "sys/class/powercap"
    _w(root, f"{base}/intel-rapl:0/name", "package-0")
    _w(root, f"{base}/intel-rapl:0/energy_uj", str(pkg_uj))
    _w(root, f"{base}/intel-rapl:0/max_energy_range_uj", str(max_uj))
    _w(root, f"{base}/intel-rapl:0:0/name", "core")  # inside the package: not counted twice
    _w(root, f"{base}/intel-rapl:0:0/energy_uj", "123")
    _w(root, f"{base}/intel-rapl:0:1/name", "dram")
    _w(root, f"{base}/intel-rapl:0:1/energy_uj", str(dram_uj))
    _w(root, f"{base}/intel-rapl:0:1/max_energy_range_uj", str(max_uj))


def test_rapl_counts_package_plus_dram_and_handles_wraparound(tmp_path):
    max_uj = 10_000_000
    rapl_tree(tmp_path, pkg_uj=9_000_000, dram_uj=100, max_uj=max_uj)
    (reader,) = discover(LocalFS(tmp_path), "rapl")
    assert reader.kind == "energy" and len(reader.rails) == 2
    assert reader.read() == 0.0  # first read sets the baseline
    _w(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", "9_500_000".replace("_", ""))
    _w(tmp_path, "sys/class/powercap/intel-rapl:0:1/energy_uj", "200")
    assert reader.read() == pytest.approx(0.5001)  # 500_000 + 100 uJ
    # the package counter wraps: 9.5e6 -> 1e6 is (10e6 - 9.5e6) + 1e6 = 1.5e6 uJ, not a negative jump
    _w(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", "1000000")
    assert reader.read() == pytest.approx(0.5001 + 1.5)
    assert reader.wraps == 1


def test_rapl_psys_is_used_alone(tmp_path):
    rapl_tree(tmp_path)
    _w(tmp_path, "sys/class/powercap/intel-rapl:1/name", "psys")
    _w(tmp_path, "sys/class/powercap/intel-rapl:1/energy_uj", "5")
    (reader,) = discover(LocalFS(tmp_path), "rapl")
    assert reader.rails == ["intel-rapl:1:psys"]


def test_unreadable_rapl_is_no_sensor(tmp_path):
    rapl_tree(tmp_path)
    (tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj").unlink()
    (tmp_path / "sys/class/powercap/intel-rapl:0:1/energy_uj").unlink()
    assert discover(LocalFS(tmp_path), "rapl") == []
    assert discover(LocalFS(tmp_path), "auto", local=False) == []


def test_hwmon_energy_preferred_over_power_and_power_files(tmp_path):
    _w(tmp_path, "sys/class/hwmon/hwmon0/name", "some_soc")
    _w(tmp_path, "sys/class/hwmon/hwmon0/energy1_input", "2000000")
    _w(tmp_path, "sys/class/hwmon/hwmon0/power1_input", "9999999")  # same rail: ignored
    _w(tmp_path, "sys/class/hwmon/hwmon1/name", "amdgpu")
    _w(tmp_path, "sys/class/hwmon/hwmon1/power1_average", "15250000")
    _w(tmp_path, "sys/class/hwmon/hwmon1/power1_label", "PPT")
    _w(tmp_path, "sys/class/hwmon/hwmon2/name", "coretemp")
    _w(tmp_path, "sys/class/hwmon/hwmon2/temp1_input", "40000")
    readers = {r.name: r for r in discover(LocalFS(tmp_path), "hwmon")}
    assert set(readers) == {"hwmon-energy", "hwmon-power"}
    assert readers["hwmon-power"].read() == pytest.approx(15.25)
    assert readers["hwmon-power"].rails == ["amdgpu:PPT"]
    assert readers["hwmon-energy"].read() == 0.0
    _w(tmp_path, "sys/class/hwmon/hwmon0/energy1_input", "5000000")
    assert readers["hwmon-energy"].read() == pytest.approx(3.0)


def jetson_hwmon_tree(root: Path, with_input_rail: bool = True) -> None:
    chip = "sys/class/hwmon/hwmon3"
    _w(root, f"{chip}/name", "ina3221")
    rails = [("VDD_IN" if with_input_rail else "VDD_SOC", 5000, 1000), ("VDD_CPU_GPU_CV", 5000, 300),
             ("NC", 0, 0)]
    for k, (label, mv, ma) in enumerate(rails, start=1):
        _w(root, f"{chip}/in{k}_label", label)
        _w(root, f"{chip}/in{k}_input", str(mv))
        _w(root, f"{chip}/curr{k}_input", str(ma))


def test_jetson_ina3221_hwmon_uses_board_input_rail(tmp_path):
    jetson_hwmon_tree(tmp_path)
    (reader,) = discover(LocalFS(tmp_path), "ina3221")
    assert reader.rails == ["VDD_IN"]
    assert reader.read() == pytest.approx(5.0)  # 5000 mV * 1000 mA
    # auto picks the whole-board sensor and does not add the generic hwmon reader on top
    auto = discover(LocalFS(tmp_path), "auto", local=False)
    assert [r.name for r in auto] == ["ina3221"]


def test_jetson_ina3221_sums_rails_without_input_rail(tmp_path):
    jetson_hwmon_tree(tmp_path, with_input_rail=False)
    (reader,) = discover(LocalFS(tmp_path), "ina3221")
    assert sorted(reader.rails) == ["VDD_CPU_GPU_CV", "VDD_SOC"]  # the NC channel is skipped
    assert reader.read() == pytest.approx(5.0 + 1.5)


def test_jetson_ina3221_iio_layout(tmp_path):
    dev = "sys/bus/i2c/drivers/ina3221x/1-0040/iio:device0"
    for k, (rail, mw) in enumerate([("POM_5V_IN", 3247), ("POM_5V_GPU", 120), ("POM_5V_CPU", 648)]):
        _w(tmp_path, f"{dev}/rail_name_{k}", rail)
        _w(tmp_path, f"{dev}/in_power{k}_input", str(mw))
    (reader,) = discover(LocalFS(tmp_path), "ina3221")
    assert reader.rails == ["POM_5V_IN"] and reader.read() == pytest.approx(3.247)


@pytest.mark.parametrize("line, rails, watts", [
    ("RAM 2448/3964MB (lfb 5x2MB) CPU [12%@1479,5%@1479] EMC_FREQ 0% GR3D_FREQ 0% PLL@26C CPU@29C "
     "POM_5V_IN 3247/3247 POM_5V_GPU 120/120 POM_5V_CPU 648/648", 3, 3.247),
    ("12-01-2024 10:00:00 RAM 3012/7620MB CPU [1%@729,2%@729] GR3D_FREQ 0% cpu@45.5C VDD_IN 5071mW/5071mW "
     "VDD_CPU_GPU_CV 1432mW/1432mW VDD_SOC 1432mW/1432mW", 3, 5.071),
    ("RAM 3012/7620MB CPU [1%@729] VDD_CPU_GPU_CV 1000mW/900mW VDD_SOC 500mW/500mW", 2, 1.5),
])
def test_tegrastats_parsing(line, rails, watts):
    assert len(parse_tegrastats(line)) == rails
    assert tegrastats_watts(line) == pytest.approx(watts)


def test_tegrastats_without_rails():
    assert tegrastats_watts("RAM 2448/3964MB CPU [12%@1479]") is None


def test_external_meter_one_shot_and_streaming(tmp_path):
    one_shot = discover(LocalFS(tmp_path), "auto", {"power_command": [sys.executable, "-c", "print('4.25')"]})
    assert [r.name for r in one_shot] == ["external"]
    assert one_shot[0].read() == pytest.approx(4.25)
    one_shot[0].close()
    script = "import time\nfor i in range(200):\n    print('x'); print(2.0 + i, flush=True); time.sleep(0.01)\n"
    (reader,) = discover(LocalFS(tmp_path), "external", {"power_command": [sys.executable, "-c", script]})
    first = reader.read()
    time.sleep(0.3)
    assert reader.read() > first >= 2.0  # keeps reading the stream
    reader.close()


def test_external_meter_that_prints_nothing_is_an_error(tmp_path):
    from edgekit.devices.power.external import ExternalMeterReader

    reader = ExternalMeterReader([sys.executable, "-c", "print('no number')"], first_timeout_s=0.5)
    with pytest.raises(OSError, match="printed no number"):
        reader.read()
    reader.close()


class FakeEnergy(PowerReader):
    """An energy counter that grows at 10 W in wall-clock time."""

    name, kind, rails = "fake-energy", "energy", ["x"]

    def __init__(self):
        self.t0 = time.monotonic()

    def read(self):
        return 10.0 * (time.monotonic() - self.t0)


class FakePower(PowerReader):
    name, kind, rails = "fake-power", "power", ["y"]

    def read(self):
        return 3.0


def test_sampler_integrates_energy_and_power_over_a_window():
    sampler = PowerSampler([FakeEnergy(), FakePower()], interval_s=0.01).start()
    time.sleep(0.1)
    t0 = time.monotonic()
    time.sleep(0.2)
    t1 = time.monotonic()
    time.sleep(0.05)
    sampler.stop()
    win = sampler.window(t0, t1)
    assert win["per_sensor_w"]["fake-energy"] == pytest.approx(10.0, rel=0.05)
    assert win["per_sensor_w"]["fake-power"] == pytest.approx(3.0)
    assert win["power_w"] == pytest.approx(13.0, rel=0.05)
    series = sampler.power_series(t0)
    assert all(w == pytest.approx(10.0, rel=0.2) for _, w in series["fake-energy"][2:])
    # a window the samples do not cover gives no number rather than a guess
    assert sampler.window(t1 + 10, t1 + 11)["power_w"] is None


def test_sensor_that_fails_is_reported_not_guessed():
    class Broken(PowerReader):
        name, kind, rails = "broken", "power", []

        def read(self):
            raise OSError("gone")

    sampler = PowerSampler([Broken()], interval_s=0.01).start()
    time.sleep(0.03)
    sampler.stop()
    assert sampler.errors == ["broken: gone"]
    assert sampler.window(0, time.monotonic())["power_w"] is None


def _readable_any(patterns: list[str]) -> bool:
    for pattern in patterns:
        for path in glob.glob(pattern):
            try:
                with open(path) as fh:
                    fh.read()
                return True
            except OSError:
                continue
    return False


def test_this_machine_auto_discovery_finds_a_sensor_exactly_when_one_is_there():
    """Checked against an independent look at this machine: sysfs power/energy files or an NVIDIA library."""
    nvml = load_nvml()
    if nvml is not None:
        nvml.nvmlShutdown()
    ina3221 = any(Path(p).read_text().strip() == "ina3221" for p in glob.glob("/sys/class/hwmon/*/name"))
    offered = nvml is not None or ina3221 or _readable_any([
        "/sys/class/powercap/*/energy_uj", "/sys/class/hwmon/*/energy*_input", "/sys/class/hwmon/*/power*_input",
        "/sys/class/hwmon/*/power*_average"])
    readers = discover(LocalFS("/"), "auto")
    assert bool(readers) == offered, ([r.describe() for r in readers], offered)
    for r in readers:  # whatever is found must actually read
        assert r.read() >= 0
        r.close()


@pytest.mark.gpu
def test_nvml_reads_gpu_power():
    lib = load_nvml()
    if lib is None:
        pytest.skip("no NVIDIA GPU / libnvidia-ml.so.1 on this machine: NVML reader not exercised")
    lib.nvmlShutdown()
    (reader,) = discover(LocalFS("/"), "nvml")
    first = reader.read()
    assert first > 0
    reader.close()
