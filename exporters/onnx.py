"""ONNX target, the hub of the export stage: opset >= 17, fp32/fp16, optional dynamic batch, int8 as QDQ.

* fp32: :func:`to_onnx` (see torch2onnx.py for the TorchScript-vs-dynamo choice).
* fp16: the model traced in half with fp32 I/O (:func:`to_onnx_fp16`).
* int8: a model with fake-quant ops (from the quant stage) is carried through as QuantizeLinear/
  DequantizeLinear pairs. A float model is quantized post-training with ONNX Runtime's static QDQ quantizer
  (symmetric int8 activations and per-channel weights, so the same graph serves ORT, OpenVINO and TensorRT),
  calibrated on the data's calibration split; the manifest records which path was taken.
* cleanup: onnxslim (constant folding, shape inference, dead-node removal); skipped, and said so, if it would
  fold away Q/DQ nodes.

Validated with ONNX Runtime's CPU execution provider.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.errors import EdgekitError, UserInputError
from edgekit.records import OnnxWriter
from edgekit.exporters.base import Capabilities, ExportContext, Exporter, register_target
from edgekit.exporters.options import hub_options
from edgekit.exporters.torch2onnx import (  # noqa: F401  (public helpers)
    DEFAULT_OPSET,
    fake_quant_layers,
    to_onnx,
    to_onnx_fp16,
)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def count_qdq(model) -> int:
    return sum(1 for n in model.graph.node if n.op_type in QDQ_OPS)


def load_checked(path: Path):
    """Load an ONNX file, with a clear error for a corrupt or truncated one."""
    from edgekit.backends import require

    onnx = require("onnx", "ONNX export")
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: ONNX file does not exist")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, ValidationError, ...
        raise UserInputError(f"{path}: not a valid ONNX model (corrupt or truncated?): {type(exc).__name__}: {str(exc)[:300]}") from None
    return model


def cleanup(path: Path) -> dict[str, Any]:
    """Simplify the graph in place with onnxslim; keep the original if Q/DQ nodes would be lost."""
    from edgekit.backends import require

    onnx = require("onnx", "ONNX export")
    slim = require("onnxslim", "ONNX graph cleanup")
    model = onnx.load(str(path))
    before_nodes, before_qdq = len(model.graph.node), count_qdq(model)
    try:
        slimmed = slim.slim(model)
    except Exception as exc:  # noqa: BLE001 - cleanup is an optimisation; say why it was skipped
        return {"tool": "onnxslim", "applied": False, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
    if before_qdq and count_qdq(slimmed) < before_qdq:
        return {"tool": "onnxslim", "applied": False, "reason": "it would fold Q/DQ nodes away"}
    onnx.save(slimmed, str(path))
    return {"tool": "onnxslim", "applied": True, "nodes_before": before_nodes, "nodes_after": len(slimmed.graph.node)}


def quantize_static_qdq(fp32_path: Path, out_path: Path, calib: np.ndarray) -> dict[str, Any]:
    """Post-training static int8 QDQ quantization with ONNX Runtime (symmetric, per-channel weights)."""
    from edgekit.backends import require

    q = require("onnxruntime.quantization", "int8 ONNX quantization")

    class _Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x}

    with _root_log_level_at_least(logging.ERROR):  # ORT prints advice through the root logger
        q.quantize_static(
            str(fp32_path), str(out_path), _Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
            activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    return {"int8_source": "onnxruntime.quantization.quantize_static (QDQ, symmetric int8, per-channel weights)",
            "calibration_samples": int(len(calib))}


@contextlib.contextmanager
def _root_log_level_at_least(level: int):
    """Raise the root logger's level for the duration of one call, then restore it (never process-wide)."""
    root = logging.getLogger()
    prev = root.level
    root.setLevel(max(prev, level))
    try:
        yield
    finally:
        root.setLevel(prev)


