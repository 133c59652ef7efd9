"""Power and energy measurement: one reader interface over RAPL, NVML, Jetson INA3221/tegrastats, generic
hwmon and external meters, plus a background sampler. See :mod:`edgekit.devices.power.base`."""

from edgekit.devices.power.base import SENSORS, LocalFS, PowerReader, discover
from edgekit.devices.power.sampler import PowerSampler

__all__ = ["SENSORS", "LocalFS", "PowerReader", "PowerSampler", "discover"]
