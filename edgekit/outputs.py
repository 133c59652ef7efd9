"""Model outputs: which tensor of a tuple / list / dict / dataclass / ``ModelOutput`` output is the logits.

Models from libraries rarely return a bare tensor: ``transformers`` returns a ``ModelOutput`` (``.logits``),
DeiT returns ``(logits, dist_logits)``, detection-style code returns dicts. edgekit accepts all of them:

- :func:`tensor_leaves` walks an output and names every tensor leaf by its path (``"logits"``, ``"0"``,
  ``"out.logits"``; a bare tensor is ``""``);
- :func:`choose` picks the logits: the first tensor leaf, or the one named by ``output`` (``--output NAME`` or
  the recipe's ``output`` field; a full path or a unique last component);
- :class:`SelectOutput` wraps a model so that everything downstream (evaluation, metrics, stages, exporters)
  sees that one tensor; :func:`select_output` does the check and the wrapping, and returns an
  :class:`OutputChoice` for the report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from edgekit.errors import UserInputError


def _children(value: Any) -> Iterator[tuple[str, Any]] | None:
    """(key, child) pairs of a container output, or None for a leaf."""
    if isinstance(value, Mapping):  # dict, OrderedDict, transformers' ModelOutput
        return ((str(k), v) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return ((str(i), v) for i, v in enumerate(value))
    return None


def tensor_leaves(value: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in ``value`` with its path, in output order (``None`` entries are skipped)."""
    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    children = _children(value)
    if children is None:
        return []
    out: list[tuple[str, torch.Tensor]] = []
    for key, child in children:
        out += tensor_leaves(child, f"{prefix}.{key}" if prefix else key)
    return out


def get_leaf(value: Any, path: str) -> torch.Tensor:
    """The tensor at ``path`` (as named by :func:`tensor_leaves`)."""
    for part in path.split(".") if path else ():
        if isinstance(value, Mapping):
            value = value[part]
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = getattr(value, part)
        else:
            value = value[int(part)]
    if not isinstance(value, torch.Tensor):
        raise UserInputError(f"model output at {path!r} is a {type(value).__name__}, not a tensor")
    return value


def kind_of(value: Any) -> str:
    """``tensor`` | ``tuple`` | ``list`` | ``dict`` | ``dataclass`` | the class name of a mapping (``ModelOutput``)."""
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, Mapping):
        return "dict" if type(value) is dict else type(value).__name__
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return "dataclass"
    return type(value).__name__


@dataclass(frozen=True)
class OutputChoice:
    """Which output leaf is the logits, and what else the model returned (for the report)."""

    path: str  # "" when the model returns a tensor
    kind: str  # see kind_of
    leaves: tuple[str, ...]
    shape: tuple[int, ...]
    named: bool  # True when chosen by name, False when it is the first tensor leaf

    @property
    def wrapped(self) -> bool:
        return self.kind != "tensor"

    def describe(self) -> str:
        if not self.wrapped:
            return "the model returns a tensor"
        how = "named by --output" if self.named else ("the leaf named logits" if self.path.rsplit(".", 1)[-1] == "logits" else "the first tensor")
        return f"logits = output[{self.path!r}] ({how}) of a {self.kind} with tensors {', '.join(map(repr, self.leaves))}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "leaves": list(self.leaves), "shape": list(self.shape),
                "named": self.named, "summary": self.describe()}


def choose(value: Any, output: str | None = None) -> OutputChoice:
    """The logits leaf of an output value: the one named ``output``, else the one leaf called ``logits``, else
    the first tensor leaf."""
    leaves = tensor_leaves(value)
    names = tuple(p for p, _ in leaves)
    if not leaves:
        raise UserInputError(
            f"the model returned a {type(value).__name__} with no tensor in it; edgekit needs the logits as a tensor, "
            "or a tuple / list / dict / dataclass / ModelOutput that holds them"
        )
    if output is None or output == "":
        called_logits = [(p, t) for p, t in leaves if p.rsplit(".", 1)[-1] == "logits"]
        path, tensor = called_logits[0] if len(called_logits) == 1 else leaves[0]  # a leaf named logits, else the first
        return OutputChoice(path, kind_of(value), names, tuple(tensor.shape), named=False)
    matches = [(p, t) for p, t in leaves if p == output] or [(p, t) for p, t in leaves if p.rsplit(".", 1)[-1] == output]
    if len(matches) != 1:
        why = "is ambiguous" if matches else "is not among them"
        raise UserInputError(
            f"--output {output!r} {why}: the model returns a {kind_of(value)} with tensors {', '.join(map(repr, names))}; "
            "pass one of those names"
        )
    path, tensor = matches[0]
    return OutputChoice(path, kind_of(value), names, tuple(tensor.shape), named=True)


def logits(value: Any, path: str | None = None) -> torch.Tensor:
    """The logits tensor of a model output (``path`` from an :class:`OutputChoice`; default: as :func:`choose`)."""
    if isinstance(value, torch.Tensor):
        return value
    if path is not None:
        return get_leaf(value, path)
    return get_leaf(value, choose(value).path)


class SelectOutput(nn.Module):
    """``model`` whose output is reduced to the tensor at ``path`` (so downstream code sees a tensor).

    The user's model stays intact as ``self.model`` (its class, parameters and forward are unchanged).
    """

    def __init__(self, model: nn.Module, path: str) -> None:
        super().__init__()
        self.model = model
        self.path = path

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return get_leaf(self.model(*args, **kwargs), self.path)

    def extra_repr(self) -> str:
        return f"path={self.path!r}"


def unwrap(model: nn.Module) -> tuple[nn.Module, str | None]:
    """``(user_model, path)`` for a :class:`SelectOutput`, ``(model, None)`` otherwise."""
    if isinstance(model, SelectOutput):
        return model.model, model.path
    return model, None


def rewrap(model: nn.Module, path: str | None) -> nn.Module:
    """Inverse of :func:`unwrap`."""
    return model if path is None else SelectOutput(model, path)


@torch.no_grad()
def select_output(model: nn.Module, example_inputs: Sequence[torch.Tensor], output: str | None = None) -> tuple[nn.Module, OutputChoice]:
    """Run ``model`` once on ``example_inputs``; return it (wrapped in :class:`SelectOutput` when its output is
    not a tensor) and the :class:`OutputChoice` made. A model that returns a tensor is returned as is, and
    naming an output for it is an error."""
    inner, _ = unwrap(model)
    was_training = inner.training
    inner.eval()
    try:
        value = inner(*example_inputs)
    finally:
        inner.train(was_training)
    if isinstance(value, torch.Tensor):
        if output:
            raise UserInputError(f"--output {output!r}: the model returns a single tensor; leave --output out")
        return inner, OutputChoice("", "tensor", ("",), tuple(value.shape), named=False)
    choice = choose(value, output)
    return SelectOutput(inner, choice.path), choice
