"""Int8 quantization: calibration observers, fake quantization, PTQ, QAT, sensitivity and QDQ export.

This package stays light on import (no backend, no heavy module): import the sub-modules you need.

- ``edgekit.quant.config``: :class:`QScheme` grids (int8 per-channel weights, uint8/int8 activations), ``qparams``.
- ``edgekit.quant.observers``: ``make_observer(method, scheme)`` -- minmax, moving_average, percentile, mse, entropy.
- ``edgekit.quant.fakequant``: ``fake_quant``, ``lsq_fake_quant``, ``quantize_weight``, ``ActFakeQuant``,
  ``QuantConv2d`` / ``QuantLinear`` (int8 weights, ``storage_bytes()``).
- ``edgekit.quant.qdq``: where Q/DQ pairs go so ORT / OpenVINO / TensorRT fuse them; ORT optimized-graph checks.
- ``edgekit.quant.ptq``: ``quantize_ptq(model, calib_x, example, PTQConfig(...))`` on the graph :mod:`edgekit.capture` captures (torch.fx or torch.export).
- ``edgekit.quant.qat``: ``quantize_qat(model, data, example, ...)`` (LSQ + STE, distillation).
- ``edgekit.quant.equalize``: cross-layer equalization; ``edgekit.quant.sensitivity``: per-layer SQNR ranking.
- ``edgekit.quant.stages``: recipe stages ``quantize`` and ``sensitivity``.

Sub-packages ``edgekit.quant.ivit`` (integer-only ViT) and ``edgekit.quant.bivit`` (binarization) reuse the
observers and fake-quant helpers from here.
"""

from __future__ import annotations

if __name__ != "edgekit.quant":  # the folder is mapped into edgekit by setup.py; a second copy would not see its registrations
    raise ImportError(f"the quant/ folder is the package edgekit.quant: import edgekit.quant instead of {__name__}")