class OnnxModel(nn.Module):
    """An existing ONNX file used as the MODEL: it runs on ONNX Runtime and serves as the reference."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        model = load_checked(self.path)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        shape = tuple(d.dim_value for d in dims[1:])
        self.input_shape = shape if shape and all(s > 0 for s in shape) else None
        self._run = None

    def forward(self, x):
        if self._run is None:
            self._run = ort_runner(self.path)
        xs = x.detach().float().numpy()
        return torch.from_numpy(np.concatenate([np.asarray(self._run(xs[i : i + 1])) for i in range(len(xs))]))


# (compress output manifest digest, precision, hub options) -> (cached file, manifest fields): one process
# exporting one compress output to several targets converts it to ONNX once (the composition matrix does).
_HUB_CACHE: dict[tuple, tuple[Path, dict[str, Any]]] = {}


@functools.lru_cache(maxsize=1)
def _cache_dir() -> str:
    import atexit
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="edgekit-hub-")
    atexit.register(shutil.rmtree, d, True)
    return d


def _hub_key(ctx: ExportContext, precision: str) -> tuple | None:
    if ctx.source_digest is None:
        return None
    return (ctx.source_digest, precision, *(str(ctx.options.get(k)) for k in ("opset", "dynamic_batch", "exporter", "cleanup")))


def write_onnx(ctx: ExportContext, path: Path, precision: str) -> Path:
    """The hub graph for ``precision``; records what was done in ``ctx.extra_manifest``."""
    import shutil

    key = _hub_key(ctx, precision)
    if key in _HUB_CACHE and _HUB_CACHE[key][0].is_file():
        cached, info = _HUB_CACHE[key]
        shutil.copyfile(cached, path)
        ctx.extra_manifest.update(info)
        return path
    _write_onnx(ctx, path, precision)
    if ctx.nm is not None:
        from edgekit.exporters.graph_weights import nm_layers

        ctx.extra_manifest["nm_sparsity"] = nm_layers(load_checked(path), *ctx.nm)
    if key is not None:
        keep = Path(_cache_dir()) / f"hub-{len(_HUB_CACHE)}.onnx"
        shutil.copyfile(path, keep)
        _HUB_CACHE[key] = (keep, dict(ctx.extra_manifest))
    return path


def _write_onnx(ctx: ExportContext, path: Path, precision: str) -> Path:
    opset = int(ctx.options.get("opset", DEFAULT_OPSET))
    dyn = bool(ctx.options.get("dynamic_batch", False))
    exporter = ctx.options.get("exporter", "auto")
    info: dict[str, Any] = {"opset": max(opset, 17)}
    if isinstance(ctx.model, OnnxModel):
        return _from_onnx_file(ctx, path, precision, info)
    if isinstance(ctx.model, OnnxWriter) and getattr(type(ctx.model), "integer_only", False):
        return _integer_only(ctx, path, precision, info)
    if precision == "fp16":
        to_onnx_fp16(ctx.model, ctx.example, path, opset=opset, dynamic_batch=dyn, exporter=exporter)
    else:
        to_onnx(ctx.model, ctx.example, path, opset=opset, dynamic_batch=dyn, exporter=exporter)
        _name_io(path, info)  # a model writing its own graph (OnnxWriter) may name its input otherwise
        if precision == "int8":
            # the graph itself tells whether the model carries fake-quant ops (modules or functional calls)
            if count_qdq(load_checked(path)):
                info["int8_source"] = "fake-quant ops of the model carried through as QDQ"
            else:
                if ctx.calib is None or len(ctx.calib) == 0:
                    raise UserInputError("int8 of a float model needs calibration data (pass data=...)")
                fp32 = path.with_name(".fp32-" + path.name)
                path.replace(fp32)
                cleanup(fp32)
                info.update(quantize_static_qdq(fp32, path, ctx.calib[:128].numpy().astype(np.float32)))
                fp32.unlink()
    if ctx.options.get("cleanup", True):
        info["cleanup"] = cleanup(path)
    if precision == "fp32":  # binarized (BiViT) weights: stored 1 bit each, unpacked by the runtime at load
        from edgekit.quant.bivit.export import pack_file

        packed = pack_file(path)
        if packed["tensors"]:
            info["packed_sign_weights"] = packed
    model = load_checked(path)
    info["opset"] = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=opset)
    if precision == "int8":
        n = count_qdq(model)
        if n == 0:
            raise EdgekitError("int8 ONNX export produced no QuantizeLinear/DequantizeLinear nodes")
        info["qdq_nodes"] = n
    ctx.extra_manifest.update(info)
    return path


def _integer_only(ctx: ExportContext, path: Path, precision: str, info: dict[str, Any]) -> Path:
    """A model that writes its own integer-only graph (I-ViT): its arithmetic is fixed by the model, so fp32
    and int8 name the same graph and fp16 has none. The float-op checker runs on the written file; its verdict
    goes into the manifest (``integer_only``) and from there into validation.json (exporters.base)."""
    from edgekit.quant.ivit.checker import float_tensors

    if precision == "fp16":
        raise UserInputError(f"model {ctx.name} is integer-only: it has no fp16 graph; export it at fp32 or int8 (the same integer graph)")
    ctx.model.write_onnx(path, ctx.example, int(info["opset"]))
    _name_io(path, info)  # the artifact contract: input / output (the profiler feeds `input`)
    model = load_checked(path)
    bad = float_tensors(model)
    info.update(
        opset=max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=17),
        integer_only={"float_tensors": len(bad), "first": bad[:5], "nodes": len(model.graph.node)},
        cleanup={"tool": "onnxslim", "applied": False, "reason": "the integer-only graph is written folded"},
    )
    ctx.extra_manifest.update(info)
    return path


def _from_onnx_file(ctx: ExportContext, path: Path, precision: str, info: dict[str, Any]) -> Path:
    import shutil

    src = ctx.model.path
    has_qdq = count_qdq(load_checked(src)) > 0
    if precision == "fp16":
        raise UserInputError(
            f"{src.name}: an fp16 ONNX graph is made from the PyTorch model (traced in half); "
            "pass the PyTorch model (zoo name, .pt2, module:factory) instead of an .onnx file"
        )
    if precision == "int8" and not has_qdq:
        if ctx.calib is None:
            raise UserInputError("int8 of a float ONNX model needs calibration data (pass data=...)")
        info.update(quantize_static_qdq(src, path, ctx.calib[:128].numpy().astype(np.float32)))
    else:
        shutil.copyfile(src, path)
        if precision == "int8":
            info["int8_source"] = "QDQ nodes of the input ONNX"
    info["source_onnx"] = src.name
    if ctx.options.get("cleanup", True):
        info["cleanup"] = cleanup(path)
    model = load_checked(path)
    info["opset"] = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=17)
    if len(model.graph.input) != 1:
        raise UserInputError(f"{src.name}: the graph has {len(model.graph.input)} inputs; edgekit exports single-input models")
    renamed = _rename_io(model)
    if renamed:
        import onnx

        onnx.save(model, str(path))
        info["renamed_io"] = renamed
    ctx.extra_manifest.update(info)
    return path


def _name_io(path: Path, info: dict[str, Any]) -> None:
    """Rename the graph's input/output to ``input``/``output`` in place if needed (the artifact contract)."""
    import onnx

    model = onnx.load(str(path))
    renamed = _rename_io(model)
    if renamed:
        onnx.save(model, str(path))
        info["renamed_io"] = renamed


