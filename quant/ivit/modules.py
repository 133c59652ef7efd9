"""Integer modules of the I-ViT form ("I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", Li & Gu, ICCV 2023).

Between modules a tensor holds integers (float64 values in PyTorch, so that QAT gradients flow; every value
is below 2**53, hence exact); each module knows the scale of its inputs and of its output statically.
``kernel(*ints, p=params)`` is the integer computation, written once for torch int64 tensors and numpy int64
arrays (:mod:`.functional`). In eval mode ``forward`` returns exactly the kernel's integers; in training mode
it returns the same values with the gradient of a float surrogate (straight-through estimator), so QAT fine-
tunes the function that is deployed. ``freeze()`` stores the integer parameters (int8 weights, int32 biases,
dyadic multipliers) as buffers; the executor and the exporters read only those.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.quant.ivit import functional as IF

def ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _f64(v: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(v, dtype=np.float64))


class IntModule(nn.Module):
    """Base: integer parameters (live from float weights, or frozen buffers), kernel and STE forward."""

    PARAMS: tuple[str, ...] = ()  # names of the integer parameters (buffers once frozen)
    out_lo: int = -128
    out_hi: int = 127

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    # integer parameters --------------------------------------------------------------------------
    def live_params(self) -> dict[str, torch.Tensor]:
        return {}

    def params(self) -> dict[str, torch.Tensor]:
        if self.frozen:
            return {k: getattr(self, "q_" + k) for k in self.PARAMS}
        return self.live_params()

    def params_np(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().astype(np.int64) for k, v in self.params().items()}

    def freeze(self) -> None:
        if self.frozen:
            return
        for k, v in self.live_params().items():
            self.register_buffer("q_" + k, _compact(v))
        self.frozen = True

    def storage_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.params().values())

    def param_count(self) -> int:
        """Stored values (integer weights, biases, multipliers), frozen into buffers or not."""
        return sum(v.numel() for v in self.params().values())

    # computation ---------------------------------------------------------------------------------
    def kernel(self, *xs: Any, p: dict[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def surrogate(self, *xs: torch.Tensor) -> torch.Tensor:  # float stand-in whose gradient QAT uses
        raise NotImplementedError

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            exact = self.kernel(*(x.detach().round().long() for x in xs), p=self.params()).double()
            sur = self.surrogate(*xs)
            return sur + (exact - sur).detach()
        return self.kernel(*(x.long() for x in xs), p=self.params()).double()

    def extra_repr(self) -> str:
        return f"out=[{self.out_lo}, {self.out_hi}], scale={getattr(self, 's_out', float('nan')):.4g}"


def _compact(v: torch.Tensor) -> torch.Tensor:
    """Smallest signed integer dtype holding ``v`` (int8 weights, int32 biases, ...)."""
    v = v.detach().long()
    lo, hi = (int(v.min()), int(v.max())) if v.numel() else (0, 0)
    for dt in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return v.to(dt)
    return v


def _bits_range(bits: int, signed: bool = True) -> tuple[int, int]:
    return IF.qrange(bits, signed)


class IntQuantize(nn.Module):
    """The input quantizer (float32 -> int): ``clamp(round(x * (1/s)))`` in float32, the graph's float entry."""

    def __init__(self, scale: float, bits: int = 8) -> None:
        super().__init__()
        self.s_out = float(scale)
        self.inv = float(np.float32(1.0 / scale))
        self.out_lo, self.out_hi = _bits_range(bits)
        self.register_buffer("inv_scale", torch.tensor(self.inv, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return torch.clamp(ste_round(x.double() / self.s_out), self.out_lo, self.out_hi)
        return torch.clamp(torch.round(x.float() * self.inv_scale), self.out_lo, self.out_hi).double()

    def storage_bytes(self) -> int:
        return 4


class IntDequantize(nn.Module):
    """The output dequantizer (int -> float32): ``float32(x) * s``, the graph's float exit."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.s_in = float(scale)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.scale

    def storage_bytes(self) -> int:
        return 4


class IntConst(IntModule):
    """A float parameter used as an activation (position embedding, class token): ``round(v / s)``."""

    PARAMS = ("value",)

    def __init__(self, value: torch.Tensor, bits: int = 16) -> None:
        super().__init__()
        self.value = nn.Parameter(value.detach().clone())
        self.out_lo, self.out_hi = _bits_range(bits)
        self.s_out = max(float(value.detach().abs().max()), 1e-8) / self.out_hi

    def live_params(self):
        return {"value": torch.clamp(torch.round(self.value.detach().double() / self.s_out), self.out_lo, self.out_hi).long()}

    def kernel(self, p):
        return p["value"]

    def forward(self) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return torch.clamp(ste_round(self.value.double() / self.s_out), self.out_lo, self.out_hi)
        return self.params()["value"].double()


class IntRequant(IntModule):
    """Dyadic requantization of an activation to another scale / bit width; with ``gain`` (one factor per
    channel of the last axis: a layer scale) the per-channel product is folded into the multipliers."""

    PARAMS = ("m", "e")

    def __init__(self, s_in: float, s_out: float, bits: int = 8, gain: torch.Tensor | None = None) -> None:
        super().__init__()
        self.s_in, self.s_out = float(s_in), float(s_out)
        self.bits = bits
        self.out_lo, self.out_hi = _bits_range(bits)
        if gain is not None:
            self.weight = nn.Parameter(gain.detach().double().reshape(-1).clone())

    def _ratio(self) -> Any:
        w = getattr(self, "weight", None)
        return self.s_in / self.s_out if w is None else w.detach().numpy() * (self.s_in / self.s_out)

    def live_params(self):
        m, e = IF.dyadic(self._ratio(), max_shift=IF.shift_cap(self.bits))
        return {"m": torch.as_tensor(m), "e": torch.as_tensor(e)}

    def kernel(self, x, p):
        return IF.requantize(x, p["m"], p["e"], self.bits)[0]

    def surrogate(self, x):
        w = getattr(self, "weight", None)
        gain = 1.0 if w is None else w
        return torch.clamp(x * gain * (self.s_in / self.s_out), self.out_lo, self.out_hi)


class IntLinear(IntModule):
    """int8 x int8 (per-channel weights) -> int32 accumulator + int32 bias -> per-channel dyadic requant."""

    PARAMS = ("w", "b", "m", "e")

    def __init__(self, linear: nn.Linear, s_in: float, s_out: float, bits: int = 8) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())
        bias = linear.bias.detach().clone() if linear.bias is not None else torch.zeros(linear.out_features)
        self.bias = nn.Parameter(bias)
        self.s_in, self.s_out, self.bits = float(s_in), float(s_out), bits
        self.out_lo, self.out_hi = _bits_range(bits)

    def _wq(self):
        return IF.quantize_weight(self.weight)

    def _ratio(self, s_w: torch.Tensor) -> torch.Tensor:
        return self.s_in * s_w / self.s_out

    def live_params(self):
        w, s_w = self._wq()
        b = torch.clamp(torch.round(self.bias.detach().double() / (self.s_in * s_w)), -IF.INT32_MAX, IF.INT32_MAX)
        m, e = IF.dyadic(self._ratio(s_w).numpy(), max_shift=IF.shift_cap(self.bits))
        return {"w": w.long(), "b": b.long(), "m": torch.as_tensor(m), "e": torch.as_tensor(e)}

    def kernel(self, x, p):
        return IF.requantize(IF.int_linear(x, p["w"], p["b"]), p["m"], p["e"], self.bits)[0]

    def surrogate(self, x):
        w_int, s_w = self._wq()
        w = ste_round(self.weight.double() / s_w[:, None])
        b = ste_round(self.bias.double() / (self.s_in * s_w))
        return torch.clamp(F.linear(x, w, b) * self._ratio(s_w), self.out_lo, self.out_hi)


class IntConv2d(IntLinear):
    """Integer convolution (per-output-channel int8 weights, int32 accumulation, per-channel requant)."""

    def __init__(self, conv: nn.Conv2d, s_in: float, s_out: float, bits: int = 8) -> None:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or tuple(conv.dilation) != (1, 1):
            raise ValueError("IntConv2d: only zero padding given as numbers and dilation 1 are supported")
        nn.Module.__init__(self)
        self.frozen = False
        self.weight = nn.Parameter(conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = nn.Parameter(bias)
        self.stride, self.padding, self.groups = tuple(conv.stride), tuple(conv.padding), conv.groups
        self.s_in, self.s_out, self.bits = float(s_in), float(s_out), bits
        self.out_lo, self.out_hi = _bits_range(bits)

    def live_params(self):
        p = super().live_params()
        p["m"], p["e"] = p["m"].reshape(-1, 1, 1), p["e"].reshape(-1, 1, 1)
        return p

    def kernel(self, x, p):
        acc = IF.int_conv2d(x, p["w"], p["b"], self.stride, self.padding, self.groups)
        return IF.requantize(acc, p["m"], p["e"], self.bits)[0]

    def surrogate(self, x):
        _, s_w = self._wq()
        w = ste_round(self.weight.double() / s_w.reshape(-1, 1, 1, 1))
        b = ste_round(self.bias.double() / (self.s_in * s_w))
        y = F.conv2d(x, w, b, self.stride, self.padding, 1, self.groups)
        return torch.clamp(y * self._ratio(s_w).reshape(-1, 1, 1), self.out_lo, self.out_hi)


class IntMatMul(IntModule):
    """Product of two integer activations (int8 / uint8 probabilities) -> int32 -> dyadic requant."""

    PARAMS = ("m", "e")

    def __init__(self, s_a: float, s_b: float, s_out: float, bits: int = 8) -> None:
        super().__init__()
        self.s_a, self.s_b, self.s_out, self.bits = float(s_a), float(s_b), float(s_out), bits
        self.out_lo, self.out_hi = _bits_range(bits)

    def live_params(self):
        m, e = IF.dyadic(self.s_a * self.s_b / self.s_out, max_shift=IF.shift_cap(self.bits))
        return {"m": torch.as_tensor(m), "e": torch.as_tensor(e)}

    def kernel(self, a, b, p):
        return IF.requantize(IF.int_matmul(a, b), p["m"], p["e"], self.bits)[0]

    def surrogate(self, a, b):
        return torch.clamp((a @ b) * (self.s_a * self.s_b / self.s_out), self.out_lo, self.out_hi)


class IntSoftmax(IntModule):
    """Shiftmax over the last axis: k-bit probabilities in [0, 2**(k-1)] at scale 2**-(k-1)."""

    def __init__(self, s_in: float, bits: int = 8) -> None:
        super().__init__()
        self.s_in, self.bits = float(s_in), bits
        self.s_out = 2.0 ** -(bits - 1)
        self.out_lo, self.out_hi = 0, 2 ** (bits - 1)

    def kernel(self, x, p):
        return IF.shiftmax(x, self.s_in, self.bits)[0]

    def surrogate(self, x):
        return torch.softmax(x * self.s_in, dim=-1) / self.s_out


class IntGELU(IntModule):
    """ShiftGELU, then a dyadic requantization of ``x * sigma`` to the output scale."""

    PARAMS = ("m", "e")

    def __init__(self, s_in: float, s_out: float, bits: int = 8, sigmoid_bits: int = 8) -> None:
        super().__init__()
        self.s_in, self.s_out, self.bits, self.sigmoid_bits = float(s_in), float(s_out), bits, sigmoid_bits
        self.out_lo, self.out_hi = _bits_range(bits)

    def live_params(self):
        m, e = IF.dyadic(self.s_in * 2.0 ** -(self.sigmoid_bits - 1) / self.s_out)
        return {"m": torch.as_tensor(m), "e": torch.as_tensor(e)}

    def kernel(self, x, p):
        g, _ = IF.shiftgelu(x, self.s_in, self.sigmoid_bits)
        return IF.requantize(g, p["m"], p["e"], self.bits)[0]

    def surrogate(self, x):
        return torch.clamp(F.gelu(x * self.s_in) / self.s_out, self.out_lo, self.out_hi)


class IntLayerNorm(IntModule):
    """I-LayerNorm over the last axis (integer mean, Newton isqrt, gamma/beta folded into the requant)."""

    PARAMS = ("m", "e", "b")

    def __init__(self, ln: nn.LayerNorm, s_in: float, s_out: float, bits: int = 8) -> None:
        super().__init__()
        if len(ln.normalized_shape) != 1:
            raise ValueError(f"IntLayerNorm: only normalisation over the last axis, got {ln.normalized_shape}")
        c = ln.normalized_shape[0]
        self.weight = nn.Parameter(ln.weight.detach().clone() if ln.weight is not None else torch.ones(c))
        self.bias = nn.Parameter(ln.bias.detach().clone() if ln.bias is not None else torch.zeros(c))
        self.eps, self.channels = ln.eps, c
        self.s_in, self.s_out, self.bits = float(s_in), float(s_out), bits
        self.out_lo, self.out_hi = _bits_range(bits)

    def live_params(self):
        m, e, b = IF.layernorm_constants(self.weight.detach().numpy(), self.bias.detach().numpy(), self.channels, self.s_out, self.bits)
        return {"m": torch.as_tensor(m), "e": torch.as_tensor(e), "b": torch.as_tensor(b)}

    def kernel(self, x, p, steps: int | None = IF.ISQRT_STEPS):
        y, _ = IF.layernorm_normalize(x, steps)
        return IF.layernorm_output(y, p["m"], p["e"], p["b"], self.bits)

    def surrogate(self, x):
        y = F.layer_norm(x * self.s_in, (self.channels,), self.weight.double(), self.bias.double(), self.eps)
        return torch.clamp(y / self.s_out, self.out_lo, self.out_hi)


class IntAdd(IntModule):
    """Residual add: each branch requantized (dyadic) to the output scale, added, clamped (16-bit)."""

    PARAMS = ("ma", "ea", "mb", "eb")

    def __init__(self, s_a: float, s_b: float, s_out: float, bits: int = 16) -> None:
        super().__init__()
        self.s_a, self.s_b, self.s_out, self.bits = float(s_a), float(s_b), float(s_out), bits
        self.out_lo, self.out_hi = _bits_range(bits)

    def live_params(self):
        ma, ea = IF.dyadic(self.s_a / self.s_out, max_shift=IF.shift_cap(self.bits))  # int32 in graphs
        mb, eb = IF.dyadic(self.s_b / self.s_out, max_shift=IF.shift_cap(self.bits))
        return {k: torch.as_tensor(v) for k, v in zip(self.PARAMS, (ma, ea, mb, eb))}

    def kernel(self, a, b, p):
        ya = IF.requantize(a, p["ma"], p["ea"], 32)[0]
        yb = IF.requantize(b, p["mb"], p["eb"], 32)[0]
        return IF.ops(ya).clamp(ya + yb, self.out_lo, self.out_hi)

    def surrogate(self, a, b):
        return torch.clamp(a * (self.s_a / self.s_out) + b * (self.s_b / self.s_out), self.out_lo, self.out_hi)


class IntMean(IntModule):
    """Mean over axes: an integer sum requantized with 1/count folded into the dyadic multiplier."""

    PARAMS = ("m", "e")

    def __init__(self, dims: tuple[int, ...], keepdim: bool, count: int, s_in: float, s_out: float, bits: int = 8):
        super().__init__()
        self.dims, self.keepdim, self.count = tuple(dims), keepdim, int(count)
        self.s_in, self.s_out, self.bits = float(s_in), float(s_out), bits
        self.out_lo, self.out_hi = _bits_range(bits)

    def live_params(self):
        m, e = IF.dyadic(self.s_in / (self.count * self.s_out), max_shift=IF.shift_cap(self.bits))
        return {"m": torch.as_tensor(m), "e": torch.as_tensor(e)}

    def kernel(self, x, p):
        if isinstance(x, torch.Tensor):
            total = torch.sum(x, dim=self.dims, keepdim=self.keepdim)
        else:
            total = np.sum(x, axis=self.dims, keepdims=self.keepdim)
        return IF.requantize(total, p["m"], p["e"], self.bits)[0]

    def surrogate(self, x):
        r = self.s_in / (self.count * self.s_out)
        return torch.clamp(torch.sum(x, dim=self.dims, keepdim=self.keepdim) * r, self.out_lo, self.out_hi)


class IntReLU(IntModule):
    """ReLU on integers: ``max(x, 0)`` at the input's scale."""

    def __init__(self, s_in: float, lo: int, hi: int) -> None:
        super().__init__()
        self.s_in = self.s_out = float(s_in)
        self.out_lo, self.out_hi = 0, hi

    def kernel(self, x, p):
        return IF.ops(x).clamp(x, 0, None)

    def surrogate(self, x):
        return torch.clamp(x, min=0)


def storage_dtype(lo: int, hi: int) -> str:
    """The narrowest integer type holding [lo, hi]: int8, uint8, int16, int32 or int64."""
    for name, (a, b) in (("int8", (-128, 127)), ("uint8", (0, 255)), ("int16", (-(2**15), 2**15 - 1)),
                         ("int32", (-(2**31), 2**31 - 1))):
        if a <= lo and hi <= b:
            return name
    return "int64"

