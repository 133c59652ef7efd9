"""An external power meter given as a command (argv, never a shell string) that prints watts.

The command may print one number and exit (it is re-run for every sample) or keep printing one number per
line. Lines that are not numbers are ignored.
"""

from __future__ import annotations

import subprocess
import threading
import time

from edgekit.devices.power.base import FS, PowerReader, power_sensor
from edgekit.errors import UserInputError


class ExternalMeterReader(PowerReader):
    kind = "power"

    def __init__(self, argv: list[str], interval_s: float = 0.1, first_timeout_s: float = 5.0) -> None:
        if not argv:
            raise UserInputError("power_command: give the meter command as a list of arguments")
        self.argv, self.interval = list(argv), interval_s
        self.name, self.source, self.rails = "external", " ".join(argv), ["meter"]
        self._latest: float | None = None
        self._error: str | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._first_timeout = first_timeout_s
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                              stdin=subprocess.DEVNULL, text=True)
            except OSError as exc:
                self._error = f"cannot run power meter command {self.argv[0]!r}: {exc}"
                self._ready.set()
                return
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                try:
                    self._latest = float(line.strip().split()[0])
                except (ValueError, IndexError):
                    continue
                self._ready.set()
                if self._stop.is_set():
                    break
            self._proc.wait()
            self._stop.wait(self.interval)

    def read(self) -> float:
        if not self._ready.wait(self._first_timeout):
            raise OSError(f"power meter command {self.source!r} printed no number within {self._first_timeout} s")
        if self._latest is None:
            raise OSError(self._error or f"power meter command {self.source!r} printed no number")
        return self._latest

    def close(self) -> None:
        self._stop.set()
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        time.sleep(0)


@power_sensor("external", scope="manual", summary="external meter: a command that prints watts", local_only=True)
def discover(fs: FS, options: dict) -> list[PowerReader]:
    argv = options.get("power_command")
    if not argv:
        if options.get("explicit"):
            raise UserInputError("power sensor 'external' needs power_command (a command that prints watts)")
        return []
    reader = ExternalMeterReader(list(argv))
    return [reader]
