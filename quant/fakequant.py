"""Fake quantization: quantize-dequantize in float, so a PyTorch model computes what an int8 runtime computes.

Small building blocks (reused by ``edgekit.quant.ivit`` / ``edgekit.quant.bivit``):

- :func:`fake_quant` -- ``(clamp(round(x / s) + z, qmin, qmax) - z) * s``; gradients straight-through
  (Bengio et al., 2013) inside the range, zero outside.
- :func:`lsq_fake_quant` -- the same with a learnable scale whose gradient is scaled by
  ``1 / sqrt(numel * qmax)`` (LSQ: Esser et al., "Learned Step Size Quantization", ICLR 2020).
- :func:`quantize_weight` -- per-output-channel symmetric int8 weights ``(q, scale)``.
- :class:`ActFakeQuant` -- a per-tensor activation quantizer with modes ``observe`` (calibration), ``quant``,
  ``lsq`` (QAT) and ``off``. Its frozen form is ``torch.fake_quantize_per_tensor_affine`` with constant
  parameters, which the ONNX exporter writes as a QuantizeLinear/DequantizeLinear pair.
- :class:`QuantConv2d` / :class:`QuantLinear` -- conv/linear with int8 weights. Frozen, the weight is an int8
  buffer plus per-channel float scales, dequantized by ``quantized_decomposed.dequantize_per_channel``
  (exported as an int8 initializer feeding DequantizeLinear, the QDQ form every int8 runtime fuses).
  ``storage_bytes()`` reports the int8 size.
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

from edgekit.nn_utils import FakeQuantized
from edgekit.quant.config import WEIGHT_INT8, QScheme, qparams


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round`` in the forward pass, identity gradient (straight-through estimator)."""
    return (x.round() - x).detach() + x


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize ``x`` (per-tensor, or per-channel when scale/zero_point broadcast against x)."""
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def lsq_fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """LSQ fake quantization: the scale is learned, its gradient scaled by ``g = 1 / sqrt(N * qmax)``.

    ``N`` is the number of elements sharing one scale (per-channel: elements per channel).
    """
    n = x.numel() / max(1, scale.numel())
    g = 1.0 / math.sqrt(max(1.0, n) * max(1, abs(qmax)))
    s = (scale - scale * g).detach() + scale * g
    return fake_quant(x, s, zero_point, qmin, qmax)


def _channel_shape(w: torch.Tensor, axis: int = 0) -> tuple[int, ...]:
    shape = [1] * w.dim()
    shape[axis] = -1
    return tuple(shape)


@torch.no_grad()
def quantize_weight(w: torch.Tensor, scheme: QScheme = WEIGHT_INT8, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric quantization: ``scale_c = max|W_c| / 127``; returns ``(int8 q, scale)``."""
    if scale is None:
        amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
        scale, _ = qparams(-amax, amax, scheme)
    q = torch.clamp(torch.round(w / scale.reshape(_channel_shape(w))), scheme.qmin, scheme.qmax)
    return q.to(scheme.dtype), scale.float()


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, scheme: QScheme = WEIGHT_INT8) -> torch.Tensor:
    """int8 weight -> float via ``quantized_decomposed.dequantize_per_channel`` (exports as DequantizeLinear)."""
    zp = torch.zeros(scale.shape, dtype=torch.int64, device=scale.device)
    return torch.ops.quantized_decomposed.dequantize_per_channel(q, scale, zp, 0, scheme.qmin, scheme.qmax, q.dtype)


class ActMode(StrEnum):
    """What an :class:`ActFakeQuant` does: record ranges, quantize, quantize with a learned scale, pass through."""

    OBSERVE = "observe"
    QUANT = "quant"
    LSQ = "lsq"
    OFF = "off"


class WeightMode(StrEnum):
    """How a :class:`QuantWeight` layer computes: float weights, fake-quantized weights, or frozen int8."""

    FLOAT = "float"
    FAKE = "fake"
    INT8 = "int8"


class ActFakeQuant(FakeQuantized, nn.Module):
    """Per-tensor activation quantizer; ``mode`` is an :class:`ActMode` (plain strings are converted)."""

    def __init__(self, scheme: QScheme, observer=None) -> None:
        super().__init__()
        self.scheme = scheme
        self.observer = observer
        self.mode = ActMode.OBSERVE
        self.scale_f = 1.0
        self.zero_point_i = 0
        self.scale: nn.Parameter | None = None  # set by enable_lsq()

    @property
    def mode(self) -> ActMode:
        return self._mode

    @mode.setter
    def mode(self, value: ActMode | str) -> None:
        self._mode = ActMode(value)

    def freeze_from_observer(self) -> None:
        scale, zp = self.observer.qparams()
        self.set_qparams(float(scale), int(zp))

    def set_qparams(self, scale: float, zero_point: int) -> None:
        self.scale_f, self.zero_point_i = float(scale), int(zero_point)
        self.mode = ActMode.QUANT

    def enable_lsq(self) -> None:
        self.scale = nn.Parameter(torch.tensor(self.scale_f))
        self.mode = ActMode.LSQ

    def end_lsq(self) -> None:
        if self.scale is not None:
            self.scale_f = float(self.scale.detach().abs().clamp_min(1e-8))
        self.scale = None
        self.mode = ActMode.QUANT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is ActMode.OBSERVE:
            if self.observer is not None:
                self.observer.update(x)
            return x
        if self.mode is ActMode.OFF:
            return x
        if self.mode is ActMode.LSQ:
            zp = torch.tensor(float(self.zero_point_i))
            return lsq_fake_quant(x, self.scale.abs() + 1e-8, zp, self.scheme.qmin, self.scheme.qmax)
        return torch.fake_quantize_per_tensor_affine(x, self.scale_f, self.zero_point_i, self.scheme.qmin, self.scheme.qmax)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, scale={self.scale_f:.4g}, zero_point={self.zero_point_i}, range=[{self.scheme.qmin},{self.scheme.qmax}]"


