"""edgekit: fuse, prune, quantize, export and profile PyTorch models for edge inference.

The package imports nothing heavy at import time; the API below loads on first use.

    >>> import edgekit
    >>> result = edgekit.compress("convnet", recipe="int8")
    >>> result.report.accuracy, result.info, result.model
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "compress": ("edgekit.pipeline", "compress"),
    "CompressResult": ("edgekit.pipeline", "CompressResult"),
    "load_recipe": ("edgekit.recipe", "load_recipe"),
    "load_data": ("edgekit.data", "load_data"),
    "load_model": ("edgekit.loading", "load_model"),
    "fuse": ("edgekit.fusion", "fuse"),
    "export": ("edgekit.exporters", "export"),
    "inspect": ("edgekit.inspection", "inspect_model"),
}

__all__ = ["__version__", *_LAZY]


_SUBMODULES = ("models", "fusion", "ops", "prune", "quant", "exporters", "devices", "data", "recipe", "training")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"edgekit.{name}")
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
