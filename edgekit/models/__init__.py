"""The model zoo: a registry of model factories built from edgekit's operator library.

Each family lives in its own module here and registers with :func:`register_model`. Every model has a
``digits`` configuration (trained on the built-in data; checkpoint shipped in ``checkpoints/``) and a ``224``
configuration (random init, for latency work).

    >>> import edgekit.models as zoo
    >>> zoo.names()
    >>> model = zoo.create("repvgg", pretrained=True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekit.errors import UserInputError
from edgekit.registry import Registry

SIZES = {"digits": (3, 32, 32), "224": (3, 224, 224)}
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_MODEL = "convnet"


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model's registration: factory, family and training settings (not the per-model ModelInfo record)."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    family: str = "cnn"  # cnn | vit | hybrid
    train: dict[str, Any] = field(default_factory=dict)  # epochs, lr, ... for `edgekit zoo train`
    task: str = "classification"  # an edgekit.tasks name: what the outputs mean (detection: edgekit.tasks.detection)
    sizes: dict[str, tuple[int, int, int]] | None = None  # input shape per size when not SIZES' (detectors)

    def input_shape(self, size: str = "digits") -> tuple[int, int, int]:
        return (self.sizes or SIZES)[size]

    @property
    def checkpoint(self) -> Path:
        return CHECKPOINTS / f"{self.name}.pt"


MODELS: Registry[ZooEntry] = Registry("zoo model", lazy=[("edgekit.models", "[!_]*")])  # one module per family


def register_model(name: str, description: str = "", family: str = "cnn", task: str = "classification",
                   sizes: dict[str, tuple[int, int, int]] | None = None, **train: Any):
    """Register ``factory(size="digits"|"224", num_classes=10) -> nn.Module`` as zoo model ``name``."""

    def decorator(factory):
        MODELS.add(name, ZooEntry(name, factory, description, family, dict(train), task, sizes))
        return factory

    return decorator


def names(pattern: str = "*", task: str | None = "classification") -> list[str]:
    """Zoo model names of ``task`` (default: the classifiers, which every top-1 consumer expects; None: all)."""
    return [n for n in MODELS.names(pattern) if task is None or MODELS.get(n).task == task]


def info(name: str) -> ZooEntry:
    return MODELS.get(name)


def create(name: str, pretrained: bool = True, size: str = "digits", num_classes: int = 10):
    """Build zoo model ``name``; ``pretrained`` loads the shipped checkpoint (digits size only)."""
    import torch

    if size not in SIZES:
        raise UserInputError(f"unknown size {size!r} for zoo model {name!r}; accepted: {', '.join(SIZES)}")
    meta = info(name)
    model = meta.factory(size=size, num_classes=num_classes)
    if pretrained and size == "digits" and num_classes == 10:
        if not meta.checkpoint.is_file():
            raise UserInputError(
                f"zoo model {name!r} has no shipped checkpoint ({meta.checkpoint.name}); "
                f"run `edgekit zoo train {name}` or pass pretrained=False"
            )
        state = torch.load(meta.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def load(name: str, pretrained: bool = True, size: str = "digits", num_classes: int = 10):
    """:func:`create` plus the model's :class:`~edgekit.records.ModelInfo` (an ``edgekit.loading.LoadedModel``)."""
    from edgekit.loading import LoadedModel
    from edgekit.records import ModelInfo

    model = create(name, pretrained=pretrained, size=size, num_classes=num_classes)
    shape = info(name).input_shape(size)
    return LoadedModel(model, ModelInfo(name=name, input_shape=shape, num_classes=num_classes, source=f"zoo:{name}"))


def train_zoo(name: str, epochs: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Train zoo model ``name`` on the built-in data and write its shipped checkpoint (see ``_train``)."""
    if info(name).task == "detection":
        from edgekit.models.detector_train import train_detector

        return train_detector(name, epochs=epochs, seed=seed)
    from edgekit.models._train import train_zoo as _train_zoo

    return _train_zoo(name, epochs=epochs, seed=seed)
