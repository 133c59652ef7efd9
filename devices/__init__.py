"""Device benchmark runners: latency, power and energy per inference, locally and on boards (SSH, adb).

Light at import time: no runtime, paramiko or adbutils is imported until a profile runs.
"""

if __name__ != "edgekit.devices":  # the folder is mapped into edgekit by setup.py; a second copy would not see its registrations
    raise ImportError(f"the devices/ folder is the package edgekit.devices: import edgekit.devices instead of {__name__}")


from edgekit.devices.artifact import Artifact, read_artifact, verify_files
from edgekit.devices.spec import add_device, get_device, load_devices

__all__ = ["Artifact", "add_device", "get_device", "load_devices", "read_artifact", "verify_files"]
