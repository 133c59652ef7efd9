"""The SSH transport against a real sshd started on loopback with generated keys (Debian's openssh-server)."""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.devices import read_artifact
from edgekit.devices.artifact import ChecksumError
from edgekit.devices.profile import ProfileOptions, check_device, profile
from edgekit.devices.spec import SSHDevice
from tests.device_artifacts import make_onnx_artifact, make_openvino_artifact
from edgekit.devices.transports.base import BoardUnreachable, HostKeyError, RuntimeMissing

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not (os.path.exists(SSHD) and os.path.exists("/usr/bin/ssh-keygen")),
                                reason="openssh-server (sshd, ssh-keygen) not installed: `.ci/run` installs it")
FAST = dict(budget_s=0.5, warmup_s=0.05, warmup_runs=3, idle_s=0.0, min_runs=20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def _sshd_descendants(pid: int) -> list[int]:
    """The per-connection sshd processes under the listener we started (not the commands they run)."""
    parent, comm = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            comm[int(entry)] = stat[stat.index("(") + 1:stat.rindex(")")]
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += [k for k in kids if comm[k].startswith("sshd")]
        frontier = kids
    return out


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(d / "host_key")
    user_pub = _keygen(d / "user_key")
    (d / "authorized_keys").write_text(user_pub + "\n")
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    user = getpass.getuser()
    (d / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "StrictModes no", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "UsePAM no", "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxSessions 30", "MaxStartups 30",
    ]) + "\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    yield SimpleNamespace(dir=d, port=port, user=user, key=d / "user_key", known_hosts=known, proc=proc,
                          host_pub=host_pub)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return read_artifact(make_onnx_artifact(tmp_path_factory.mktemp("art") / "tiny"))


def _device(sshd, tmp_path, **kw) -> SSHDevice:
    base = dict(name="loop", transport="ssh", host="127.0.0.1", port=sshd.port, user=sshd.user,
                key=str(sshd.key), known_hosts=str(sshd.known_hosts), python=sys.executable,
                remote_dir=str(tmp_path / "board-cache"), connect_timeout_s=5)
    base.update(kw)
    return SSHDevice(**base)


def test_profile_over_ssh_end_to_end(sshd, artifact, tmp_path):
    dev = _device(sshd, tmp_path)
    first = profile(artifact, dev, ProfileOptions(**FAST))
    assert first.status == "ok", first.error
    assert first.samples.n >= 20 and len(first.samples.latency_ms) == first.samples.n
    lat = first.latency_ms
    assert 0 < lat.min <= lat.median <= lat.p90 <= lat.p99 <= lat.max
    assert first.validation.status == "passed" and first.validation.cosine_min > 0.9999
    assert first.push["cached"] is False
    # the board holds the artifact under its content hash, verified, and no temp upload dirs are left
    remote = Path(first.push["remote_dir"])
    assert remote.name == artifact.digest[:32]
    for rel, digest in artifact.files.items():
        assert hashlib.sha256((remote / rel).read_bytes()).hexdigest() == digest
    assert not [p for p in remote.parent.iterdir() if p.name.startswith(".tmp-")]
    second = profile(artifact, dev, ProfileOptions(**FAST))
    assert second.status == "ok" and second.push["cached"] is True
    # a corrupted cached copy is detected and replaced
    (remote / "model.onnx").write_bytes(b"garbage")
    third = profile(artifact, dev, ProfileOptions(**FAST, validate=False))
    assert third.status == "ok" and third.push["cached"] is False
    assert hashlib.sha256((remote / "model.onnx").read_bytes()).hexdigest() == artifact.files["model.onnx"]


def test_openvino_artifact_over_ssh(sshd, artifact, tmp_path):
    ov_art = read_artifact(make_openvino_artifact(artifact.root, tmp_path / "ov"))
    r = profile(ov_art, _device(sshd, tmp_path), ProfileOptions(**FAST))
    assert r.status == "ok", r.error
    assert r.runtime.name == "openvino" and r.samples.n >= 20
    assert r.validation.status == "passed" and r.validation.max_abs < 1e-3


def test_check_over_ssh(sshd, tmp_path):
    info = check_device(_device(sshd, tmp_path))
    assert info["arch"] and info["runtimes"]["onnxruntime"]["available"] is True
    assert info["power_status"].startswith("no power sensor") or info["power_sensors"]


def test_changed_host_key_is_refused(sshd, tmp_path):
    other = _keygen(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    with pytest.raises(HostKeyError, match="CHANGED"):
        check_device(_device(sshd, tmp_path, known_hosts=str(known)))


def test_unknown_host_key_is_refused(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(HostKeyError, match="not in"):
        check_device(_device(sshd, tmp_path, known_hosts=str(known)))


def test_board_unreachable(sshd, tmp_path):
    with pytest.raises(BoardUnreachable, match="unreachable"):
        check_device(_device(sshd, tmp_path, port=_free_port(), connect_timeout_s=2))


def _python_without_onnxruntime() -> str | None:
    for exe in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(exe):
            probe = subprocess.run([exe, "-c", "import onnxruntime"], capture_output=True)
            if probe.returncode != 0:
                return exe
    return None


def test_runtime_missing_on_board(sshd, artifact, tmp_path):
    exe = _python_without_onnxruntime()
    if exe is None:
        pytest.skip("no system python3 without onnxruntime to play a board that lacks the runtime")
    with pytest.raises(RuntimeMissing, match="onnxruntime"):
        profile(artifact, _device(sshd, tmp_path, python=exe), ProfileOptions(**FAST))


def test_checksum_mismatch_local_and_after_upload(sshd, artifact, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    make_onnx_artifact(bad)
    (bad / "reference.npz").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="reference.npz"):
        profile(read_artifact(bad), _device(sshd, tmp_path), ProfileOptions(**FAST))

    from edgekit.devices.transports import ssh as ssh_mod

    real_upload = ssh_mod.SSHTransport._upload

    def corrupting_upload(self, local, remote):
        real_upload(self, local, remote)
        if remote.endswith("model.onnx"):
            with self.sftp.open(remote, "ab") as fh:
                fh.write(b"\0")

    monkeypatch.setattr(ssh_mod.SSHTransport, "_upload", corrupting_upload)
    dev = _device(sshd, tmp_path, remote_dir=str(tmp_path / "cache2"))
    with pytest.raises(ChecksumError, match="model.onnx"):
        profile(artifact, dev, ProfileOptions(**FAST))
    leftovers = list((tmp_path / "cache2" / "artifacts").iterdir())
    assert leftovers == [], f"remote temp files not cleaned: {leftovers}"


def test_dropped_connection_keeps_samples(sshd, artifact, tmp_path):
    dropped = []

    def on_event(device, ev):
        if ev["event"] == "samples" and not dropped:
            # kill the per-connection sshd processes: the TCP connection drops mid-run
            for pid in _sshd_descendants(sshd.proc.pid):
                os.kill(pid, 9)
                dropped.append(time.monotonic())

    opts = ProfileOptions(budget_s=6.0, warmup_s=0.05, warmup_runs=3, idle_s=0.0, target_rel_ci=0.0,
                          chunk_s=0.05, validate=False)
    result = profile(artifact, _device(sshd, tmp_path), opts, on_event=on_event)
    assert dropped, "no sshd connection process found to kill"
    # the budget (6 s) runs from the first samples; the drop must end the run well before it would have
    assert time.monotonic() - dropped[0] < 4.0, "the drop was not noticed before the run's budget ended"
    assert result.status == "partial"
    assert "connection lost" in result.error
    assert result.samples.n > 0 and result.latency_ms.median > 0
