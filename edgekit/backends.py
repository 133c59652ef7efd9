"""Lazy import of optional backends. The core imports none of them at import time."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgekit.errors import MissingDependencyError

# import name -> pip extra that installs it
EXTRAS = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "onnxslim": "onnx",
    "openvino": "openvino",
    "nncf": "openvino",
    "coremltools": "coreml",
    "tvm": "tvm",
    "tensorrt": "tensorrt",
    "paramiko": "ssh",
    "adbutils": "adb",
}


def require(module: str, what: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        hint = f"pip install 'edgekit[{extra}]'" if extra else f"pip install {top}"
        purpose = f" (needed for {what})" if what else ""
        raise MissingDependencyError(f"{top} is not installed{purpose}: {hint}") from exc


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
