"""Graph capture for the dependency graph: ``torch.fx`` with handler leaves as the fast path, ``torch.export``
(non-strict, with the pipeline's example inputs) for every model fx cannot trace.

The exported program is unlifted (``ExportedProgram.module()``): parameters are ``get_attr`` nodes named by
their qualified names in the user's model and every node keeps ``meta["nn_module_stack"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils import _pytree as pytree

from edgekit.errors import UserInputError
from edgekit.outputs import tensor_leaves
from edgekit.prune.handlers import find_handler


class CaptureMethod(Enum):
    FX = "torch.fx"
    EXPORT = "torch.export"


class CaptureError(UserInputError):
    """Neither torch.fx nor torch.export could capture the model."""


@dataclass
class CapturedGraph:
    gm: fx.GraphModule
    method: CaptureMethod
    inputs: tuple[torch.Tensor, ...]  # the example the shapes were propagated with
    prefix: str = ""  # qualified names in ``gm`` = prefix + names in the user's model
    fx_error: str | None = None  # why the fast path was not taken
    dynamic_batch: bool = False
    numbers: tuple[str, ...] = ()  # 0-d tensor attributes captured as numbers (edgekit.capture.export_retrying)

    def summary(self) -> dict[str, Any]:
        """What the report records about the capture (the keys of :meth:`edgekit.capture.Capture.summary`)."""
        out: dict[str, Any] = {"method": self.method.value, "nodes": len(self.gm.graph.nodes)}
        if self.fx_error:
            out["fx_error"] = self.fx_error
        if self.method is CaptureMethod.EXPORT and not self.dynamic_batch:
            out["batch_size"] = int(self.inputs[0].shape[0])
        if self.numbers:
            out["tensor_attributes_as_numbers"] = list(self.numbers)
        return out


class _HandlerLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return find_handler(type(m)) is not None or super().is_leaf_module(m, qualname)


def trace_with_handlers(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace in which every module with a registered pruning handler is a leaf."""
    tracer = _HandlerLeafTracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple, list, dict, dataclass or ModelOutput), in order."""
    return [t for _, t in tensor_leaves(out)]


class _TensorLeaves(nn.Module):
    """Returns the model's output tensors as a flat tuple (outputs torch.export cannot flatten itself)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        return tuple(output_tensors(self.model(*args)))


def _pytree_only(out: Any) -> bool:
    return all(isinstance(leaf, torch.Tensor) or leaf is None for leaf in pytree.tree_leaves(out))


def _batch_of_two(example_inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in example_inputs)


def export_graph(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> tuple[fx.GraphModule, str, tuple, bool, tuple]:
    """``torch.export`` (non-strict) with a dynamic batch where the model allows it (a batch of 1 is doubled so
    the batch is not specialised), else at the example's shapes; retried once with 0-d tensor attributes as
    numbers (:func:`edgekit.capture.export_retrying`).

    Returns ``(unlifted graph module, name prefix, the inputs it was captured with, dynamic batch?, the
    attributes captured as numbers)``.
    """
    from edgekit.capture import explain_export_error, export_retrying

    with torch.no_grad():
        out = model(*example_inputs)
    root, prefix = (model, "") if _pytree_only(out) else (_TensorLeaves(model), "model.")
    try:
        (gm, inputs, dynamic), numbers = export_retrying(model, lambda: _export(root, example_inputs))
    except Exception as exc:  # noqa: BLE001 - report any capture failure in user terms
        raise CaptureError(f"prune: {explain_export_error(exc, model)}") from None
    return gm, prefix, inputs, dynamic, tuple(numbers)


def _export(root: nn.Module, example_inputs: Sequence[torch.Tensor]) -> tuple[fx.GraphModule, tuple, bool]:
    two = _batch_of_two(example_inputs)
    auto = torch.export.Dim.AUTO
    try:
        gm = torch.export.export(root, two, dynamic_shapes=tuple({0: auto} for _ in two), strict=False).module()
        with torch.no_grad():
            gm(*(torch.cat([x, x[:1]]) for x in two))  # the batch really is dynamic (not specialised to 2)
    except Exception:  # noqa: BLE001 - a model that needs a static batch: capture it at the example's shapes
        gm = None
    if gm is not None:
        return gm, two, True
    return torch.export.export(root, tuple(example_inputs), strict=False).module(), tuple(example_inputs), False


def capture_graph(model: nn.Module, example_inputs: Sequence[torch.Tensor], method: CaptureMethod | None = None) -> CapturedGraph:
    """Capture ``model`` (fx first unless ``method`` says otherwise) and propagate the example's shapes."""
    fx_error = None
    if method in (None, CaptureMethod.FX):
        try:
            gm = trace_with_handlers(model)
            with torch.no_grad():
                ShapeProp(gm).propagate(*example_inputs)
            return CapturedGraph(gm, CaptureMethod.FX, tuple(example_inputs))
        except Exception as exc:  # noqa: BLE001 - any fx failure sends the model to torch.export
            fx_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if method is CaptureMethod.FX:
                raise CaptureError(f"torch.fx cannot trace {type(model).__name__}: {fx_error}") from None
    gm, prefix, inputs, dynamic, numbers = export_graph(model, example_inputs)
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    return CapturedGraph(gm, CaptureMethod.EXPORT, inputs, prefix, fx_error, dynamic, numbers)


__all__ = ["CaptureMethod", "CaptureError", "CapturedGraph", "capture_graph", "export_graph", "trace_with_handlers",
           "output_tensors"]
