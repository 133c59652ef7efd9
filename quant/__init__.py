"""Int8 quantization: calibration observers, fake quantization, PTQ, QAT, sensitivity and QDQ export.

This package stays light on import (no backend, no heavy module): import the sub-modules you need,
e.g. ``from edgekit.quant.observers import make_observer`` or ``from edgekit.quant.fakequant import
fake_quant``. Sub-packages ``edgekit.quant.ivit`` (integer-only ViT) and ``edgekit.quant.bivit``
(binarization) reuse the observers and fake-quant helpers from here.
"""

from __future__ import annotations
