"""TensorRT target: an engine built from the hub ONNX with the tensorrt Python API (needs tensorrt and an NVIDIA
GPU), or, without them, the TensorRT-ready ONNX plus the exact ``trtexec`` command; the manifest then says
``engine_built: false`` and validation says no engine was built. It never claims an engine it did not build.

Precisions: fp32; fp16 (``BuilderFlag.FP16`` on the fp32 graph, TensorRT picks fp16 kernels); int8 from
explicit QDQ (the int8 ONNX graph, see onnx.py). Option ``sparse_weights`` sets ``BuilderFlag.SPARSE_WEIGHTS``
(``--sparsity=enable``) for 2:4 models; TensorRT uses sparse kernels only on Ampere or newer and only where
faster. Before building, the ONNX is checked against TensorRT's known constraints (ops its ONNX parser does not
take, QDQ placement rules of explicit quantization), reported per layer name in ``tensorrt_check.json``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UserInputError
from edgekit.exporters.base import Capabilities, ExportContext, Exporter, register_target
from edgekit.exporters.torch2onnx import DEFAULT_OPSET

# ONNX ops TensorRT 10's ONNX parser does not support (onnx-tensorrt docs/operators.md), with a workaround.
UNSUPPORTED_OPS = {
    "Unique": None, "StringNormalizer": None, "TfIdfVectorizer": None, "Multinomial": None,
    "SequenceAt": "avoid Python lists of tensors in forward", "SequenceConstruct": "avoid Python lists of tensors in forward",
    "SequenceInsert": "avoid Python lists of tensors in forward", "ConcatFromSequence": "use torch.cat on a fixed list",
    "Optional": None, "OptionalGetElement": None, "ImageDecoder": None, "RegexFullMatch": None,
    "StringConcat": None, "StringSplit": None, "Col2Im": "use Fold-free formulation", "Bernoulli": "remove dropout-like sampling for inference",
    "RandomNormal": "remove random ops for inference", "RandomUniform": "remove random ops for inference",
    "DynamicQuantizeLinear": "use static QDQ (calibrated scales) instead of dynamic quantization",
    "MatMulInteger": "use QDQ + MatMul instead of integer ops", "ConvInteger": "use QDQ + Conv instead of integer ops",
    "QLinearConv": "export QDQ (QuantizeLinear/DequantizeLinear) instead of QOperator format",
    "QLinearMatMul": "export QDQ (QuantizeLinear/DequantizeLinear) instead of QOperator format",
}
INT8, UINT8 = 3, 2  # onnx.TensorProto data types


def _const_values(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    vals = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute:
            a = n.attribute[0]
            if a.name == "value":
                vals[n.output[0]] = numpy_helper.to_array(a.t)
    return vals


def check_onnx(path: Path) -> list[dict[str, Any]]:
    """Problems TensorRT would have with this ONNX, one dict per layer: layer, op, problem, workaround."""
    import onnx

    model = onnx.load(str(path))
    consts = _const_values(model)
    problems = []
    for n in model.graph.node:
        layer = n.name or (n.output[0] if n.output else n.op_type)
        if n.op_type in UNSUPPORTED_OPS:
            problems.append({"layer": layer, "op": n.op_type, "problem": "op not supported by TensorRT's ONNX parser",
                             "workaround": UNSUPPORTED_OPS[n.op_type]})
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = n.input[1] if len(n.input) > 1 else ""
            if scale not in consts:
                problems.append({"layer": layer, "op": n.op_type, "problem": "scale is not a constant (TensorRT needs build-time scales)",
                                 "workaround": "calibrate statically; fold scale computation into constants"})
            if len(n.input) > 2 and n.input[2]:
                zp = consts.get(n.input[2])
                if zp is None:
                    problems.append({"layer": layer, "op": n.op_type, "problem": "zero point is not a constant", "workaround": None})
                elif np.any(zp != 0):
                    problems.append({"layer": layer, "op": n.op_type, "problem": "non-zero zero point (TensorRT int8 is symmetric)",
                                     "workaround": "quantize symmetrically (zero point 0)"})
                elif zp.dtype == np.uint8:
                    problems.append({"layer": layer, "op": n.op_type, "problem": "uint8 quantization (TensorRT takes int8 only)",
                                     "workaround": "use signed int8 activations"})
    return problems


def two_four_sparsity(path: Path) -> dict[str, Any]:
    """Which Conv/Gemm/MatMul weights are 2:4 sparse along the input-channel axis (what SPARSE_WEIGHTS needs)."""
    import onnx

    model = onnx.load(str(path))
    consts = _const_values(model)
    sparse, dense = [], []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in consts:
            continue
        w = consts[n.input[1]]
        if w.ndim < 2 or w.dtype.kind != "f":
            continue
        w2 = np.moveaxis(w, 1, -1).reshape(-1, w.shape[1]) if n.op_type == "Conv" else w.T.reshape(-1, w.shape[0]) if n.op_type == "MatMul" else w.reshape(w.shape[0], -1)
        ok = w2.shape[1] % 4 == 0 and bool(np.all((w2.reshape(w2.shape[0], -1, 4) != 0).sum(-1) <= 2))
        (sparse if ok else dense).append(n.name or n.output[0])
    return {"sparse_2_4_layers": sparse, "dense_layers": len(dense)}


def trtexec_command(ctx_shape, precision: str, sparse: bool, onnx_file: str = "model.onnx", workspace_mb: int = 1024) -> str:
    cmd = ["trtexec", f"--onnx={onnx_file}", "--saveEngine=model.engine",
           f"--shapes=input:{'x'.join(map(str, ctx_shape))}", f"--memPoolSize=workspace:{workspace_mb}M"]
    if precision == "fp16":
        cmd.append("--fp16")
    elif precision == "int8":
        cmd += ["--int8", "--fp16"]  # explicit QDQ decides int8 layers; fp16 allowed elsewhere
    if sparse:
        cmd.append("--sparsity=enable")
    return " ".join(shlex.quote(c) for c in cmd)


def gpu_available() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "tensorrt is not installed (pip install 'edgekit[tensorrt]')"
    import torch

    if not torch.cuda.is_available():
        return False, "no NVIDIA GPU / CUDA available on this host"
    return True, ""


def build_engine(onnx_path: Path, engine_path: Path, precision: str, sparse: bool, workspace_mb: int) -> None:
    """Build a serialized engine with the TensorRT Python API (explicit batch, strongly typed for QDQ)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserInputError(f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errs))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise UserInputError("TensorRT failed to build an engine (see the TensorRT log above)")
    engine_path.write_bytes(bytes(engine))


