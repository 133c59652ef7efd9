"""NVIDIA GPU power through NVML, loaded with ctypes from ``libnvidia-ml.so.1`` (no pynvml needed).

Uses ``nvmlDeviceGetTotalEnergyConsumption`` (mJ counter, Volta and newer) when it works, otherwise
``nvmlDeviceGetPowerUsage`` (mW). This machine only (NVML is a local library).
"""

from __future__ import annotations

import ctypes

from edgekit.devices.power.base import FS, PowerReader, power_sensor

LIBS = ("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll")


def load_nvml():
    for name in LIBS:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.nvmlInit_v2() == 0:
            return lib
    return None


class NvmlReader(PowerReader):
    def __init__(self, lib, handles: list, use_energy: bool, names: list[str]) -> None:
        self.lib, self.handles, self.use_energy = lib, handles, use_energy
        self.kind = "energy" if use_energy else "power"
        self.name, self.source, self.rails = "nvml", "libnvidia-ml.so.1", names

    def read(self) -> float:
        total = 0
        for h in self.handles:
            if self.use_energy:
                val = ctypes.c_ulonglong()
                rc = self.lib.nvmlDeviceGetTotalEnergyConsumption(h, ctypes.byref(val))
            else:
                val = ctypes.c_uint()
                rc = self.lib.nvmlDeviceGetPowerUsage(h, ctypes.byref(val))
            if rc != 0:
                raise OSError(f"NVML call failed with code {rc}")
            total += val.value
        return total / 1e3  # mJ -> J, or mW -> W

    def close(self) -> None:
        self.lib.nvmlShutdown()


@power_sensor("nvml", scope="domain", order=20, summary="NVIDIA GPU power/energy via NVML (this machine)", local_only=True)
def discover(fs: FS, options: dict) -> list[PowerReader]:
    lib = load_nvml()
    if lib is None:
        return []
    count = ctypes.c_uint()
    if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0 or count.value == 0:
        lib.nvmlShutdown()
        return []
    handles, names = [], []
    for i in range(count.value):
        h = ctypes.c_void_p()
        if lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h)) == 0:
            handles.append(h)
            buf = ctypes.create_string_buffer(96)
            lib.nvmlDeviceGetName(h, buf, 96)
            names.append(f"gpu{i}:{buf.value.decode(errors='replace')}")
    use_energy = True
    for h in handles:
        val = ctypes.c_ulonglong()
        if lib.nvmlDeviceGetTotalEnergyConsumption(h, ctypes.byref(val)) != 0:
            use_energy = False
    return [NvmlReader(lib, handles, use_energy, names)] if handles else []
