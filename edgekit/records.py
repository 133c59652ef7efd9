"""Typed records that cross a boundary between edgekit's stages.

Model metadata travels next to the model in :class:`ModelInfo` (never as attributes set on an ``nn.Module``);
the compress report is a :class:`CompressReport` of :class:`StageReport` entries. Every record has a schema
version and one ``to_json`` / ``from_json`` pair; ``python -m edgekit.docgen`` writes their JSON schemas into
docs/schemas/.

A model that writes its own ONNX graph (the I-ViT integer-only model does) implements :class:`OnnxWriter` on
its class; the ONNX exporter checks ``isinstance(model, OnnxWriter)``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from edgekit.errors import UserInputError

R = TypeVar("R", bound="Record")


class Record:
    """Mixin for dataclass records: ``to_dict`` / ``from_dict`` and JSON helpers with a schema version."""

    SCHEMA_VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        out = {"schema_version": self.SCHEMA_VERSION}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _plain(getattr(self, f.name))
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls: type[R], data: Any, source: str = "record") -> R:
        if not isinstance(data, dict):
            raise UserInputError(f"{source}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
        version = data.get("schema_version", cls.SCHEMA_VERSION)
        if version != cls.SCHEMA_VERSION:
            raise UserInputError(
                f"{source}: {cls.__name__} schema_version {version!r} is not supported; accepted: {cls.SCHEMA_VERSION}"
            )
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names - {"schema_version"})
        if unknown:
            raise UserInputError(f"{source}: unknown field(s) {', '.join(unknown)} for {cls.__name__}; accepted: {', '.join(sorted(names))}")
        try:
            return cls._build({k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"{source}: not a valid {cls.__name__}: {exc}") from None

    @classmethod
    def _build(cls: type[R], fields: dict[str, Any]) -> R:
        return cls(**fields)

    @classmethod
    def from_json(cls: type[R], text: str, source: str = "record") -> R:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source)

    @classmethod
    def read(cls: type[R], path: str | Path) -> R:
        path = Path(path)
        return cls.from_json(path.read_text(), str(path))


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class ModelInfo(Record):
    """What edgekit knows about a model besides its weights; carried beside the module by every stage.

    ``input_shape`` is one sample's shape (C, H, W) when known; ``source`` says where the model came from
    (``zoo:NAME``, ``module:factory``, a file or output directory, ``python``); ``output`` names the output
    leaf used as logits when the model returns several; ``capture`` records how its graph was captured.
    """

    name: str
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    source: str = "python"
    output: str | None = None
    capture: str | None = None

    @classmethod
    def _build(cls, fields: dict[str, Any]) -> "ModelInfo":
        shape = fields.get("input_shape")
        if shape is not None:
            fields["input_shape"] = tuple(int(s) for s in shape)
        return cls(**fields)

    def replace(self, **changes: Any) -> "ModelInfo":
        return dataclasses.replace(self, **changes)


@runtime_checkable
class OnnxWriter(Protocol):
    """A model class that writes its own ONNX graph (e.g. the I-ViT integer-only model)."""

    def write_onnx(self, path: Path, example: Any, opset: int) -> Path: ...


@dataclass
class BeforeAfter:
    """A figure measured on the model before and after a recipe (``{"before": x, "after": y}`` in JSON)."""

    before: Any
    after: Any

    @classmethod
    def coerce(cls, value: Any, source: str) -> "BeforeAfter":
        if isinstance(value, BeforeAfter):
            return value
        if not isinstance(value, dict) or set(value) != {"before", "after"}:
            raise UserInputError(f"{source}: expected {{before, after}}, got {value!r:.80}")
        return cls(value["before"], value["after"])


@dataclass
class StageReport(Record):
    """One stage of a recipe: its name, wall time and the stage's own report (stage-specific keys)."""

    name: str
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressReport(Record):
    """``report.json`` of ``edgekit compress``: what the recipe changed, before and after.

    ``size_bytes`` is the computed storage of the weights (int8 and 1-bit layers report their own);
    ``artifact_bytes`` is the size of ``model.pt2`` on disk when an output directory was written.
    ``latency_ms`` holds the before/after latency records of ``recipe.measure.latency_runtime`` (None on both
    sides when latency was not measured) and ``notes`` the plain-words caveats the CLI prints next to the figures.
    """

    model: str
    recipe: str
    data: str
    params: BeforeAfter
    size_bytes: BeforeAfter
    macs: BeforeAfter
    accuracy: BeforeAfter
    latency_ms: BeforeAfter
    fidelity: dict[str, Any]
    stages: list[StageReport] = field(default_factory=list)
    latency: "LatencyComparison | None" = None  # the interleaved comparison behind latency_ms: ratio and its CI
    model_info: ModelInfo | None = None
    artifact_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    FIGURES: ClassVar[tuple[str, ...]] = ("params", "size_bytes", "macs", "accuracy", "latency_ms")

    @classmethod
    def _build(cls, fields: dict[str, Any]) -> "CompressReport":
        for key in cls.FIGURES:
            fields[key] = BeforeAfter.coerce(fields.get(key), f"report.{key}")
        fields["stages"] = [StageReport.from_dict(s, "report.stages") for s in fields.get("stages", [])]
        if fields.get("model_info") is not None:
            fields["model_info"] = ModelInfo.from_dict(fields["model_info"], "report.model_info")
        if fields.get("latency") is not None:
            fields["latency"] = LatencyComparison.from_dict(fields["latency"], "report.latency")
        return cls(**fields)

    def stage(self, name: str) -> StageReport:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in this report; stages: {', '.join(s.name for s in self.stages)}")