@register_target(
    "tensorrt",
    Capabilities(
        suffix=".engine",
        precisions=("fp32", "fp16", "int8"),
        options={"sparse_weights": False, "workspace_mb": 1024, "opset": DEFAULT_OPSET, "cleanup": True, "exporter": "auto"},
        needs_gpu=True,
        source="onnx",
        runtime="tensorrt (GPU)",
        notes="without tensorrt+GPU: TensorRT-ready ONNX + trtexec command, no engine",
    ),
)
class TensorRTExporter(Exporter):
    def build(self, ctx: ExportContext) -> dict[str, Any]:
        onnx_path = ctx.onnx("model.onnx", "int8" if ctx.precision == "int8" else "fp32")
        problems = check_onnx(onnx_path)
        sparse = bool(ctx.options["sparse_weights"])
        sparsity = two_four_sparsity(onnx_path)  # cheap; reported either way (e.g. after `prune` with N:M 2:4)
        cmd = trtexec_command(list(ctx.example.shape), ctx.precision, sparse, workspace_mb=int(ctx.options["workspace_mb"]))
        (ctx.out / "tensorrt_check.json").write_text(json.dumps({"problems": problems, "sparsity": sparsity}, indent=2) + "\n")
        (ctx.out / "build_engine.sh").write_text(f"#!/bin/sh\n# build the TensorRT engine on a machine with TensorRT and an NVIDIA GPU\n{cmd}\n")
        if problems:
            first = "; ".join(f"{p['layer']} ({p['op']}): {p['problem']}" for p in problems[:5])
            raise UserInputError(f"target tensorrt: the ONNX graph breaks TensorRT constraints: {first}")
        ok, why = gpu_available()
        fields: dict[str, Any] = {"trtexec_command": cmd, "tensorrt_constraints": "passed",
                                  "sparse_2_4_layers": len(sparsity["sparse_2_4_layers"])}
        if sparsity["sparse_2_4_layers"] and not sparse:
            fields["sparsity_hint"] = (f"{len(sparsity['sparse_2_4_layers'])} layer(s) have 2:4 sparse weights; "
                                       "pass -O sparse_weights=true to let TensorRT use sparse kernels")
        if ok:
            import tensorrt as trt

            build_engine(onnx_path, ctx.out / "model.engine", ctx.precision, sparse, int(ctx.options["workspace_mb"]))
            fields.update(model_file="model.engine", engine_built=True, runtime={"name": "tensorrt", "version": trt.__version__})
        else:
            fields.update(model_file="model.onnx", engine_built=False, engine_not_built_reason=why,
                          note="NO TensorRT engine was built: run build_engine.sh on a machine with TensorRT and a GPU")
        return fields

    def checks(self, directory: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        report = json.loads((directory / "tensorrt_check.json").read_text())
        return [{"name": "TensorRT ONNX constraints (ops, QDQ placement)", "passed": not report["problems"],
                 "detail": f"{len(report['problems'])} problem(s)"}]

    def runner(self, directory: Path, manifest: dict[str, Any]):
        if not manifest.get("engine_built"):
            return f"no TensorRT engine was built ({manifest.get('engine_not_built_reason')}); nothing to run"
        return _engine_runner(directory / manifest["model_file"])


def _engine_runner(engine_path: Path):
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    out_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def run(x: np.ndarray) -> np.ndarray:
        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        context.set_input_shape("input", tuple(inp.shape))
        out = torch.empty(tuple(context.get_tensor_shape(out_name)), dtype=torch.float32, device="cuda")
        context.set_tensor_address("input", inp.data_ptr())
        context.set_tensor_address(out_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return out.cpu().numpy()

    return run
