"""What the host needs to emulate boards, where the farm keeps its files, and the one command helper."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from edgekit.errors import EdgekitError

ARCHES = {"aarch64": {"debian": "arm64", "qemu": "qemu-aarch64", "elf_machine": 183}}
APT_PACKAGES = ("qemu-user-static", "binfmt-support", "mmdebstrap", "arch-test", "iproute2", "openssh-server")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
SSHD = "/usr/sbin/sshd"


class FarmError(EdgekitError):
    """The emulated board could not be built, started or stopped (the message says which step)."""


def cache_dir() -> Path:
    """``$EDGEKIT_FARM_CACHE`` or ``~/.cache/edgekit-farm``: root file systems, wheels and board state."""
    env = os.environ.get("EDGEKIT_FARM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgekit-farm"


def run(argv: list[str], what: str, timeout: float = 120.0, **kw) -> subprocess.CompletedProcess:
    """Run argv (never a shell string); raise FarmError naming the step and the command's stderr."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FarmError(f"{what}: {argv[0]} failed: {exc}") from None
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip()[-800:]
        raise FarmError(f"{what}: `{' '.join(argv[:4])}...` exited {res.returncode}: {tail}")
    return res


def binfmt_entry(arch: str) -> Path:
    return BINFMT / ARCHES[arch]["qemu"]


def ensure_binfmt(arch: str) -> None:
    """Mount binfmt_misc and enable the qemu entry when they are not (root only)."""
    if not (BINFMT / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], "mount binfmt_misc")
    entry = binfmt_entry(arch)
    if not entry.exists() and shutil.which("update-binfmts"):
        run(["update-binfmts", "--enable", ARCHES[arch]["qemu"]], f"enable binfmt {ARCHES[arch]['qemu']}")


def unavailable_reason(arch: str = "aarch64", need_rootfs: bool = False) -> str | None:
    """Why this host cannot run emulated boards, or None when it can (``need_rootfs``: the cache is built)."""
    if arch not in ARCHES:
        return f"architecture {arch!r} is not emulated; accepted: {', '.join(ARCHES)}"
    if os.name != "posix" or not Path("/proc/self").exists():
        return "emulated boards need Linux"
    if os.geteuid() != 0:
        return "emulated boards need root (network namespaces, overlay mounts, chroot)"
    missing = [tool for tool in ("mmdebstrap", "ip", "mount", "unshare") if shutil.which(tool) is None]
    if not Path(SSHD).exists():
        missing.append(SSHD)
    if missing:
        return f"missing {', '.join(missing)} (apt-get install {' '.join(APT_PACKAGES)})"
    try:
        ensure_binfmt(arch)
    except FarmError as exc:
        return f"binfmt_misc is not usable: {exc}"
    entry = binfmt_entry(arch)
    if not entry.exists():
        return f"no binfmt_misc entry {entry.name} (apt-get install qemu-user-static binfmt-support)"
    text = entry.read_text()
    if not text.startswith("enabled"):
        return f"binfmt_misc entry {entry.name} is disabled"
    flags = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("flags:")), "")
    if "F" not in flags:  # without F the interpreter is looked up inside the chroot, where it is absent
        return f"binfmt_misc entry {entry.name} lacks the F (fix binary) flag needed inside a chroot"
    if not Path("/proc/filesystems").read_text().count("overlay"):
        return "the kernel has no overlay file system"
    if need_rootfs:
        from edgekit.devices.farm.rootfs import rootfs_ready

        if not rootfs_ready(arch):
            return (f"the {arch} board root file system is not built yet (`edgekit devices emulate --build-only`; "
                    ".ci/run builds it before the tests)")
    return None
