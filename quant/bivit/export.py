"""ONNX export of a frozen BiViT model (He et al., ICCV 2023) that keeps the weights packed 1 bit each.

``edgekit.exporters.onnx.to_onnx`` constant-folds the unpacking, so its ONNX holds the binarized weights as
+-1 float tensors (times the per-channel scales at run time): simple, runs anywhere, 4 bytes a weight.
:func:`to_onnx_packed` exports without constant folding instead: the graph holds the uint8 bit-packed weights
and float16 scales, and ONNX Runtime unpacks them when it builds the session (its own constant folding), i.e.
"unpacked at load". Both validate against the PyTorch model (tests/test_bivit_stage.py).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from edgekit.backends import require
from edgekit.errors import UserInputError

__all__ = ["to_onnx_packed"]


def to_onnx_packed(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17,
                   dynamic_batch: bool = True) -> Path:
    """Export an eager, frozen binarized ``model`` to ONNX at ``path`` with the weights still bit-packed."""
    from edgekit.quant.bivit.modules import BinaryLinear

    require("onnx", "ONNX export")
    layers = [m for m in model.modules() if isinstance(m, BinaryLinear)]
    if not layers or not all(m.frozen for m in layers):
        raise UserInputError("to_onnx_packed: expects a frozen binarized model (convert, then freeze)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=opset,
                          do_constant_folding=False, input_names=["input"], output_names=["output"],
                          dynamic_axes=axes)
    return path
