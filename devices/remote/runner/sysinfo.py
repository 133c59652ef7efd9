"""What the board is: OS, CPU, memory, GPUs, runtimes, governor, clocks, temperatures, emulation."""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys

EMULATION_MARKER = "/etc/edgekit-emulated.json"


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def cpu_freqs_khz() -> dict:
    out = {}
    for path in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")):
        val = _read(path)
        if val and val.isdigit():
            out[path.split("/")[5]] = int(val)
    return out


def temperatures_c() -> dict:
    out = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        val, kind = _read(zone + "/temp"), _read(zone + "/type")
        try:
            out[f"{os.path.basename(zone)}:{kind or '?'}"] = int(val) / 1000.0
        except (TypeError, ValueError):
            continue
    return out


def throttle_counts() -> int | None:
    vals = [_read(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/thermal_throttle/*_throttle_count")]
    vals = [int(v) for v in vals if v and v.isdigit()]
    return sum(vals) if vals else None


def _version(module: str, dist: str | None = None) -> str | None:
    """Installed version of a runtime without importing it (importing tvm takes seconds)."""
    import importlib.metadata as md
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for name in (dist, module, module.replace("_", "-")):
        if not name:
            continue
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return "unknown"


def runtimes_info() -> dict:
    from .runtimes import RUNNERS

    out = {}
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        ver = _version(module)
        out[name] = {"available": ver is not None, "version": ver, "runnable": name in RUNNERS}
    trt_py, trtexec = _version("tensorrt"), shutil.which("trtexec")
    out["tensorrt"] = {"available": bool(trt_py or trtexec), "version": trt_py, "trtexec": trtexec,
                       "runnable": False}
    tvm = _version("tvm", "apache-tvm")
    out["tvm"] = {"available": tvm is not None, "version": tvm, "runnable": "tvm" in RUNNERS}
    cm = _version("coremltools") if sys.platform == "darwin" else None
    out["coreml"] = {"available": cm is not None, "version": cm, "runnable": False,
                     "note": None if sys.platform == "darwin" else "Core ML runs on macOS only"}
    return out


def gpu_info() -> list:
    gpus = []
    for info in glob.glob("/proc/driver/nvidia/gpus/*/information"):
        text = _read(info) or ""
        for line in text.splitlines():
            if line.startswith("Model:"):
                gpus.append(line.split(":", 1)[1].strip())
    if not gpus and shutil.which("nvidia-smi"):
        try:
            res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5)
            gpus = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    model = _read("/proc/device-tree/model")
    if model and ("jetson" in model.lower() or _read("/etc/nv_tegra_release")):
        gpus.append(f"integrated (Tegra): {model.strip(chr(0))}")
    return gpus


def board_info() -> dict:
    cpu_model = platform.processor() or platform.machine()
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.split(":")[0].strip() in ("model name", "Hardware", "Model"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kb = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    governors = sorted({g for g in (_read(p) for p in glob.glob(
        "/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")) if g})
    limits = {}
    for key in ("cpuinfo_min_freq", "cpuinfo_max_freq"):
        vals = [_read(p) for p in glob.glob(f"/sys/devices/system/cpu/cpu[0-9]*/cpufreq/{key}")]
        vals = [int(v) for v in vals if v and v.isdigit()]
        limits[key.split("_")[1] + "_khz"] = max(vals) if key.endswith("max_freq") and vals else (
            min(vals) if vals else None)
    return {
        "os": platform.platform(), "system": platform.system(), "arch": platform.machine(),
        "hostname": platform.node(), "python": sys.version.split()[0], "python_executable": sys.executable,
        "cpu": cpu_model, "cpu_count": os.cpu_count(), "memory_mb": mem_kb // 1024 if mem_kb else None,
        "gpus": gpu_info(), "runtimes": runtimes_info(),
        "cpu_governor": governors or None, "cpu_freq_khz": cpu_freqs_khz() or None, "cpu_freq_limits": limits,
        "temperatures_c": temperatures_c() or None, "emulation": emulation(),
    }


def emulation() -> dict | None:
    """The emulated board's marker (edgekit.devices.farm writes it), or None on real hardware."""
    text = _read(EMULATION_MARKER)
    if not text:
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        return {"emulated": True, "note": f"unreadable {EMULATION_MARKER}"}
    return marker if isinstance(marker, dict) and marker.get("emulated") else None
