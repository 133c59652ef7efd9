"""This machine: the runner runs in a separate process (the same script that runs on boards)."""

from __future__ import annotations

import subprocess
import sys
import threading

from typing import Callable

from edgekit.devices.artifact import Artifact, verify_files
from edgekit.devices.power.base import LocalFS
from edgekit.devices.remote.archive import runner_archive
from edgekit.devices.spec import LocalDevice
from edgekit.devices.transports.base import (TRANSPORTS, RunnerFailed, RunStream,
                                             parse_single_event, runner_args)


@TRANSPORTS.register("local", spec=LocalDevice, summary="this machine, runner in a subprocess")
class LocalTransport:
    local = True

    def __init__(self, spec, timeout_s: float = 60.0) -> None:
        self.spec = spec
        self.python = spec.python or sys.executable
        self.timeout_s = timeout_s

    def __enter__(self) -> "LocalTransport":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def _cmd(self, *args: str) -> list[str]:
        return [self.python, str(runner_archive()), *args]

    def info(self) -> dict:
        try:
            res = subprocess.run(self._cmd("info"), capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RunnerFailed(f"device {self.spec.name}: runner info failed: {exc}") from None
        return parse_single_event(res.stdout, "info", self.spec.name)

    def power_fs(self) -> LocalFS:
        return LocalFS(self.spec.sysfs_root)

    def prepare(self, art: Artifact) -> str:
        verify_files(art)
        return str(art.root)

    def run(self, art_dir: str, art: Artifact, opts: dict, on_event: Callable[[dict], None] | None = None,
            timeout_s: float | None = None) -> RunStream:
        argv = self._cmd("run", "--dir", art_dir, "--model-file", art.model_file, *runner_args(opts))
        stream = RunStream()
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL)
        except OSError as exc:
            stream.failure = f"cannot start {self.python}: {exc}"
            return stream
        timed_out = threading.Event()

        def watchdog() -> None:
            if proc.poll() is None:
                timed_out.set()
                proc.kill()

        timer = threading.Timer(timeout_s or self.timeout_s, watchdog)
        timer.start()
        err_chunks: list[str] = []
        err_thread = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
        err_thread.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                stream.feed(line, on_event)
            stream.returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err_thread.join(timeout=2)
        stream.stderr_tail = "".join(err_chunks)[-2000:]
        if timed_out.is_set():
            stream.failure = f"timed out after {timeout_s or self.timeout_s:.0f} s"
        elif stream.returncode and not stream.error:
            stream.failure = f"runner exited with code {stream.returncode}"
        elif stream.end is None and not stream.error:
            stream.failure = "runner ended before finishing the measurement"
        return stream


