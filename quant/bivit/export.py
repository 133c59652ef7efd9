"""ONNX forms of a frozen BiViT model (He et al., "BiViT: Extremely Compressed Binary Vision Transformers",
ICCV 2023) that keep the binary weights packed 1 bit each.

* :func:`pack_sign_initializers`: a lossless pass over any ONNX graph. Every float initializer whose values
  are all +-1 (the binarized weights once an exporter has constant-folded the unpacking; or all 0/1, the bits of
  an unpacking the exporter folded only part of) is replaced by its
  bits, packed 8 to a byte along the last axis (uint8, the layout of :mod:`edgekit.quant.bivit.pack`), and a
  small decoding subgraph of standard ops (Cast, Unsqueeze, Div, Floor, Mul, Sub, Reshape, Slice) that
  rebuilds the exact +-1 float tensor. Runtimes constant-fold that subgraph when they load the model (ONNX
  Runtime at session creation, OpenVINO at conversion), i.e. "unpacked at load": the file holds 1 bit a weight
  and the computation is unchanged, bit for bit. The export target ``onnx`` applies it to every graph it
  writes (``packed_sign_weights`` in the manifest says how many tensors and bytes).
* :func:`to_onnx_packed`: export an eager model without constant folding (the graph unpacks the stored
  buffer itself), kept for comparison with the pass above.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.backends import require
from edgekit.errors import UserInputError

__all__ = ["pack_sign_initializers", "pack_file", "binarized_precision", "to_onnx_packed", "MIN_PACKED_ELEMENTS"]

MIN_PACKED_ELEMENTS = 256  # smaller +-1 tensors are not worth a decoding subgraph


def _binary_low(arr: np.ndarray) -> float | None:
    """-1.0 for a tensor of +-1, 0.0 for one of 0/1 (a partly folded unpacking), None otherwise."""
    if arr.dtype != np.float32 or arr.size < MIN_PACKED_ELEMENTS:
        return None
    if np.all(np.abs(arr) == 1.0):
        return -1.0
    if np.all((arr == 0.0) | (arr == 1.0)):
        return 0.0
    return None


def _decoder(onnx: Any, name: str, packed_name: str, shape: tuple[int, ...], nbytes: int, low: float) -> tuple[list, list]:
    """Nodes (and their small constant initializers) that turn ``packed_name`` back into the +-1 (``low=-1``) or
    0/1 (``low=0``) tensor ``name``.

    Bit ``k`` of byte ``b``: ``floor(b / 2**k) - 2 * floor(b / 2**(k + 1))``, exact in float32."""
    h, P = onnx.helper, onnx.numpy_helper
    rows, last = int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]
    p = f"{name}__bits"
    consts = [
        P.from_array(np.array([-1], np.int64), f"{p}_axis"),
        P.from_array((2.0 ** np.arange(8)).astype(np.float32), f"{p}_pow"),
        P.from_array((2.0 ** np.arange(1, 9)).astype(np.float32), f"{p}_pow2"),
        P.from_array(np.array(2.0, np.float32), f"{p}_two"),
        P.from_array(np.array(1.0 - low, np.float32), f"{p}_span"),
        P.from_array(np.array(-low, np.float32), f"{p}_low"),
        P.from_array(np.array([rows, nbytes * 8], np.int64), f"{p}_flat"),
        P.from_array(np.array([0], np.int64), f"{p}_start"),
        P.from_array(np.array([last], np.int64), f"{p}_end"),
        P.from_array(np.array(shape, np.int64), f"{p}_shape"),
    ]
    nodes = [
        h.make_node("Cast", [packed_name], [f"{p}_f"], to=onnx.TensorProto.FLOAT),
        h.make_node("Unsqueeze", [f"{p}_f", f"{p}_axis"], [f"{p}_u"]),
        h.make_node("Div", [f"{p}_u", f"{p}_pow"], [f"{p}_d1"]),
        h.make_node("Floor", [f"{p}_d1"], [f"{p}_f1"]),
        h.make_node("Div", [f"{p}_u", f"{p}_pow2"], [f"{p}_d2"]),
        h.make_node("Floor", [f"{p}_d2"], [f"{p}_f2"]),
        h.make_node("Mul", [f"{p}_f2", f"{p}_two"], [f"{p}_m"]),
        h.make_node("Sub", [f"{p}_f1", f"{p}_m"], [f"{p}_bit"]),
        h.make_node("Reshape", [f"{p}_bit", f"{p}_flat"], [f"{p}_r"]),
        h.make_node("Slice", [f"{p}_r", f"{p}_start", f"{p}_end", f"{p}_axis"], [f"{p}_s"]),
        h.make_node("Mul", [f"{p}_s", f"{p}_span"], [f"{p}_s2"]),
        h.make_node("Sub", [f"{p}_s2", f"{p}_low"], [f"{p}_pm"]),
        h.make_node("Reshape", [f"{p}_pm", f"{p}_shape"], [name]),
    ]
    return nodes, consts


def pack_sign_initializers(model: Any) -> dict[str, int]:
    """Pack every +-1 float32 initializer of ``model`` (an ``onnx.ModelProto``, changed in place) to 1 bit a
    value with a decoding subgraph in front of its consumers. Returns counts: tensors, float bytes, packed bytes."""
    onnx = require("onnx", "ONNX export")
    from edgekit.quant.bivit.pack import pack_signs

    graph = model.graph
    keep, new_nodes, packed_names = [], [], set()
    stats = {"tensors": 0, "float_bytes": 0, "packed_bytes": 0}
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or init.data_location == onnx.TensorProto.EXTERNAL:
            keep.append(init)
            continue
        arr = onnx.numpy_helper.to_array(init)
        low = _binary_low(arr) if arr.ndim else None
        if low is None:
            keep.append(init)
            continue
        shape = tuple(int(s) for s in arr.shape)
        packed = pack_signs(arr.reshape(-1, shape[-1]) - 0.5)  # bit 1 where the value is the high one
        pname = f"{init.name}__packed"
        keep.append(onnx.numpy_helper.from_array(packed, pname))
        nodes, consts = _decoder(onnx, init.name, pname, shape, packed.shape[1], low)
        keep += consts
        new_nodes += nodes
        packed_names.add(init.name)
        stats["tensors"] += 1
        stats["float_bytes"] += arr.nbytes
        stats["packed_bytes"] += packed.nbytes
    if not stats["tensors"]:
        return stats
    # graph inputs that shadow an initializer (older IR) must go with it
    kept_inputs = [i for i in graph.input if i.name not in packed_names]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + old)  # decoders only read initializers: first is a valid topological order
    return stats


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


def pack_file(path: str | Path) -> dict[str, int]:
    """:func:`pack_sign_initializers` on an ONNX file, rewritten in place only when something was packed."""
    onnx = require("onnx", "ONNX export")
    path = Path(path)
    model = onnx.load(str(path))
    stats = pack_sign_initializers(model)
    if stats["tensors"]:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return stats


def binarized_precision(precision: str, stage: dict[str, Any] | None, model: nn.Module | None) -> str:
    """The precision an fp32 export of a BiViT model is validated as: ``w1a1`` / ``w1a8`` (tolerances in
    exporters/validation.py), from the recipe's ``binarize`` stage (a compress output) or the model's
    binarized layers (a Python model); ``precision`` unchanged for anything else."""
    if precision != "fp32":
        return precision
    bits = None
    if isinstance(stage, dict):
        bits = int(stage.get("activation_bits", 1))
    elif model is not None:
        from edgekit.quant.bivit.modules import BinaryLinear

        found = {m.act_bits for m in model.modules() if isinstance(m, BinaryLinear)}
        bits = min(found) if found else None
    return {1: "w1a1", 8: "w1a8"}.get(bits, precision) if bits is not None else precision