@dataclass
class LatencyComparison(Record):
    """Before/after latency measured interleaved in one loop (ms).

    ``ratio`` is after/before of the medians, with a bootstrap confidence interval (``ratio_low`` ..
    ``ratio_high`` at ``confidence``); only that median ratio is meant to be read as a ratio: ``before`` /
    ``after`` carry p90 and p99 as values (tail ratios of two noisy distributions mean little).
    """

    before: dict[str, float]
    after: dict[str, float]
    ratio: float
    ratio_low: float
    ratio_high: float
    confidence: float = 0.95
    method: str = "interleaved ABBA, bootstrap of the median ratio"

    def summary(self) -> str:
        pct = f"{self.confidence:.0%}"
        return (
            f"median {self.before['median']:.4g} -> {self.after['median']:.4g} ms, ratio {self.ratio:.3f}x "
            f"({pct} CI {self.ratio_low:.3f}-{self.ratio_high:.3f}); p90 {self.before['p90']:.4g} / "
            f"{self.after['p90']:.4g} ms, p99 {self.before['p99']:.4g} / {self.after['p99']:.4g} ms"
        )


# The records written at a boundary, by file name in docs/schemas/ (``python -m edgekit.records DIR`` writes them).
SCHEMAS = {
    "model-info": "edgekit.records:ModelInfo",
    "compress-report": "edgekit.records:CompressReport",
    "manifest": "edgekit.artifacts:Manifest",
    "validation": "edgekit.exporters.validation:ValidationReport",
    "profile": "edgekit.devices.record:Profile",
    "sweep": "edgekit.sweep.results:SweepResult",
}


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON schema of a record class (pydantic's reading of the dataclass), with its schema version."""
    from pydantic import BaseModel, TypeAdapter

    schema = cls.model_json_schema() if isinstance(cls, type) and issubclass(cls, BaseModel) else TypeAdapter(cls).json_schema()
    version = getattr(cls, "SCHEMA_VERSION", None)
    if version is not None:
        schema.setdefault("properties", {})["schema_version"] = {"const": version, "title": "Schema Version"}
    return schema


def schema_texts() -> dict[str, str]:
    """``{file name: JSON text}`` of every boundary record's schema (deterministic)."""
    import importlib

    out = {}
    for name, ref in SCHEMAS.items():
        module, attr = ref.split(":")
        cls = getattr(importlib.import_module(module), attr)
        out[f"{name}.schema.json"] = json.dumps(json_schema(cls), indent=2, sort_keys=True) + "\n"
    return out


def write_schemas(directory: str | Path) -> list[Path]:
    from edgekit.artifacts import write_bytes_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, text in schema_texts().items():
        write_bytes_atomic(directory / fname, text.encode())
        written.append(directory / fname)
    return written


if __name__ == "__main__":  # python -m edgekit.records docs/schemas
    import sys

    for p in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(p)
