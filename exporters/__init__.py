"""Export stage: one module per target (onnx, openvino, coreml, tensorrt, tvm), each validated against PyTorch.

    >>> from edgekit.exporters import export, validate, measure_latency
    >>> art = export("convnet", "onnx", precision="fp16")
    >>> art.report.passed

Nothing here imports a backend at import time; the public names are resolved lazily.
"""


from __future__ import annotations

if __name__ != "edgekit.exporters":  # the folder is mapped into edgekit by setup.py; a second copy would not see its registrations
    raise ImportError(f"the exporters/ folder is the package edgekit.exporters: import edgekit.exporters instead of {__name__}")

from importlib import import_module
from typing import Any

_LAZY = {
    "export": "edgekit.exporters.base",
    "validate": "edgekit.exporters.base",
    "Artifact": "edgekit.exporters.base",
    "TARGETS": "edgekit.exporters.base",
    "target_names": "edgekit.exporters.base",
    "capabilities": "edgekit.exporters.base",
    "ValidationReport": "edgekit.exporters.validation",
    "TOLERANCES": "edgekit.exporters.validation",
    "measure_latency": "edgekit.exporters.latency",
    "to_onnx": "edgekit.exporters.torch2onnx",
    "RUNTIMES": "edgekit.exporters.runtimes",
    "contract_for": "edgekit.exporters.runtimes",
    "run_cell": "edgekit.exporters.composition",
    "CellRecord": "edgekit.exporters.composition",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
