"""Small nn.Module helpers shared by the stages."""

from __future__ import annotations

from torch import nn


def eval_mode(model: nn.Module) -> nn.Module:
    """``model.eval()``, also for modules loaded from ``torch.export`` (which refuse ``eval()``:
    their graph already has the eval-mode ops baked in)."""
    try:
        return model.eval()
    except NotImplementedError:
        return model


def train_mode(model: nn.Module) -> nn.Module:
    try:
        return model.train()
    except NotImplementedError as exc:
        from edgekit.errors import UserInputError

        raise UserInputError(
            "this model was loaded from a torch.export program, which cannot be trained; "
            "start from the original model (zoo name or module:factory) to fine-tune"
        ) from exc


class FakeQuantized:
    """Marker base of modules that carry fake quantization (the quantizer's activation and weight modules):
    exporters check ``isinstance(module, FakeQuantized)`` without importing the quantizer."""
