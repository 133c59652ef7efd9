"""PyTorch -> ONNX conversion shared by every ONNX-based target (the hub of the export stage).

Two exporters exist in torch 2.x and we use both, for measured reasons (torch 2.13, checked on the zoo and on
fake-quant models):

* TorchScript (``dynamo=False``) for eager ``nn.Module``: ~0.1-0.5 s a model (dynamo ~2-3 s), and it maps
  ``fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine`` directly to
  QuantizeLinear/DequantizeLinear pairs (int8 QDQ graphs).
* dynamo (``torch.export`` based) for ``torch.fx.GraphModule`` (what ``.pt2`` files load as) and
  ``ExportedProgram``: TorchScript cannot trace them ("Calling train() is not supported"). It also produces QDQ
  for fake-quant ops. It implements opset 18 natively; asking it for 17 triggers a lossy down-conversion, so
  the dynamo path uses ``max(opset, 18)``.

Both reject narrow-range fake quantization (quant_min=-127): ONNX QuantizeLinear saturates to the full int8
range. We raise an error naming the layer and the workaround (quantize weights with -128..127, or fold the
weight fake-quant into the constant before export).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from edgekit.nn_utils import FakeQuantized
from edgekit.records import OnnxWriter
from edgekit.errors import EdgekitError, UserInputError

INPUT_NAME = "input"
OUTPUT_NAME = "output"
DEFAULT_OPSET = 17


def safe_eval(model):
    """``model.eval()``; modules unflattened from ``torch.export`` refuse it (they are fixed in eval form)."""
    try:
        return model.eval()
    except NotImplementedError:
        return model


def is_graph_module(model: object) -> bool:
    return isinstance(model, (torch.fx.GraphModule, torch.export.ExportedProgram))


def fake_quant_layers(model: nn.Module) -> list[str]:
    """Names of nodes/modules that carry fake-quant ops (a best effort over eager modules and GraphModules)."""
    found = []
    if isinstance(model, torch.fx.GraphModule):
        for node in model.graph.nodes:
            if node.op == "call_function" and "fake_quantize" in str(node.target):
                found.append(node.name)
    for name, mod in model.named_modules():
        if isinstance(mod, FakeQuantized):
            found.append(name)
    return found


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress lines and warnings for every model; keep them out of user output."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _narrow_range_hint(exc: BaseException) -> str | None:
    text = str(exc)
    if "quant_min, quant_max" in text or "(-127, 127)" in text:
        return (
            "narrow-range fake quantization (quant_min=-127) has no ONNX QuantizeLinear equivalent; "
            "workaround: quantize with quant_min=-128 (weights rarely hit -128), or fold the weight "
            "fake-quant into the constant (W_q = fake_quant(W)) before export"
        )
    return None


def _export_torchscript(model, example, path, opset, dynamic_batch) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes=axes,
        do_constant_folding=True,
    )


def _export_dynamo(model, example, path, opset, dynamic_batch) -> None:
    shapes = None
    if dynamic_batch and not isinstance(model, torch.export.ExportedProgram):
        shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},)
    prog = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=max(opset, 18),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=shapes,
        external_data=False,
        optimize=True,
    )
    from edgekit.quant.qdq import global_pools_in_onnx

    global_pools_in_onnx(prog.model)  # torch.export turns a global average pool into a mean: GlobalAveragePool again
    prog.save(str(path), external_data=False)


def to_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    exporter: str = "auto",
) -> Path:
    """Export ``model`` (eager module, GraphModule from a .pt2, or ExportedProgram) to ONNX at ``path``.

    The single graph input is named ``input`` and the output ``output``. ``exporter``: ``auto`` (TorchScript
    for eager modules, dynamo for graph modules, the other one if the first fails), ``torchscript`` or
    ``dynamo``. Fake-quant ops become QuantizeLinear/DequantizeLinear. A model whose class implements
    :class:`edgekit.records.OnnxWriter` (``write_onnx(path, example, opset)``) writes its own graph. Returns ``path``.
    """
    if opset < 17:
        raise UserInputError(f"opset {opset}: edgekit exports ONNX opset >= 17")
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise UserInputError(f"exporter {exporter!r}: accepted: auto, torchscript, dynamo")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, OnnxWriter):  # a model class that writes its own ONNX (I-ViT's integer graph)
        return Path(model.write_onnx(path, example, opset))
    if isinstance(model, nn.Module):
        model = safe_eval(model)
    if exporter == "auto":
        order = ["dynamo", "torchscript"] if is_graph_module(model) else ["torchscript", "dynamo"]
    else:
        order = [exporter]
    errors = []
    for name in order:
        fn = _export_dynamo if name == "dynamo" else _export_torchscript
        try:
            with _quiet(), torch.no_grad():
                fn(model, example, path, opset, dynamic_batch)
            return path
        except Exception as exc:  # noqa: BLE001 - try the other exporter, report both
            hint = _narrow_range_hint(exc)
            if hint:
                layers = fake_quant_layers(model)
                where = f" (fake-quant layers: {', '.join(layers[:8])})" if layers else ""
                raise UserInputError(f"ONNX export: {hint}{where}") from None
            first = str(exc).strip().splitlines()
            errors.append(f"{name}: {type(exc).__name__}: {first[0] if first else ''}"[:600])
    from edgekit.exporters.ops import explain_torch_failure

    err = explain_torch_failure("onnx", Exception(" | ".join(errors)), model, example)
    if err is not None:
        raise err
    raise EdgekitError("ONNX export failed with every exporter tried; " + " | ".join(errors))


def to_onnx_fp16(model: nn.Module, example: torch.Tensor, path: str | Path, **kw) -> Path:
    """fp16 ONNX with fp32 input/output: the model runs in half, Cast nodes convert at the boundaries.

    Traced in torch at half precision (rather than rewriting the fp32 graph) so every op's dtype is decided
    by torch itself; the fp32 I/O keeps the artifact contract (reference.npz is float32).
    """
    import copy

    class _Half(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.half()).float()

    if is_graph_module(model):
        inner = copy.deepcopy(model)
        for p in list(inner.parameters()) + list(inner.buffers()):
            if p.is_floating_point():
                p.data = p.data.half()
    else:
        inner = copy.deepcopy(model).half()
    wrapper = _Half(inner)
    wrapper.training = False
    return to_onnx(wrapper, example, path, **kw)
