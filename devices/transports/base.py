"""What every transport provides, and the parser of the runner's JSON-lines event stream.

A transport is a context manager registered in ``TRANSPORTS`` (``@TRANSPORTS.register(name, spec=Model)``) with:
- ``info() -> dict``: the runner's board description;
- ``power_fs()``: a file system for the power readers (None if sysfs cannot be read), ``local`` (bool);
- ``prepare(artifact) -> str``: the artifact directory on the board (pushed, verified, cached);
- ``run(art_dir, artifact, runner_args, on_event) -> RunStream``: streams the runner's events.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from edgekit.errors import EdgekitError
from edgekit.registry import Registry

# every public module of edgekit.devices.transports is imported on first lookup; each registers its transport
# with ``spec=`` the pydantic model of its devices-file entry (edgekit.devices.spec)
TRANSPORTS: Registry[type] = Registry("device transport", lazy=[("edgekit.devices.transports", "[!_]*")])


class BoardUnreachable(EdgekitError):
    """The board could not be reached (network, SSH handshake, adb)."""


class HostKeyError(EdgekitError):
    """The board's SSH host key is unknown or changed: refused."""


class RuntimeMissing(EdgekitError):
    """The runtime asked for is not installed on the board."""


class RunnerFailed(EdgekitError):
    """The runner on the board failed (it says why)."""


@dataclass
class RunStream:
    """Events of one run, as they arrived (host monotonic time stamps in ``received``)."""

    hello: dict | None = None
    validation: dict | None = None
    warmup: dict | None = None
    samples_ms: list[float] = field(default_factory=list)
    measure_start: float | None = None  # host time.monotonic() when measure_start arrived
    measure_end: float | None = None
    end: dict | None = None
    error: dict | None = None  # the runner's own error event
    failure: str | None = None  # transport-level failure (connection lost, timeout, crash)
    returncode: int | None = None
    stderr_tail: str = ""
    sample_times: list[float] = field(default_factory=list)  # host time when each chunk arrived

    def feed(self, line: str, on_event: Callable[[dict], None] | None = None) -> None:
        line = line.strip()
        if not line.startswith("{"):
            return
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            return
        now = time.monotonic()
        kind = ev.get("event")
        if kind == "hello":
            self.hello = ev
        elif kind == "validation":
            self.validation = {k: v for k, v in ev.items() if k not in ("event", "t")}
        elif kind == "warmup_done":
            self.warmup = ev
        elif kind == "measure_start":
            self.measure_start = now
        elif kind == "samples":
            self.samples_ms.extend(float(v) for v in ev.get("ms", []))
            self.sample_times.append(now)
        elif kind == "measure_end":
            self.measure_end, self.end = now, ev
        elif kind == "error":
            self.error = ev
        if on_event:
            on_event(ev)

    @property
    def complete(self) -> bool:
        return self.end is not None and self.failure is None and self.error is None

    def raise_for_setup_error(self, device: str) -> None:
        """Errors before any measurement are raised (nothing to keep); later ones stay in the result."""
        if self.error and not self.samples_ms:
            kind, msg = self.error.get("kind"), self.error.get("message", "runner failed")
            if kind == "runtime_missing":
                raise RuntimeMissing(f"device {device}: {msg}")
            raise RunnerFailed(f"device {device}: {msg}")
        if self.failure and self.hello is None and not self.samples_ms:
            tail = f"; stderr: {self.stderr_tail.strip()[-400:]}" if self.stderr_tail.strip() else ""
            raise RunnerFailed(f"device {device}: runner did not start: {self.failure}{tail}")


def runner_args(opts: dict[str, Any]) -> list[str]:
    """argv for ``runner.pyz run`` from profile options (values only ever go into an argv list)."""
    out: list[str] = []
    for key in ("runtime", "provider", "input_name", "input_shape", "batch", "threads", "warmup_runs",
                "warmup_s", "budget_s", "min_runs", "max_runs", "target_rel_ci", "chunk_s", "seed",
                "cosine_threshold"):
        val = opts.get(key)
        if val is None:
            continue
        if isinstance(val, (list, tuple)):
            val = ",".join(str(v) for v in val)
        out += ["--" + key.replace("_", "-"), str(val)]
    if not opts.get("validate", True):
        out.append("--no-validate")
    return out


def parse_single_event(text: str, kind: str, device: str) -> dict:
    stream = RunStream()
    for line in text.splitlines():
        stream.feed(line)
        if stream.error:
            raise RunnerFailed(f"device {device}: {stream.error.get('message')}")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev.get("event") == kind:
                return {k: v for k, v in ev.items() if k not in ("event", "t")}
    raise RunnerFailed(f"device {device}: runner printed no {kind!r} event (output: {text.strip()[-300:]!r})")
