"""TensorRT target: an engine built from the hub ONNX with the tensorrt Python API (needs tensorrt and an NVIDIA
GPU), or, without them, the TensorRT-ready ONNX plus the exact ``trtexec`` command; the manifest then says
``engine_built: false`` and validation says no engine was built. It never claims an engine it did not build.

Precisions: fp32; fp16 (``BuilderFlag.FP16`` on the fp32 graph, TensorRT picks fp16 kernels); int8 from
explicit QDQ (the int8 ONNX graph, see onnx.py), symmetric only: a model quantized with uint8 affine
activations (recipe ``int8``) is refused before any work, naming the recipe ``int8-sym``. Option
``sparse_weights`` (``auto``: on when the graph has 2:4 sparse weights) sets ``BuilderFlag.SPARSE_WEIGHTS``
(``--sparsity=enable``); TensorRT uses sparse kernels only on Ampere or newer and only where faster. Before building, the ONNX is checked against TensorRT's known constraints (ops its ONNX parser does not
take, QDQ placement rules of explicit quantization), reported per layer name in ``tensorrt_check.json``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UserInputError
from edgekit.exporters.base import Capabilities, ExportContext, Exporter, ExportSource, register_target
from edgekit.exporters.graph_weights import nm_layers
from edgekit.exporters.options import Option, hub_options
from edgekit.exporters.torch2onnx import DEFAULT_OPSET
from edgekit.exporters.trt_rules import UNSUPPORTED_OPS, check_graph, check_onnx, needs_symmetric  # noqa: F401


def two_four_sparsity(path: Path) -> dict[str, Any]:
    """Which Conv/Gemm/MatMul weights are 2:4 sparse along the input-channel axis (what SPARSE_WEIGHTS needs)."""
    import onnx

    found = nm_layers(onnx.load(str(path)), 2, 4)
    return {"sparse_2_4_layers": found["layers_with_pattern"], "dense_layers": found["other_layers"]}


def refuse_asymmetric(source: ExportSource) -> None:
    """TensorRT int8 is symmetric: refuse a model quantized with uint8 affine activations, naming int8-sym."""
    quant = source.stage("quantize")
    asym = quant is not None and not quant.get("symmetric_activations", False)
    if quant is None:
        from edgekit.quant.fakequant import ActFakeQuant

        asym = any(isinstance(m, ActFakeQuant) and not m.scheme.symmetric for m in source.model.modules())
    if asym:
        by = f"recipe {source.recipe!r}" if source.recipe else "its quantizer"
        raise UserInputError(
            f"target tensorrt takes symmetric int8 only (signed int8 activations, zero point 0); model {source.name} "
            f"was quantized by {by} with uint8 affine activations. Use the recipe int8-sym: "
            f"`{source.compress_command('int8-sym')}`, then export that output (onnx and openvino take both)"
        )


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
        options={"sparse_weights": Option("auto", str, choices=("auto", True, False), help="auto: on for 2:4 sparse weights"),
                 "workspace_mb": Option(1024, int, minimum=1), **hub_options(DEFAULT_OPSET)},
        needs_gpu=True,
        source="onnx",
        runtime="tensorrt (GPU)",
        notes="without tensorrt+GPU: TensorRT-ready ONNX + trtexec command, no engine",
    ),
)
class TensorRTExporter(Exporter):
    def preflight(self, source: ExportSource, precision: str, options: dict[str, Any]) -> None:
        if precision == "int8":
            refuse_asymmetric(source)

    def build(self, ctx: ExportContext) -> dict[str, Any]:
        import onnx

        onnx_path = ctx.onnx("model.onnx", "int8" if ctx.precision == "int8" else "fp32")
        problems, advice = check_graph(onnx.load(str(onnx_path)))
        sparsity = two_four_sparsity(onnx_path)  # cheap; reported either way (e.g. after `prune` with N:M 2:4)
        choice = ctx.options["sparse_weights"]
        sparse = bool(sparsity["sparse_2_4_layers"]) if choice == "auto" else bool(choice)
        cmd = trtexec_command(list(ctx.example.shape), ctx.precision, sparse, workspace_mb=int(ctx.options["workspace_mb"]))
        report = {"problems": problems, "advice": advice, "sparsity": sparsity}
        (ctx.out / "tensorrt_check.json").write_text(json.dumps(report, indent=2) + "\n")
        (ctx.out / "build_engine.sh").write_text(f"#!/bin/sh\n# build the TensorRT engine on a machine with TensorRT and an NVIDIA GPU\n{cmd}\n")
        if problems:
            first = "; ".join(f"{p['layer']} ({p['op']}): {p['problem']} [{p['rule']}]" for p in problems[:5])
            hint = " Use the recipe int8-sym (symmetric int8 activations)." if needs_symmetric(problems) else ""
            raise UserInputError(f"target tensorrt: the ONNX graph breaks TensorRT constraints: {first}.{hint}")
        ok, why = gpu_available()
        fields: dict[str, Any] = {"trtexec_command": cmd, "tensorrt_constraints": "passed", "sparse_weights": sparse,
                                  "sparse_2_4_layers": len(sparsity["sparse_2_4_layers"])}
        if sparsity["sparse_2_4_layers"] and not sparse:
            fields["sparsity_hint"] = (f"{len(sparsity['sparse_2_4_layers'])} layer(s) have 2:4 sparse weights; "
                                       "sparse_weights=false keeps TensorRT from using sparse kernels")
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
