"""SSH boards through paramiko.

Strict host keys (a known_hosts file is required, unknown or changed keys are refused with RejectPolicy),
key or agent authentication only (no passwords), no shell strings built from user input (every argv item is
``shlex.quote``d: SSH exec takes one string), a timeout on every step. The artifact is pushed into a
temporary directory, checksum-verified on the board, then renamed into a cache keyed by its content hash;
a cached copy is re-verified before use. The runner script is cached the same way.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import socket
import stat
import time
import uuid
from typing import Callable

from edgekit.backends import require
from edgekit.devices.artifact import Artifact, ChecksumError, sha256_file, verify_files
from edgekit.devices.remote.archive import runner_archive
from edgekit.devices.spec import SSHDevice
from edgekit.devices.transports.base import (TRANSPORTS, BoardUnreachable, HostKeyError,
                                             RunnerFailed, RunStream, parse_single_event, runner_args)
from edgekit.errors import UserInputError

# Prints {path: sha256 or null} for its arguments; a constant program, paths passed as quoted arguments.
HASH_PROGRAM = (
    "import hashlib,json,sys\n"
    "def h(p):\n"
    "    try:\n"
    "        d=hashlib.sha256()\n"
    "        with open(p,'rb') as f:\n"
    "            [d.update(b) for b in iter(lambda: f.read(1<<20), b'')]\n"
    "        return d.hexdigest()\n"
    "    except OSError:\n"
    "        return None\n"
    "print(json.dumps({p: h(p) for p in sys.argv[1:]}))\n"
)


class SFTPFS:
    """Power-reader file system over SFTP (reads the board's sysfs)."""

    def __init__(self, sftp, root: str = "/") -> None:
        self.sftp, self.root = sftp, root

    def _p(self, path: str) -> str:
        return posixpath.join(self.root, path.lstrip("/"))

    def read_text(self, path: str) -> str:
        with self.sftp.open(self._p(path), "r") as fh:
            return fh.read().decode(errors="replace").strip()

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(self.sftp.listdir(self._p(path)))
        except OSError:
            return []

    def exists(self, path: str) -> bool:
        try:
            self.sftp.stat(self._p(path))
        except OSError:
            return False
        return True


@TRANSPORTS.register("ssh", spec=SSHDevice, summary="boards over SSH (paramiko)")
class SSHTransport:
    local = False

    def __init__(self, spec, timeout_s: float = 60.0) -> None:
        self.spec = spec
        self.timeout_s = timeout_s
        self.client = None
        self.sftp = None
        self._power_sftp = None
        self.cache_dir: str | None = None
        self._runner: str | None = None

    # ------------------------------------------------------------------ connection
    def __enter__(self) -> "SSHTransport":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        paramiko = require("paramiko", "the SSH device transport")
        from pathlib import Path

        spec = self.spec
        known = Path(spec.known_hosts).expanduser()
        if not known.is_file():
            raise UserInputError(f"device {spec.name}: known_hosts file {known} not found; strict host-key "
                                 f"checking needs the board's key (check its fingerprint, then e.g. "
                                 f"`ssh-keyscan -p {spec.port} {spec.host} >> {known}`)")
        client = paramiko.SSHClient()
        client.load_host_keys(str(known))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        key = str(Path(spec.key).expanduser()) if spec.key else None
        where = f"{spec.user}@{spec.host}:{spec.port}"
        try:
            client.connect(spec.host, port=spec.port, username=spec.user, key_filename=key, allow_agent=True,
                           look_for_keys=False, timeout=spec.connect_timeout_s,
                           banner_timeout=spec.connect_timeout_s, auth_timeout=spec.connect_timeout_s,
                           channel_timeout=spec.connect_timeout_s)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(f"device {spec.name} ({where}): the host key CHANGED (got {exc.key.get_name()} "
                               f"{exc.key.fingerprint}); refusing to connect. If the board was re-installed, "
                               f"remove its old entry from {known}.") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise BoardUnreachable(f"device {spec.name} ({where}): authentication failed ({exc}); key or "
                                   "agent authentication only") from None
        except paramiko.SSHException as exc:
            client.close()
            if "known_hosts" in str(exc) or "not found in" in str(exc):
                raise HostKeyError(f"device {spec.name} ({where}): host key not in {known}; refusing "
                                   "(strict host-key checking)") from None
            raise BoardUnreachable(f"device {spec.name} ({where}): SSH failed: {exc}") from None
        except (OSError, socket.timeout, EOFError) as exc:
            client.close()
            raise BoardUnreachable(f"device {spec.name} ({where}) is unreachable: {exc}") from None
        self.client = client
        self.sftp = client.open_sftp()
        self.sftp.get_channel().settimeout(self.timeout_s)
        home = self.sftp.normalize(".")
        self.cache_dir = spec.remote_dir or posixpath.join(home, ".cache", "edgekit")
        self._mkdirs(self.cache_dir)

    def close(self) -> None:
        for obj in (self._power_sftp, self.sftp, self.client):
            try:
                if obj is not None:
                    obj.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
        self.client = self.sftp = self._power_sftp = None

    # ------------------------------------------------------------------ helpers
    def exec(self, argv: list[str], timeout_s: float | None = None) -> tuple[int, str, str]:
        """Run argv on the board (each item quoted), return (exit code, stdout, stderr)."""
        command = " ".join(shlex.quote(str(a)) for a in argv)
        try:
            _, out, err = self.client.exec_command(command, timeout=timeout_s or self.timeout_s)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            return out.channel.recv_exit_status(), stdout, stderr
        except (socket.timeout, TimeoutError) as exc:
            raise RunnerFailed(f"device {self.spec.name}: `{argv[0]}` timed out ({exc})") from None
        except (OSError, EOFError) as exc:
            raise BoardUnreachable(f"device {self.spec.name}: connection lost ({exc})") from None

    def _mkdirs(self, path: str) -> None:
        parts = []
        while path not in ("", "/"):
            parts.append(path)
            path = posixpath.dirname(path)
        for p in reversed(parts):
            try:
                self.sftp.stat(p)
            except OSError:
                self.sftp.mkdir(p, 0o700)

    def _rmtree(self, path: str) -> None:
        try:
            entries = self.sftp.listdir_attr(path)
        except OSError:
            return
        for e in entries:
            child = posixpath.join(path, e.filename)
            if stat.S_ISDIR(e.st_mode or 0):
                self._rmtree(child)
            else:
                self.sftp.remove(child)
        self.sftp.rmdir(path)

    def remote_hashes(self, paths: list[str]) -> dict[str, str | None]:
        # -S: the hash program needs the standard library only, and starts 5x faster without site-packages
        rc, out, err = self.exec([self.spec.python, "-S", "-c", HASH_PROGRAM, *paths])
        if rc != 0:
            if rc == 127 or "not found" in err:
                raise RunnerFailed(f"device {self.spec.name}: python interpreter {self.spec.python!r} not found "
                                   "on the board (set `python:` in the devices file)")
            raise RunnerFailed(f"device {self.spec.name}: hashing on the board failed: {err.strip()[-300:]}")
        return json.loads(out.strip().splitlines()[-1])

    def _upload(self, local: str, remote: str) -> None:
        self.sftp.put(local, remote)

    # ------------------------------------------------------------------ transport API
    def power_fs(self) -> SFTPFS:
        # a second SFTP channel so that sampling never races the main one
        self._power_sftp = self.client.open_sftp()
        self._power_sftp.get_channel().settimeout(10)
        return SFTPFS(self._power_sftp, self.spec.sysfs_root)

    def runner_path(self) -> str:
        if self._runner is not None:
            return self._runner
        digest = sha256_file(runner_archive())
        remote = posixpath.join(self.cache_dir, f"runner-{digest[:16]}.pyz")
        if self.remote_hashes([remote]).get(remote) == digest:
            self._runner = remote
            return remote
        tmp = remote + f".tmp-{uuid.uuid4().hex[:8]}"
        try:
            self._upload(str(runner_archive()), tmp)
            got = self.remote_hashes([tmp]).get(tmp)
            if got != digest:
                raise ChecksumError(f"device {self.spec.name}: runner.pyz arrived corrupted (sha256 {got})")
            self.sftp.posix_rename(tmp, remote)
        finally:
            try:
                self.sftp.remove(tmp)
            except OSError:
                pass
        self._runner = remote
        return remote

    def info(self) -> dict:
        runner = self.runner_path()
        rc, out, err = self.exec([self.spec.python, runner, "info"])
        return parse_single_event(out, "info", self.spec.name)

    def prepare(self, art: Artifact) -> str:
        """Push the artifact (or reuse the cached copy); return its directory on the board."""
        verify_files(art)
        final = posixpath.join(self.cache_dir, "artifacts", art.digest[:32])
        self._mkdirs(posixpath.dirname(final))
        rels = sorted(art.files)
        cached = self.remote_hashes([posixpath.join(final, r) for r in rels])
        if all(cached.get(posixpath.join(final, r)) == art.files[r] for r in rels):
            self.last_push = {"cached": True, "remote_dir": final}
            return final
        tmp = posixpath.join(self.cache_dir, "artifacts", f".tmp-{uuid.uuid4().hex}")
        t0 = time.monotonic()
        try:
            self._mkdirs(tmp)
            for rel in rels:
                self._mkdirs(posixpath.dirname(posixpath.join(tmp, rel)))
                self._upload(str(art.root / rel), posixpath.join(tmp, rel))
            got = self.remote_hashes([posixpath.join(tmp, r) for r in rels])
            for rel in rels:
                if got.get(posixpath.join(tmp, rel)) != art.files[rel]:
                    raise ChecksumError(f"device {self.spec.name}: checksum mismatch for {rel} after upload "
                                        f"(expected {art.files[rel][:12]}..., board has "
                                        f"{(got.get(posixpath.join(tmp, rel)) or 'nothing')[:12]}...)")
            self._rmtree(final)  # a stale or corrupted cached copy
            self.sftp.posix_rename(tmp, final)
        finally:
            self._rmtree(tmp)  # remote temp files are cleaned whatever happened
        self.last_push = {"cached": False, "remote_dir": final, "seconds": time.monotonic() - t0}
        return final

    def run(self, art_dir: str, art: Artifact, opts: dict, on_event: Callable[[dict], None] | None = None,
            timeout_s: float | None = None) -> RunStream:
        runner = self.runner_path()
        argv = [self.spec.python, runner, "run", "--dir", art_dir, "--model-file", art.model_file,
                *runner_args(opts)]
        command = " ".join(shlex.quote(str(a)) for a in argv)
        stream = RunStream()
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        try:
            chan = self.client.get_transport().open_session(timeout=self.spec.connect_timeout_s)
            chan.settimeout(1.0)
            chan.exec_command(command)
        except (OSError, EOFError, Exception) as exc:  # noqa: BLE001 - paramiko raises SSHException too
            stream.failure = f"connection lost before the run: {exc}"
            return stream
        self.channel = chan
        buf, err = b"", b""
        try:
            while True:
                if time.monotonic() > deadline:
                    stream.failure = f"timed out after {timeout_s or self.timeout_s:.0f} s"
                    chan.close()
                    break
                try:
                    data = chan.recv(65536)
                except socket.timeout:
                    if not self.client.get_transport() or not self.client.get_transport().is_active():
                        stream.failure = "connection lost"
                        break
                    continue
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    stream.feed(line.decode(errors="replace"), on_event)
        except (OSError, EOFError) as exc:
            stream.failure = f"connection lost: {exc}"
        if buf:
            stream.feed(buf.decode(errors="replace"), on_event)
        transport = self.client.get_transport()
        if stream.failure is None:
            if not chan.exit_status_ready() and (not transport or not transport.is_active()):
                stream.failure = "connection lost"
            else:
                stream.returncode = chan.recv_exit_status()
                if stream.returncode == -1:  # paramiko: the channel closed without an exit status
                    stream.failure = "connection lost (the session closed without an exit status)"
        stream.stderr_tail = err.decode(errors="replace")[-2000:]
        if stream.failure is None:
            if stream.returncode not in (0, None) and not stream.error:
                stream.failure = f"runner exited with code {stream.returncode}"
            elif stream.end is None and not stream.error:
                stream.failure = "connection lost" if stream.returncode is None else \
                    "runner ended before finishing the measurement"
        return stream
