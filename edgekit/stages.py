"""Recipe stages: a registry of ``apply(model, config, context) -> (model, report)`` transforms.

A stage is registered with :func:`register_stage` next to the code that implements it (in a module named
``stages`` inside its package: ``edgekit/fusion/stages.py``, ``prune/stages.py``, ...). The recipe engine
knows no stage by name: it discovers those modules by that naming convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from edgekit.errors import NotImplementedStageError
from edgekit.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from edgekit.data import DataBundle


class StageConfig(BaseModel):
    """Base of every stage's options: unknown fields are rejected, types are checked.

    Configs are versioned (``version``) and round-trip through plain dicts (``to_dict`` / ``from_dict``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    version: int = 1
    schema_version: ClassVar[int] = 1

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != cls.schema_version:
            raise ValueError(f"version {v} of this stage's options is not supported; accepted: {cls.schema_version}")
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageConfig":
        return cls.model_validate(data)


@dataclass
class StageContext:
    """What a stage may use besides the model and its options."""

    data: "DataBundle | None"
    reference: "nn.Module"  # the original float model, in eval mode; never modified
    example_inputs: "tuple[torch.Tensor, ...]"
    out_dir: Path | None = None
    seed: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # scratch space shared between stages of one run


StageFn = Callable[["nn.Module", StageConfig, StageContext], "tuple[nn.Module, dict[str, Any]]"]

# The packages searched for ``stages`` modules; the stage folders are mapped into edgekit by setup.py.
_SEARCH_ROOTS = ("edgekit", "edgekit.prune", "edgekit.quant", "edgekit.exporters", "edgekit.devices")
STAGES: Registry[StageFn] = Registry("stage", lazy=[(root, "stages") for root in _SEARCH_ROOTS], recursive=True)


def register_stage(name: str, config: type[StageConfig], summary: str = "") -> Callable[[StageFn], StageFn]:
    """Register ``apply(model, config, context) -> (model, report)`` under ``name`` with its config class."""
    return STAGES.register(name, config=config, summary=summary)


def declare_stage(name: str, config: type[StageConfig], summary: str, issue: str) -> None:
    """Declare a stage whose implementation has not landed yet: using it raises a clear error."""

    def not_implemented(model: "nn.Module", cfg: StageConfig, ctx: StageContext):
        raise NotImplementedStageError(f"stage {name!r} is not implemented yet ({issue})")

    STAGES.add(name, not_implemented, config=config, summary=summary, implemented=False)


def discover() -> Registry[StageFn]:
    """The stage registry, filled: every ``*.stages`` module under edgekit is imported on first use."""
    len(STAGES)  # fills the registry
    return STAGES


def get_stage(name: str) -> tuple[StageFn, type[StageConfig]]:
    registry = discover()
    fn = registry.get(name)
    return fn, registry.meta(name)["config"]
