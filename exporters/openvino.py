"""OpenVINO target: IR (``model.xml`` + ``model.bin``) converted from the hub ONNX with ``openvino.convert_model``.

Why from ONNX and not from PyTorch directly: int8 has to come from a QDQ graph (OpenVINO turns
QuantizeLinear/DequantizeLinear pairs into FakeQuantize and runs those layers in int8), and using the same
graph for every precision keeps the ONNX, OpenVINO and TensorRT artifacts of one model comparable.
fp16: weights compressed to fp16 (``compress_to_fp16``); fp32: uncompressed. Validated with the CPU plugin
with ``INFERENCE_PRECISION_HINT=f32`` so float layers are not silently run in bf16 on CPUs that have it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UserInputError
from edgekit.exporters.base import Capabilities, ExportContext, Exporter, register_target
from edgekit.exporters.options import hub_options
from edgekit.exporters.torch2onnx import DEFAULT_OPSET


INTEGER_ONLY_REFUSAL = (
    "an integer-only graph (I-ViT) does not run exactly on OpenVINO's CPU plugin (measured on a small ViT: "
    "logits off by up to 0.7 where they reach 1.6; its integer element-wise ops do not keep every bit), so it "
    "cannot be validated bit-exact; export it with --target onnx or --target tvm"
)


def _unshare_weight_zero_points(path: Path) -> None:
    """Give every weight DequantizeLinear its own zero-point initializer. torch.onnx shares one constant among
    equal zero points; when a conv and a MatMul weight of the same width share it, the IR that ``convert_model`` +
    ``save_model`` writes keeps a ``Subtract`` on those weights and the CPU plugin runs all of their layers in float
    (detector-hybrid int8: 16 of 20 convs and 6 of 12 FullyConnected in bf16; with the copies, only the 4 float
    head convs)."""
    import copy

    import onnx

    m = onnx.load(str(path))
    inits, seen = {i.name: i for i in m.graph.initializer}, set()
    for node in m.graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) > 2 and node.input[0] in inits and node.input[2] in inits:
            if node.input[2] in seen:
                t = copy.deepcopy(inits[node.input[2]])
                t.name = f"{node.input[2]}_{node.name or len(m.graph.initializer)}"
                m.graph.initializer.append(t)
                node.input[2] = t.name
            seen.add(node.input[2])
    onnx.save(m, str(path))


@register_target(
    "openvino",
    Capabilities(
        suffix=".xml",
        precisions=("fp32", "fp16", "int8"),
        options=hub_options(DEFAULT_OPSET),
        source="onnx",
        runtime="openvino CPU plugin",
        notes="IR from the hub ONNX; int8 from QDQ",
    ),
)
class OpenVINOExporter(Exporter):
    def build(self, ctx: ExportContext) -> dict[str, Any]:
        from edgekit.backends import require

        ov = require("openvino", "OpenVINO export")
        if getattr(type(ctx.model), "integer_only", False):  # I-ViT: see INTEGER_ONLY_REFUSAL
            raise UserInputError(f"target openvino: model {ctx.name}: {INTEGER_ONLY_REFUSAL}")
        onnx_path = ctx.onnx(".hub.onnx", "fp32" if ctx.precision == "fp16" else ctx.precision)
        _unshare_weight_zero_points(onnx_path)
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:  # noqa: BLE001 - name the op and layer when OpenVINO lacks a converter
            from edgekit.exporters.ops import explain_onnx_failure

            err = explain_onnx_failure("openvino", exc, onnx_path)
            if err is not None:
                raise err from None
            raise
        if ctx.options.get("dynamic_batch"):
            shape = model.input(0).get_partial_shape()
            shape[0] = ov.Dimension(-1)
            model.reshape({0: shape})
        ov.save_model(model, str(ctx.out / "model.xml"), compress_to_fp16=ctx.precision == "fp16")
        onnx_path.unlink()
        return {"model_file": "model.xml", "runtime": {"name": "openvino", "version": ov.get_version()}}

    def runner(self, directory: Path, manifest: dict[str, Any]):
        from edgekit.exporters.runtimes import VALIDATION_RUNTIME, openvino_compiled

        cfg = VALIDATION_RUNTIME  # the same configuration `edgekit profile` validates with (validation_contract)
        request = openvino_compiled(directory / manifest["model_file"], cfg.threads, cfg.openvino_precision_hint).create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            res = request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
            return np.asarray(next(iter(res.values())))

        return run
