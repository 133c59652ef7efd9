"""ONNX target (the hub): opset >= 17, fp32/fp16, optional dynamic batch, int8 as QDQ graphs."""

from __future__ import annotations

from edgekit.exporters.torch2onnx import to_onnx, to_onnx_fp16  # noqa: F401  (public helpers)
