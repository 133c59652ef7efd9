"""Android devices over adb (adbutils).

Implemented: connect by serial, describe the device (getprop), push the artifact into
``remote_dir/<content hash>`` with sha256 verification on the device (toybox ``sha256sum``), and run the
same JSON-streaming runner when the device has a Python with the runtime (``python:`` in the devices file,
e.g. Termux). Not implemented yet: driving a runtime's own benchmark binary (``onnxruntime_perf_test``,
``benchmark_app``) when there is no Python: that raises NotImplementedStageError instead of pretending.
Untested on real hardware in this repository's CI (no device attached); the error paths are tested.
"""

from __future__ import annotations

import posixpath
import shlex
from typing import Callable

from edgekit.backends import require
from edgekit.devices.artifact import Artifact, ChecksumError, sha256_file, verify_files
from edgekit.devices.remote.archive import runner_archive
from edgekit.devices.spec import ADBDevice
from edgekit.devices.transports.base import (TRANSPORTS, BoardUnreachable,
                                             RunStream, parse_single_event, runner_args)
from edgekit.errors import NotImplementedStageError


@TRANSPORTS.register("adb", spec=ADBDevice, summary="Android devices over adb (adbutils)")
class ADBTransport:
    local = False

    def __init__(self, spec, timeout_s: float = 60.0) -> None:
        self.spec, self.timeout_s, self.dev = spec, timeout_s, None

    def __enter__(self) -> "ADBTransport":
        adbutils = require("adbutils", "the adb device transport")
        try:
            client = adbutils.AdbClient(socket_timeout=10)
            self.dev = client.device(self.spec.serial)
            self.dev.shell(["true"], timeout=10)
        except Exception as exc:  # noqa: BLE001 - adbutils raises several types for "no server/device"
            raise BoardUnreachable(f"device {self.spec.name} (adb serial {self.spec.serial}) is unreachable: "
                                   f"{exc}") from None
        return self

    def __exit__(self, *exc) -> None:
        self.dev = None

    def _sh(self, argv: list[str]) -> str:
        return self.dev.shell(" ".join(shlex.quote(a) for a in argv), timeout=self.timeout_s)

    def info(self) -> dict:
        if self.spec.python:
            return parse_single_event(self._sh([self.spec.python, self._push_runner(), "info"]), "info",
                                      self.spec.name)
        prop = {k: self._sh(["getprop", k]).strip() for k in ("ro.product.model", "ro.build.version.release",
                                                               "ro.product.cpu.abi", "ro.hardware")}
        return {"os": f"Android {prop['ro.build.version.release']}", "arch": prop["ro.product.cpu.abi"],
                "cpu": prop["ro.hardware"], "cpu_count": None, "memory_mb": None, "gpus": [],
                "model": prop["ro.product.model"], "runtimes": {}, "cpu_governor": None, "cpu_freq_khz": None,
                "temperatures_c": None}

    def power_fs(self):
        return None  # sysfs power over adb: not implemented (said as "no power sensor")

    def _hashes(self, paths: list[str]) -> dict[str, str]:
        out = self._sh(["sha256sum", *paths])
        got = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and len(parts[0]) == 64:
                got[parts[1]] = parts[0]
        return got

    def _push_runner(self) -> str:
        digest = sha256_file(runner_archive())
        remote = posixpath.join(self.spec.remote_dir, f"runner-{digest[:16]}.pyz")
        if self._hashes([remote]).get(remote) != digest:
            self._sh(["mkdir", "-p", self.spec.remote_dir])
            self.dev.sync.push(str(runner_archive()), remote)
            if self._hashes([remote]).get(remote) != digest:
                raise ChecksumError(f"device {self.spec.name}: runner.pyz arrived corrupted")
        return remote

    def prepare(self, art: Artifact) -> str:
        verify_files(art)
        final = posixpath.join(self.spec.remote_dir, art.digest[:32])
        paths = {rel: posixpath.join(final, rel) for rel in art.files}
        got = self._hashes(list(paths.values()))
        if all(got.get(p) == art.files[rel] for rel, p in paths.items()):
            self.last_push = {"cached": True, "remote_dir": final}
            return final
        for rel, p in paths.items():
            self._sh(["mkdir", "-p", posixpath.dirname(p)])
            self.dev.sync.push(str(art.root / rel), p)
        got = self._hashes(list(paths.values()))
        for rel, p in paths.items():
            if got.get(p) != art.files[rel]:
                self._sh(["rm", "-rf", final])
                raise ChecksumError(f"device {self.spec.name}: checksum mismatch for {rel} after push")
        self.last_push = {"cached": False, "remote_dir": final}
        return final

    def run(self, art_dir: str, art: Artifact, opts: dict, on_event: Callable[[dict], None] | None = None,
            timeout_s: float | None = None) -> RunStream:
        if not self.spec.python:
            raise NotImplementedStageError(
                f"device {self.spec.name}: profiling over adb without a Python on the device (through the "
                "runtime's own benchmark binary) is not implemented yet; set `python:` to a Python that has "
                "the runtime (e.g. Termux)")
        argv = [self.spec.python, self._push_runner(), "run", "--dir", art_dir, "--model-file", art.model_file,
                *runner_args(opts)]
        stream = RunStream()
        try:
            conn = self.dev.shell(" ".join(shlex.quote(a) for a in argv), stream=True,
                                  timeout=timeout_s or self.timeout_s)
            buf = b""
            while True:
                data = conn.read(4096)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    stream.feed(line.decode(errors="replace"), on_event)
            conn.close()
        except Exception as exc:  # noqa: BLE001 - a lost device mid-run keeps the samples
            stream.failure = f"connection lost: {exc}"
        if stream.failure is None and stream.end is None and not stream.error:
            stream.failure = "runner ended before finishing the measurement"
        return stream


