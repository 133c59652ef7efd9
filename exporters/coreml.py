"""CoreML target: an ML Program (``model.mlpackage``) converted with coremltools from ``torch.export``.

Why from PyTorch and not from the hub ONNX: coremltools removed its ONNX frontend (coremltools >= 6); its
supported path is a ``torch.export`` program. Precisions: fp32 / fp16 compute precision; ``int8`` = int8
linear (symmetric) weight quantization with coremltools.optimize (fp16 compute). Option ``compression``:
``palettize4`` / ``palettize8`` (k-means palettization) or ``sparse`` (magnitude pruning to 50% sparse
weights), applied after conversion. I/O stay float32.

Linux cannot run CoreML predictions (the Core ML framework is macOS-only), so on Linux validation checks what
can be checked without running: the package loads, every op is a CoreML MIL op, the input/output names, shapes
and dtypes are right, and int8/palettized/sparse weights are really in the program. The numeric comparison
runs only on macOS; elsewhere the report says it was skipped and why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UserInputError
from edgekit.exporters.base import Capabilities, ExportContext, Exporter, register_target
from edgekit.exporters.options import Option

COMPRESSIONS = ("none", "palettize4", "palettize8", "sparse")
# MIL ops that carry compressed weights, per compression
COMPRESSED_OPS = {
    "int8": ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"),
    "palettize4": ("constexpr_lut_to_dense",),
    "palettize8": ("constexpr_lut_to_dense",),
    "sparse": ("constexpr_sparse_to_dense",),
}
SKIP_REASON = "CoreML predictions need macOS (Core ML framework); numeric comparison runs only on macOS"
QDQ_OPS = ("quantize", "dequantize")  # MIL ops (iOS17+) an int8 Q/DQ model's activation quantizers become
_FAKE_QUANT = ("fake_quantize_per_tensor_affine", "dequantize_per_channel", "dequantize_per_tensor")
_registered = False


def register_qdq_converter() -> None:
    """Teach coremltools' torch frontend ``fake_quantize_per_tensor_affine``: a calibrated activation quantizer
    becomes a MIL ``quantize`` -> ``dequantize`` pair with the same scale and zero point (int8 or uint8). The
    int8 weights (``dequantize_per_channel`` of int8 constants) coremltools already folds into 8-bit
    ``constexpr_affine_dequantize`` weights. coremltools' own activation calibration needs predictions (macOS);
    this reuses the calibration the quantize stage already did."""
    global _registered
    if _registered:
        return
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    def fake_quantize_per_tensor_affine(context, node):
        x, scale, zp, qmin, _qmax = _get_inputs(context, node, expected=5)
        signed = int(qmin.val) < 0
        zero = (np.int8 if signed else np.uint8)(int(zp.val))
        s = np.float32(scale.val)
        q = mb.quantize(input=x, scale=s, zero_point=zero, output_dtype="int8" if signed else "uint8", name=node.name + "_q")
        context.add(mb.dequantize(input=q, scale=s, zero_point=zero, name=node.name))

    register_torch_op(fake_quantize_per_tensor_affine, override=True)

    from coremltools.converters.mil.frontend.torch.quantization_ops import dequantize as ct_dequantize

    def dequantize_per_channel(context, node):
        """An int32 constant (a Gemm-form Linear's bias, on the input x weight grid for ONNX Runtime's QGemm)
        becomes its float constant (MIL dequantizes int8/uint8 only); int8 weights go to coremltools' op."""
        q, scale, zp, axis = _get_inputs(context, node)[:4]
        if q.val is None or q.val.dtype != np.int32:
            return ct_dequantize(context, node)
        shape = [1] * q.val.ndim
        shape[int(axis.val)] = -1
        val = (q.val.astype(np.float64) - np.reshape(zp.val, shape)) * np.reshape(scale.val, shape)
        context.add(mb.const(val=val.astype(np.float32), name=node.name))

    register_torch_op(dequantize_per_channel, override=True, torch_alias=[
        "quantized_decomposed::dequantize_per_channel", "quantized_decomposed.dequantize_per_channel"])
    _registered = True


def _has_fake_quant(program) -> bool:
    return any(node.op == "call_function" and any(k in str(node.target) for k in _FAKE_QUANT) for node in program.graph.nodes)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        prev = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(prev)


def program_ops(spec) -> list[str]:
    ops: set[str] = set()

    def walk(block):
        for op in block.operations:
            ops.add(op.type)
            for b in op.blocks:
                walk(b)

    for fn in spec.mlProgram.functions.values():
        for blk in fn.block_specializations.values():
            walk(blk)
    return sorted(ops)


def _exported(model, example):
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model.run_decompositions({})
    return torch.export.export(model, (example,), strict=False).run_decompositions({})