class TiedFakeQuant(nn.Module):
    """A second Q/DQ point on the grid of ``source``: for a tensor that is a slice / view / permutation of one
    ``source`` quantizes (the q, k, v heads cut out of a fused ``qkv`` output). Its values are already on that
    grid, so it changes nothing numerically; it is there so that the exported graph has ``DQ -> Gather -> Q``
    with equal parameters (which ONNX Runtime and OpenVINO drop, so the consumer reads the integer tensor)
    and a Q/DQ pair right before the consuming matmul. It never observes: calibration sets only ``source``."""

    def __init__(self, source: ActFakeQuant) -> None:
        super().__init__()
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.source.mode in (ActMode.OBSERVE, ActMode.OFF):
            return x
        return self.source(x)


class QuantWeight(FakeQuantized, nn.Module):
    """Base of the int8-weight layers (conv, linear). ``wmode`` is a :class:`WeightMode`: ``float``
    (calibration), ``fake`` (fake-quant, LSQ scales in QAT), ``int8`` (frozen: int8 buffer + per-channel scales)."""

    scheme = WEIGHT_INT8

    @property
    def wmode(self) -> WeightMode:
        return self._wmode

    @wmode.setter
    def wmode(self, value: WeightMode | str) -> None:
        self._wmode = WeightMode(value)

    def _init_weight(self, layer: nn.Module) -> None:
        self.weight = nn.Parameter(layer.weight.detach().clone())
        b = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(layer.weight.shape[0])
        self.bias = nn.Parameter(b)
        self.wmode = WeightMode.FLOAT
        self.weight_scale_lsq: nn.Parameter | None = None

    def enable_lsq(self) -> None:
        _, scale = quantize_weight(self.weight, self.scheme)
        self.weight_scale_lsq = nn.Parameter(scale)
        self.wmode = WeightMode.FAKE

    def qweight(self) -> torch.Tensor:
        """The weight as the layer computes with it in its current mode."""
        if self.wmode is WeightMode.INT8:
            return dequantize_weight(self.weight_int8, self.weight_scale, self.scheme)
        if self.wmode is WeightMode.FLOAT:
            return self.weight
        if self.weight_scale_lsq is not None:
            s = self.weight_scale_lsq.abs().clamp_min(1e-8).reshape(_channel_shape(self.weight))
            return lsq_fake_quant(self.weight, s, torch.zeros(()), self.scheme.qmin, self.scheme.qmax)
        q, s = quantize_weight(self.weight, self.scheme)
        return (q.float() * s.reshape(_channel_shape(self.weight))).to(self.weight.dtype)

    @torch.no_grad()
    def freeze(self, input_scale: float | None = None) -> None:
        """Store the weight as int8 + per-channel scales and drop the float copy.

        ``input_scale`` (the per-tensor scale of the layer's quantized input): the bias is stored as int32 on the
        grid ``input_scale * weight_scale`` as well, which is what an integer kernel adds (the float bias is
        rounded onto it, so PyTorch computes the same); exported as int32 -> DequantizeLinear, the form ONNX
        Runtime needs to fuse a Gemm into QGemm. Skipped when a bias does not fit int32 on that grid."""
        scale = self.weight_scale_lsq.detach().abs().clamp_min(1e-8) if self.weight_scale_lsq is not None else None
        q, s = quantize_weight(self.weight, self.scheme, scale)
        del self.weight
        self.weight_scale_lsq = None
        self.weight_int8 = nn.Parameter(q, requires_grad=False)  # a parameter, so parameter counts still see it
        self.register_buffer("weight_scale", s)
        self.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        self.wmode = WeightMode.INT8
        if input_scale is not None:
            bscale = (s.double() * float(input_scale)).float()
            qb = torch.round(self.bias.double() / bscale.double())
            if bool((qb.abs() < 2**31 - 1).all()):
                self.register_buffer("bias_int32", qb.to(torch.int32))
                self.register_buffer("bias_scale", bscale)
                self.bias.data = self.qbias()

    def qbias(self) -> torch.Tensor:
        """The bias: float, or int32 dequantized (``quantized_decomposed.dequantize_per_channel``) once frozen
        with an input scale."""
        qb = getattr(self, "bias_int32", None)
        if self.wmode is not WeightMode.INT8 or qb is None:
            return self.bias
        zp = torch.zeros(qb.shape, dtype=torch.int64, device=qb.device)
        return torch.ops.quantized_decomposed.dequantize_per_channel(qb, self.bias_scale, zp, 0, -2**31, 2**31 - 1, torch.int32)

    def storage_bytes(self) -> int:
        if self.wmode is WeightMode.INT8:
            return self.weight_int8.numel() + 4 * self.weight_scale.numel() + 4 * self.bias.numel()
        return 4 * (self.weight.numel() + self.bias.numel())


class QuantConv2d(QuantWeight):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"QuantConv2d: padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self._init_weight(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.qweight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, groups={self.groups}, weights={self.wmode}"


class QuantLinear(QuantWeight):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._init_weight(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qweight(), self.qbias())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights={self.wmode}"


QUANT_LAYERS: dict[type, type] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
FAKE_QUANT_MODULES: tuple[type, ...] = (ActFakeQuant, QuantWeight)
"""Module types that carry fake quantization (exporters check ``isinstance(m, FAKE_QUANT_MODULES)``)."""
"""Float layer type -> its int8-weight replacement (add an entry to quantize another layer type)."""
