"""Build and cache a board's root file system: Debian for the board's architecture, python3, the runtimes.

Recipe (hashed into the cache stamp, so a changed recipe rebuilds and an unchanged one costs nothing):
1. ``mmdebstrap --arch=arm64`` of this host's Debian release from this host's apt sources (the same package
   mirror as the host; nothing else is contacted), with python3; maintainer scripts run under qemu-user.
2. The runtimes' aarch64 wheels from the package index, unpacked with this host's pip into the board's
   ``/usr/local/lib/python3.X/dist-packages`` (``--platform manylinux_2_28_aarch64 --only-binary``): onnxruntime
   and apache-tvm pinned to the versions installed here (a TVM library must be loaded by the TVM version that
   compiled it). OpenVINO publishes no aarch64 wheel of the version installed here, so the board has none and
   a profile asking for it is refused by the runner ("runtime 'openvino' is not installed").
3. ``/etc/edgekit-emulated.json``: the marker the runner reports, so emulated latency is labelled as such.

The result lives in ``<cache>/rootfs-<arch>/`` and is never modified by a board (boards mount it read-only as
the lower layer of an overlay).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Callable

from edgekit.devices.farm.host import ARCHES, FarmError, cache_dir, ensure_binfmt, run

DEBIAN_PACKAGES = ("python3", "procps")
WHEELS = ("onnxruntime", "apache-tvm", "numpy")  # pinned to this host's versions when installed here
FALLBACK_PINS = {"onnxruntime": "1.32.0", "apache-tvm": "0.27.0.post1", "numpy": "2.4.6"}
MARKER = "etc/edgekit-emulated.json"
STAMP = ".edgekit-rootfs.json"
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_24_aarch64",
             "manylinux_2_17_aarch64", "manylinux2014_aarch64")


def rootfs_dir(arch: str = "aarch64") -> Path:
    return cache_dir() / f"rootfs-{arch}"


def _host_release() -> tuple[str, str]:
    """(codename, apt sources file) of this Debian host: the board gets the same release and mirror."""
    codename = None
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            codename = line.split("=", 1)[1].strip().strip('"')
    sources = next((p for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
                    if p.is_file() and p.read_text().strip()), None)
    if not codename or sources is None:
        raise FarmError("building a board root file system needs a Debian host (VERSION_CODENAME in /etc/os-release "
                        "and an apt sources file)")
    return codename, str(sources)


def wheel_pins() -> dict[str, str]:
    import importlib.metadata as md

    pins = {}
    for name in WHEELS:
        try:
            pins[name] = md.version(name)
        except md.PackageNotFoundError:
            pins[name] = FALLBACK_PINS[name]
    return pins


def recipe(arch: str = "aarch64") -> dict:
    codename, _ = _host_release()
    return {"arch": arch, "debian": codename, "packages": list(DEBIAN_PACKAGES), "wheels": wheel_pins(),
            "layout": 1}


def recipe_hash(arch: str = "aarch64") -> str:
    return hashlib.sha256(json.dumps(recipe(arch), sort_keys=True).encode()).hexdigest()[:16]


def rootfs_ready(arch: str = "aarch64") -> bool:
    stamp = rootfs_dir(arch) / STAMP
    try:
        return json.loads(stamp.read_text()).get("recipe_hash") == recipe_hash(arch)
    except (OSError, ValueError, FarmError):
        return False


def _board_python(root: Path) -> str:
    versions = sorted(p.name[len("python"):] for p in (root / "usr" / "bin").glob("python3.*")
                      if p.name[len("python3."):].isdigit())
    if not versions:
        raise FarmError(f"{root}: no python3.X in the root file system")
    return versions[-1]


def _install_wheels(root: Path, pins: dict[str, str], log: Callable[[str], None]) -> None:
    pyver = _board_python(root)
    target = root / "usr" / "local" / "lib" / f"python{pyver}" / "dist-packages"
    target.mkdir(parents=True, exist_ok=True)
    # pip byte-compiles with this host's python: valid on the board when the python versions match
    argv = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
            "--target", str(target), "--only-binary=:all:", "--implementation", "cp", "--python-version", pyver,
            "--abi", "cp" + pyver.replace(".", "")]
    for plat in PLATFORMS:
        argv += ["--platform", plat]
    argv += [f"{name}=={ver}" for name, ver in sorted(pins.items())]
    log(f"installing aarch64 wheels for python {pyver}: {', '.join(f'{k}=={v}' for k, v in sorted(pins.items()))}")
    run(argv, "install the runtimes' aarch64 wheels", timeout=1800)
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts written for this host's python
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != pyver:  # compile once here, not on every board
        log(f"byte-compiling the wheels with the board's python {pyver} (under qemu)")
        run(["chroot", str(root), f"/usr/bin/python{pyver}", "-m", "compileall", "-q",
             f"/usr/local/lib/python{pyver}/dist-packages"], "byte-compile the wheels", timeout=3600)


def build_rootfs(arch: str = "aarch64", force: bool = False, log: Callable[[str], None] = print) -> Path:
    """The cached root file system for ``arch``, built (a few minutes) when missing or its recipe changed."""
    final = rootfs_dir(arch)
    if rootfs_ready(arch) and not force:
        return final
    ensure_binfmt(arch)
    codename, sources = _host_release()
    tmp = final.with_name(final.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the {arch} root file system (Debian {codename}) in {tmp}: a few minutes, once")
    run(["mmdebstrap", f"--arch={ARCHES[arch]['debian']}", "--variant=apt", "--mode=root",
         f"--include={','.join(DEBIAN_PACKAGES)}", "--dpkgopt=path-exclude=/usr/share/doc/*",
         "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
         codename, str(tmp), sources], "mmdebstrap", timeout=3600)
    return finish_rootfs(tmp, arch, log)


def finish_rootfs(tmp: Path, arch: str = "aarch64", log: Callable[[str], None] = print) -> Path:
    """Steps 2-3 of the recipe on a bootstrapped Debian tree ``tmp``; then move it into the cache."""
    final = rootfs_dir(arch)
    rec = recipe(arch)
    _install_wheels(tmp, rec["wheels"], log)
    qemu = run([f"{ARCHES[arch]['qemu']}-static", "--version"], "qemu version").stdout.splitlines()[0]
    marker = {"emulated": True, "emulator": "qemu-user via binfmt_misc", "qemu": qemu,
              "host_arch": platform.machine(), "note": "latency on this board is emulated: not comparable with "
              "native numbers"}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    stamp = {"recipe_hash": recipe_hash(arch), "recipe": rec,
             "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    log(f"root file system ready: {final}")
    return final
