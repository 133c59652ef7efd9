"""Start, kill and stop emulated boards; each one is written into the devices file like a real board.

A board ``NAME`` (state in ``<cache>/boards/NAME/``):
- file system: an overlay (lower: the cached root file system, upper: the board's own changes) at ``root/``,
  with the power tree of :mod:`edgekit.devices.farm.power` under ``root/sys``;
- network: namespace ``edgekit-NAME`` joined to this host by a veth pair, the board at ``10.213.N.2``, the host
  side at ``10.213.N.1`` (a /30 that exists only between these two ends);
- SSH: this host's OpenSSH server started inside that namespace with its own ed25519 host key, key-only root
  login and ``ChrootDirectory root/`` (so every session runs the board's aarch64 programs under qemu-user),
  SFTP served in-process (internal-sftp) from the board's file system;
- CPU accounting: a cgroup that holds the SSH server and everything it starts (the power model's input, and
  what :func:`kill_board` kills to simulate a board losing power);
- the devices-file entry: ``transport: ssh``, the address, a generated client key and a known_hosts file with
  the pinned host key, ``power: ina3221``, tags ``emulated`` and the architecture.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from edgekit.devices.farm.host import SSHD, FarmError, cache_dir, run, unavailable_reason
from edgekit.devices.farm.power import PowerModel, create_cgroup, init_tree, kill_cgroup
from edgekit.errors import UserInputError

SUBNET = "10.213"
EMULATED_TAG = "emulated"


@dataclass
class BoardState:
    name: str
    arch: str
    index: int
    dir: str
    netns: str
    host_if: str
    address: str
    cgroup: str
    usage_file: str
    trace: str
    key: str
    known_hosts: str
    power_model: dict
    sshd_pid: int | None = None
    power_pid: int | None = None

    @property
    def root(self) -> Path:
        return Path(self.dir) / "root"

    def device_entry(self) -> dict:
        return {"name": self.name, "transport": "ssh", "host": self.address, "user": "root", "key": self.key,
                "known_hosts": self.known_hosts, "python": "python3", "runtimes": ["onnxruntime", "tvm"],
                "power": "ina3221", "tags": [EMULATED_TAG, self.arch]}

    def save(self) -> None:
        (Path(self.dir) / "state.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def boards_dir() -> Path:
    return cache_dir() / "boards"


def load_state(name: str) -> BoardState | None:
    try:
        return BoardState(**json.loads((boards_dir() / name / "state.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def _farm_lock() -> Iterator[None]:
    boards_dir().mkdir(parents=True, exist_ok=True)
    with open(boards_dir() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _free_index() -> int:
    used = {s.index for s in (load_state(p.name) for p in boards_dir().iterdir() if p.is_dir()) if s}
    links = run(["ip", "-o", "link", "show"], "list network links").stdout
    for i in range(1, 251):
        if i not in used and f"ekf{i}h" not in links:
            return i
    raise FarmError("no free board index (250 boards running?)")


def _keygen(path: Path) -> str:
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], "ssh-keygen")
    return path.with_name(path.name + ".pub").read_text().strip()


def _sshd_config(st: BoardState, bdir: Path) -> Path:
    cfg = bdir / "sshd_config"
    cfg.write_text("\n".join([
        f"ListenAddress {st.address}:22", f"HostKey {bdir / 'ssh' / 'host_ed25519_key'}",
        f"PidFile {bdir / 'sshd.pid'}", f"AuthorizedKeysFile {bdir / 'ssh' / 'authorized_keys'}",
        f"ChrootDirectory {st.root}", "Subsystem sftp internal-sftp", "AllowUsers root",
        "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "X11Forwarding no",
        "AllowTcpForwarding no", "PermitTunnel no", "LogLevel ERROR", "MaxSessions 30", "MaxStartups 30",
    ]) + "\n")
    return cfg


def _wait_ssh(address: str, timeout_s: float = 20.0) -> None:
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 22), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise FarmError(f"the board's sshd at {address}:22 did not answer within {timeout_s:.0f} s ({last})")


def start_board(name: str, arch: str = "aarch64", devices_file: str | Path | None = None,
                model: PowerModel | None = None, force: bool = False,
                log: Callable[[str], None] = print) -> BoardState:
    """Build (once) and start board ``name``; write its devices-file entry; return its state."""
    from edgekit.devices.farm.rootfs import build_rootfs
    import re

    from edgekit.devices.spec import NAME_PATTERN, add_device, load_devices

    if not re.match(NAME_PATTERN, name) or name == "local":
        raise UserInputError(f"board name {name!r}: letters, digits, . _ - (not 'local')")
    reason = unavailable_reason(arch)
    if reason:
        raise FarmError(f"cannot emulate an {arch} board here: {reason}")
    file_exists = devices_file is None or Path(devices_file).expanduser().exists()
    existing = load_devices(devices_file).get(name) if file_exists else None
    if existing is not None and EMULATED_TAG not in existing.tags and not force:
        raise UserInputError(f"device {name!r} is already in the devices file and is not an emulated board; "
                             "pick another name or pass --force")
    if load_state(name) is not None:
        if not force:
            raise UserInputError(f"board {name!r} is already running (stop it with `edgekit devices emulate "
                                 f"{name} --stop`, or pass --force to restart it)")
        stop_board(name)
    rootfs = build_rootfs(arch, log=log)
    model = model or PowerModel()
    bdir = boards_dir() / name
    with _farm_lock():
        index = _free_index()
        shutil.rmtree(bdir, ignore_errors=True)
        for sub in ("upper", "work", "root", "ssh"):
            (bdir / sub).mkdir(parents=True)
        st = BoardState(name=name, arch=arch, index=index, dir=str(bdir), netns=f"edgekit-{name}",
                        host_if=f"ekf{index}h", address=f"{SUBNET}.{index}.2", cgroup="", usage_file="",
                        trace=str(bdir / "power.trace"), key=str(bdir / "ssh" / "id_ed25519"),
                        known_hosts=str(bdir / "ssh" / "known_hosts"), power_model=asdict(model))
        st.save()
        try:
            _bring_up(st, rootfs, bdir, model)
        except BaseException:
            stop_board(name, quiet=True)
            raise
    st.save()
    add_device(st.device_entry(), devices_file, force=True)
    return st


def _bring_up(st: BoardState, rootfs: Path, bdir: Path, model: PowerModel) -> None:
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={rootfs},upperdir={bdir / 'upper'},workdir={bdir / 'work'}", str(st.root)], "mount the overlay")
    init_tree(st.root, model, os.cpu_count() or 1)
    host_pub = _keygen(bdir / "ssh" / "host_ed25519_key")
    (bdir / "ssh" / "authorized_keys").write_text(_keygen(Path(st.key)) + "\n")
    Path(st.known_hosts).write_text(f"{st.address} {' '.join(host_pub.split()[:2])}\n")
    board_if = f"ekf{st.index}b"
    run(["ip", "netns", "add", st.netns], "create the network namespace")
    run(["ip", "link", "add", st.host_if, "type", "veth", "peer", "name", board_if], "create the veth pair")
    run(["ip", "link", "set", board_if, "netns", st.netns], "move the veth end into the namespace")
    run(["ip", "addr", "add", f"{SUBNET}.{st.index}.1/30", "dev", st.host_if], "address the host end")
    run(["ip", "link", "set", st.host_if, "up"], "bring the host end up")
    ns = ["ip", "-n", st.netns]
    run(ns + ["addr", "add", f"{st.address}/30", "dev", board_if], "address the board")
    run(ns + ["link", "set", board_if, "up"], "bring the board end up")
    run(ns + ["link", "set", "lo", "up"], "bring the board's loopback up")
    cg, usage = create_cgroup(st.name)
    st.cgroup, st.usage_file = str(cg), str(usage)
    procs = cg / "cgroup.procs"

    def join_cgroup() -> None:  # runs in the child before exec: sshd and all it starts are the board's
        procs.write_text(str(os.getpid()))

    cfg = _sshd_config(st, bdir)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # OpenSSH's privilege-separation directory
    with open(bdir / "sshd.log", "ab") as logf:
        sshd = subprocess.Popen(["nsenter", f"--net=/run/netns/{st.netns}", SSHD, "-D", "-e", "-f", str(cfg)],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, preexec_fn=join_cgroup,
                                start_new_session=True)
    st.sshd_pid = sshd.pid
    st.save()
    _wait_ssh(st.address)
    with open(bdir / "power.log", "ab") as logf:
        power = subprocess.Popen([sys.executable, "-m", "edgekit.devices.farm.power", "--root", str(st.root),
                                  "--usage", st.usage_file, "--trace", st.trace, "--idle-w", str(model.idle_w),
                                  "--core-w", str(model.core_w)], stdin=subprocess.DEVNULL, stdout=logf,
                                 stderr=logf, start_new_session=True)
    st.power_pid = power.pid
    st.save()
    deadline = time.monotonic() + 20
    while not Path(st.trace).exists() or Path(st.trace).stat().st_size == 0:
        if power.poll() is not None or time.monotonic() > deadline:
            raise FarmError(f"the board's power daemon did not start (see {bdir / 'power.log'})")
        time.sleep(0.05)


def kill_board(name: str) -> None:
    """Kill every process of the board at once (as if it lost power); its files and network stay."""
    st = load_state(name)
    if st is None or not st.cgroup:
        raise UserInputError(f"no running board {name!r}")
    kill_cgroup(Path(st.cgroup))


def _terminate(pid: int | None) -> None:
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:  # not our child: poll for its disappearance
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop_board(name: str, devices_file: str | Path | None = None, quiet: bool = False) -> bool:
    """Stop board ``name``: its processes, power daemon, mounts, namespace and cgroup; False if none ran."""
    st = load_state(name)
    if st is None:
        return False
    if st.cgroup:
        kill_cgroup(Path(st.cgroup))
    _terminate(st.sshd_pid)
    _terminate(st.power_pid)
    errors = []
    for argv in (["umount", str(st.root)], ["ip", "netns", "del", st.netns], ["ip", "link", "del", st.host_if]):
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0 and "not mounted" not in res.stderr and "No such file" not in res.stderr and \
                "Cannot find device" not in res.stderr and "Cannot remove" not in res.stderr:
            errors.append(f"{' '.join(argv)}: {res.stderr.strip()}")
    if st.cgroup:
        with contextlib.suppress(OSError):
            Path(st.cgroup).rmdir()
    if not errors:
        shutil.rmtree(st.dir, ignore_errors=True)
    if devices_file is not None:
        from edgekit.devices.spec import remove_device

        remove_device(name, devices_file, only_tag=EMULATED_TAG)
    if errors and not quiet:
        raise FarmError(f"board {name}: stopped with errors: {'; '.join(errors)}")
    return True


def running_boards() -> list[BoardState]:
    if not boards_dir().exists():
        return []
    return [s for s in (load_state(p.name) for p in sorted(boards_dir().iterdir()) if p.is_dir()) if s]