@register_target(
    "coreml",
    Capabilities(
        suffix=".mlpackage",
        precisions=("fp32", "fp16", "int8"),
        options={"compression": Option("none", str, choices=COMPRESSIONS),
                 "minimum_deployment_target": Option("iOS17", str, check=lambda v: v.startswith(("iOS", "macOS")),
                                                     help="like iOS17 or macOS14")},
        source="torch",
        runtime="coremltools (Linux: structural checks only)",
        notes="numeric validation only on macOS",
    ),
)
class CoreMLExporter(Exporter):
    def build(self, ctx: ExportContext) -> dict[str, Any]:
        from edgekit.backends import require

        with _quiet():
            ct = require("coremltools", "CoreML export")
            from coremltools.optimize import coreml as cto

            try:
                target = getattr(ct.target, ctx.options["minimum_deployment_target"])
            except AttributeError:
                raise UserInputError(f"target coreml: unknown minimum_deployment_target {ctx.options['minimum_deployment_target']!r}") from None
            precision = ct.precision.FLOAT32 if ctx.precision == "fp32" else ct.precision.FLOAT16
            program = _exported(ctx.model, ctx.example)
            qdq = _has_fake_quant(program)
            if qdq:
                register_qdq_converter()
                if target < ct.target.iOS17:
                    raise UserInputError("target coreml: an int8 Q/DQ model needs minimum_deployment_target iOS17 or "
                                         "newer (MIL quantize/dequantize ops)")
            try:
                ml = ct.convert(
                    program,
                    convert_to="mlprogram",
                    inputs=[ct.TensorType(name="input", shape=tuple(ctx.example.shape), dtype=np.float32)],
                    outputs=[ct.TensorType(name="output", dtype=np.float32)],
                    compute_precision=precision,
                    minimum_deployment_target=target,
                )
            except (NotImplementedError, ValueError, RuntimeError) as exc:
                from edgekit.exporters.ops import explain_torch_failure

                err = explain_torch_failure("coreml", exc, ctx.model, ctx.example)
                if err is not None:
                    raise err from None
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UserInputError(
                    f"target coreml cannot convert model {ctx.name}: {msg} "
                    "(an op coremltools does not support; workaround: rewrite or fuse that layer, "
                    "or register a coremltools composite op)"
                ) from None
            if ctx.precision == "int8" and not qdq:  # a float model: int8 weights only
                cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0))
                ml = cto.linear_quantize_weights(ml, cfg)
            comp = ctx.options["compression"]
            if comp.startswith("palettize"):
                cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=int(comp[-1]), mode="kmeans", weight_threshold=0))
                ml = cto.palettize_weights(ml, cfg)
            elif comp == "sparse":
                cfg = cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=0))
                ml = cto.prune_weights(ml, cfg)
            ml.save(str(ctx.out / "model.mlpackage"))
        if ctx.precision == "int8":
            ctx.extra_manifest["int8_source"] = ("the calibrated Q/DQ of the model: activation quantizers as MIL "
                                                 "quantize/dequantize, int8 weights as constexpr_affine_dequantize"
                                                 if qdq else "coremltools linear_quantize_weights (int8 weights only)")
            ctx.extra_manifest["coreml_qdq"] = qdq
        return {"model_file": "model.mlpackage", "runtime": {"name": "coremltools", "version": ct.__version__},
                "numeric_validation": platform.system() == "Darwin"}

    def checks(self, directory: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        import coremltools as ct

        ref_out = np.load(directory / "reference.npz")["outputs"]
        checks = []
        try:
            with _quiet():
                ml = ct.models.MLModel(str(directory / manifest["model_file"]), skip_model_load=True)
            spec = ml.get_spec()
            checks.append({"name": "package loads", "passed": True, "detail": f"spec v{spec.specificationVersion}, mlProgram"})
        except Exception as exc:  # noqa: BLE001
            return [{"name": "package loads", "passed": False, "detail": f"{type(exc).__name__}: {exc}"}]
        fp32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
        (inp,), (out,) = spec.description.input, spec.description.output
        want_in = list(manifest["input_shape"])
        got_in = list(inp.type.multiArrayType.shape)
        checks.append({"name": "input name/shape/dtype", "passed": inp.name == "input" and got_in == want_in and inp.type.multiArrayType.dataType == fp32,
                       "detail": f"{inp.name} {got_in} dtype={inp.type.multiArrayType.dataType} (want input {want_in} FLOAT32)"})
        got_out = list(out.type.multiArrayType.shape)
        want_out = [1, *ref_out.shape[1:]]
        checks.append({"name": "output shape/dtype", "passed": got_out in ([], want_out) and out.type.multiArrayType.dataType == fp32,
                       "detail": f"{out.name} {got_out} (want {want_out} FLOAT32)"})
        ops = program_ops(spec)
        with _quiet():
            from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

            known = set(SSAOpRegistry.core_ops)  # op name -> {deployment target: op class}
        unknown = [o for o in ops if known and o not in known]
        checks.append({"name": "ops are CoreML MIL ops", "passed": not unknown,
                       "detail": f"{len(ops)} op types: {', '.join(ops)}" + (f"; unknown: {unknown}" if unknown else "")})
        key = "int8" if manifest["precision"] == "int8" else manifest.get("options", {}).get("compression", "none")
        if key in COMPRESSED_OPS:
            found = [o for o in ops if o in COMPRESSED_OPS[key]]
            checks.append({"name": f"{key} weights present", "passed": bool(found), "detail": f"ops {found or 'none'} (want one of {COMPRESSED_OPS[key]})"})
        if manifest.get("coreml_qdq"):
            missing = [o for o in QDQ_OPS if o not in ops]
            checks.append({"name": "int8 activation quantize/dequantize ops present", "passed": not missing,
                           "detail": f"missing {missing}" if missing else "quantize and dequantize in the program"})
        return checks

    def runner(self, directory: Path, manifest: dict[str, Any]):
        if platform.system() != "Darwin":
            return SKIP_REASON
        import coremltools as ct

        ml = ct.models.MLModel(str(directory / manifest["model_file"]))
        return lambda x: np.asarray(ml.predict({"input": np.ascontiguousarray(x, dtype=np.float32)})["output"])