def _rename_io(model) -> dict[str, str]:
    """Name the graph's input ``input`` and first output ``output`` (the artifact contract)."""
    renames = {}
    for value, new in ((model.graph.input[0], "input"), (model.graph.output[0], "output")):
        if value.name != new:
            renames[value.name] = new
    for old, new in renames.items():
        for v in list(model.graph.input) + list(model.graph.output):
            if v.name == old:
                v.name = new
        for n in model.graph.node:
            for i, name in enumerate(n.input):
                if name == old:
                    n.input[i] = new
            for i, name in enumerate(n.output):
                if name == old:
                    n.output[i] = new
    return renames


def ort_runner(path: Path, threads: int = 1):
    from edgekit.exporters.runtimes import ort_session

    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


@register_target(
    "onnx",
    Capabilities(
        suffix=".onnx",
        precisions=("fp32", "fp16", "int8"),
        options=hub_options(DEFAULT_OPSET),
        source="torch",
        runtime="onnxruntime",
        notes="the hub graph; int8 = QDQ",
    ),
)
class OnnxExporter(Exporter):
    def build(self, ctx: ExportContext) -> dict[str, Any]:
        import onnxruntime

        path = ctx.onnx("model.onnx")
        if ctx.precision == "int8":  # a packed detector output: integer concat, one DQ (quant/placement_tail.py)
            from edgekit.quant.placement_tail import integer_output_tail_file

            ctx.extra_manifest["integer_output_tail"] = integer_output_tail_file(path)
        return {"model_file": "model.onnx", "runtime": {"name": "onnxruntime", "version": onnxruntime.__version__}}

    def runner(self, directory: Path, manifest: dict[str, Any]):
        return ort_runner(directory / manifest["model_file"])
