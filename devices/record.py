"""The profile of one artifact on one device, as a typed record (``profile.json``; fields: docs/profile.md).

Times in ``measure_window`` and ``power_windows`` are the host's ``time.monotonic()`` (the clock the power
sampler stamps its readings with). ``latency_kind`` is ``emulated`` when the board is emulated (the runner
reports the emulation marker): such latency is never comparable with native numbers.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from edgekit.records import Record


def _coerce(tp: Any, value: Any) -> Any:
    """Build nested record fields from plain JSON values (dataclass, Optional[dataclass], else unchanged)."""
    if value is None:
        return None
    args = typing.get_args(tp)
    if args and type(None) in args:
        tp = next(a for a in args if a is not type(None))
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"{tp.__name__}: unknown field(s) {', '.join(unknown)}")
        return tp(**{k: _coerce(hints[k], v) for k, v in value.items()})
    return value


@dataclass
class ArtifactRef:
    path: str
    name: str
    target: str
    precision: str
    digest: str
    bare: bool


@dataclass
class DeviceRef:
    name: str
    transport: str
    tags: list[str]
    info: dict[str, Any]  # the runner's board description (`edgekit devices check --json`)


@dataclass
class RuntimeRef:
    name: str
    version: str | None = None
    python: str | None = None
    threads: int | None = None
    detail: dict[str, Any] | None = None


@dataclass
class LatencyStats:
    min: float
    median: float
    p90: float
    p99: float
    max: float
    mean: float


@dataclass
class Samples:
    n: int
    latency_ms: list[float]
    stop_reason: str
    warmup_runs: int | None = None


@dataclass
class Validation:
    status: str  # passed | failed | skipped | error
    reason: str | None = None
    n: int | None = None
    cosine_min: float | None = None
    cosine_mean: float | None = None
    max_abs: float | None = None
    cosine_threshold: float | None = None
    top1_agreement: float | None = None


@dataclass
class PowerFigures:
    total: float | None
    idle: float | None
    above_idle: float | None
    per_sensor: dict[str, float | None]


@dataclass
class PerInference:
    total: float | None
    above_idle: float | None


@dataclass
class PowerWindows:
    idle: list[float] | None
    run: list[float]
    clock: str = "host time.monotonic()"


@dataclass
class Profile(Record):
    """One profile: what ran where, latency (native or emulated), validation on the device, power and energy."""

    SCHEMA_VERSION: typing.ClassVar[int] = 1

    status: str  # ok | partial (a run that stopped half-way keeps its samples) | failed
    error: str | None
    started: str
    artifact: ArtifactRef
    device: DeviceRef
    runtime: RuntimeRef
    latency_kind: str  # native | emulated
    emulation: dict[str, Any] | None
    input_shape: list[int] | None
    batch: int
    latency_ms: LatencyStats | None
    median_ci95_ms: list[float] | None
    median_ci95_rel: float | None
    throughput_ips: float | None
    samples: Samples
    thermal: dict[str, Any] | None
    validation: Validation
    push: dict[str, Any] | None
    options: dict[str, Any]
    power_status: str  # "measured", or why there is no power figure
    power_sensors: list[dict[str, Any]] = field(default_factory=list)
    power_w: PowerFigures | None = None
    energy_mj_per_inference: PerInference | None = None
    inferences_per_joule: PerInference | None = None
    power_trace: dict[str, list[list[float]]] | None = None
    measure_window: list[float] | None = None
    power_windows: PowerWindows | None = None
    seconds: float = 0.0

    @property
    def emulated(self) -> bool:
        return self.latency_kind == "emulated"

    @classmethod
    def _build(cls, fields: dict[str, Any]) -> "Profile":
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(hints[k], v) for k, v in fields.items()})
