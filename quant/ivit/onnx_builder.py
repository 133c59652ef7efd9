"""A small deterministic ONNX graph builder for the I-ViT integer graph ("I-ViT: Integer-only Quantization for
Efficient Vision Transformer Inference", Li & Gu, ICCV 2023), with the integer helpers the lowerings share.

Every integer tensor carries its storage (:class:`Meta`: ONNX dtype, an ``offset`` with ``stored = value +
offset``, and the value range). int8 activations are stored as uint8 with offset 128, so that
``MatMulInteger`` runs ONNX Runtime's fast u8 x s8 kernel with zero point 128 (the s8 x s8 path is ~30x
slower on x86); probabilities as uint8 with offset 0; wider tensors as int32.

Requantization ``clamp(floor((t * m + c) / 2**e), lo, hi)`` runs in int32 (:meth:`Builder.requant`): the input
is first clamped to the range whose result can still differ (exact, the map is monotone), then ``t * m + c -
lo * 2**e`` fits int32 when ``e <= shift_cap(bits)`` (the model's dyadic pairs are chosen so), the
truncating ``Div`` by ``2**e`` followed by ``Clip(0, hi - lo)`` equals the floor (negative quotients clip to
0 either way), and the result is stored with offset ``-lo``. Where a bound does not fit int32 the same
arithmetic runs in int64 (counted in ``Builder.int64_fallbacks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.backends import require

I32 = 2**31
OFF64 = 2**62
_NP = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
       "float32": np.float32, "bool": np.bool_}


@dataclass(frozen=True)
class Meta:
    dtype: str
    offset: int = 0
    lo: int | None = None  # range of the value (stored - offset)
    hi: int | None = None


def _ints(a: Any) -> np.ndarray:
    """Exact Python-int arrays (object dtype): bounds below are computed without int64 overflow."""
    return np.asarray(np.asarray(a, dtype=np.int64), dtype=object)


def _fits(*arrays: Any, limit: int = I32) -> bool:
    return all(bool(np.all(np.abs(np.asarray(a, dtype=object)) < limit)) for a in arrays)


class Builder:
    """Nodes and deduplicated initializers, named t1, t2, ... and c1, c2, ...; a :class:`Meta` per tensor."""

    def __init__(self, opset: int = 17) -> None:
        onnx = require("onnx", "I-ViT ONNX export")
        self.h, self.T = onnx.helper, onnx.TensorProto
        self.opset = opset
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.meta: dict[str, Meta] = {}
        self._consts: dict[tuple, str] = {}
        self._n = 0
        self.int64_fallbacks: list[str] = []

    def name(self, hint: str = "t") -> str:
        self._n += 1
        return f"{hint}{self._n}"

    def dtype(self, x: str) -> str:
        return self.meta[x].dtype

    def const(self, value: Any, dtype: str = "int64") -> str:
        arr = np.ascontiguousarray(np.asarray(value, dtype=_NP[dtype]))
        key = (dtype, arr.shape, arr.tobytes())
        if key not in self._consts:
            from onnx import numpy_helper

            name = self.name("c")
            self.inits.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
            self.meta[name] = Meta(dtype)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], meta: Meta | str | None = None, n_out: int = 1, **attrs: Any):
        """Add a node; its outputs get ``meta`` (a Meta, a dtype with offset 0, or the first input's Meta)."""
        outs = [self.name() for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op_type, inputs, outs, **attrs))
        m = self.meta[inputs[0]] if meta is None else (Meta(meta) if isinstance(meta, str) else meta)
        for o in outs:
            self.meta[o] = m
        return outs[0] if n_out == 1 else outs

    # conversions -------------------------------------------------------------------------------
    def cast(self, x: str, dtype: str, meta: Meta | None = None) -> str:
        m = meta or Meta(dtype, self.meta[x].offset, self.meta[x].lo, self.meta[x].hi)
        if self.dtype(x) == dtype:
            return x
        to = getattr(self.T, "FLOAT" if dtype == "float32" else dtype.upper())
        return self.op("Cast", [x], m, to=to)

    def value(self, x: str, dtype: str = "int32") -> str:
        """The value itself (offset 0) as ``dtype``."""
        m = self.meta[x]
        y = self.cast(x, dtype)
        if m.offset:
            y = self.op("Sub", [y, self.const(m.offset, dtype)], Meta(dtype, 0, m.lo, m.hi))
        return y

    def to_u8(self, x: str) -> tuple[str, int]:
        """(uint8 tensor, zero point) of an activation whose range spans at most 256 values."""
        m = self.meta[x]
        if m.dtype == "uint8":
            return x, m.offset
        if m.lo is None or m.hi - m.lo > 255:
            raise ValueError(f"tensor {x} (range [{m.lo}, {m.hi}]) is not an 8-bit activation")
        y = self.op("Add", [self.cast(x, "int32"), self.const(-m.lo - m.offset, "int32")], Meta("int32", -m.lo, m.lo, m.hi))
        return self.cast(y, "uint8"), -m.lo

    def clamp(self, x: str, lo: Any, hi: Any, dtype: str) -> str:
        """Clamp with scalar (Clip) or per-channel (Max / Min) bounds."""
        lo, hi = np.asarray(lo), np.asarray(hi)
        if lo.size == 1 and hi.size == 1:
            return self.op("Clip", [x, self.const(lo.reshape(()), dtype), self.const(hi.reshape(()), dtype)])
        x = self.op("Max", [x, self.const(lo, dtype)])
        return self.op("Min", [x, self.const(hi, dtype)])

    # requantization ----------------------------------------------------------------------------
    def requant(self, x: str, m: Any, e: Any, lo: int, hi: int, extra: Any = 0, bias: Any = 0, shape: tuple = ()) -> str:
        """``clamp(floor(((value + bias) * m + extra + 2**(e-1)) / 2**e), lo, hi)``, stored with offset -lo
        (uint8 when the range spans 256 values, else int32). ``m, e, extra, bias`` broadcast against the
        value (per-channel arrays pre-shaped by the caller)."""
        meta = self.meta[x]
        m, e, extra, bias = (_flat(a) for a in (m, e, extra, bias))
        c = _ints(extra) + (_ints(1) << np.maximum(e - 1, 0)) * (e > 0)
        bias = _ints(bias)
        two_e = _ints(1) << e
        t_lo, t_hi = meta.lo + bias, meta.hi + bias  # range of the value entering the multiply
        # the clamp of t that changes nothing: f(T1) <= lo and f(T2) >= hi (f monotone in t, direction sign(m))
        a = ((lo + 1) * two_e - c - 1)
        b = hi * two_e - c
        safe_m = np.where(m == 0, 1, m)
        fa, fb = _floordiv(a, safe_m), _floordiv(b, safe_m)
        ca, cb = -_floordiv(-a, safe_m), -_floordiv(-b, safe_m)
        big1, big2 = np.where(m > 0, fa, np.where(m < 0, fb, t_lo)), np.where(m > 0, cb, np.where(m < 0, ca, t_lo))
        t1, t2 = np.maximum(big1, t_lo), np.minimum(big2, t_hi)
        out = t1 > t2  # the whole input range saturates one way: any point of it will do
        pick = np.where(t_lo > big2, t_lo, t_hi)
        t1, t2 = np.where(out, pick, t1), np.where(out, pick, t2)
        span = hi - lo
        out_meta = Meta("uint8" if span <= 255 else "int32", -lo, lo, hi)
        for shift in (meta.offset, bias):  # clamp the stored value, or first move it to value + bias (one Add)
            s_lo, s_hi = t1 - bias + meta.offset, t2 - bias + meta.offset  # the clamp in stored units
            u_lo, u_hi = s_lo - meta.offset + shift, s_hi - meta.offset + shift  # after the move
            const = c - lo * two_e + (bias - shift) * m
            prods = [u_lo * m, u_hi * m]
            if not _fits(s_lo, s_hi, u_lo, u_hi, *prods, *(p + const for p in prods), const, two_e):
                continue
            y = self.cast(x, "int32")
            if np.any(s_lo > meta.lo + meta.offset) or np.any(s_hi < meta.hi + meta.offset):
                y = self.clamp(y, _shaped(s_lo, shape), _shaped(s_hi, shape), "int32")
            if np.any(shift != meta.offset):
                y = self.op("Add", [y, self.const(_shaped(shift - meta.offset, shape), "int32")])
            if not np.all(m == 1):
                y = self.op("Mul", [y, self.const(_shaped(m, shape), "int32")])
            if np.any(const != 0):
                y = self.op("Add", [y, self.const(_shaped(const, shape), "int32")])
            if np.any(e != 0):
                y = self.op("Div", [y, self.const(_shaped(two_e, shape), "int32")])
            y = self.op("Clip", [y, self.const(0, "int32"), self.const(span, "int32")], Meta("int32", -lo, lo, hi))
            return self.cast(y, out_meta.dtype, out_meta)
        self.int64_fallbacks.append(x)
        t = self.value(x, "int64")
        if np.any(bias != 0):
            t = self.op("Add", [t, self.const(_shaped(bias, shape))])
        v = self.op("Add", [self.op("Mul", [t, self.const(_shaped(m, shape))]), self.const(_shaped(c, shape))])
        y = self.floor_shift(v, _shaped(e, shape))
        y = self.op("Clip", [y, self.const(lo), self.const(hi)])
        y = self.op("Sub", [y, self.const(lo)], Meta("int64", -lo, lo, hi))
        return self.cast(y, out_meta.dtype, out_meta)

    def floor_shift(self, x: str, k: Any) -> str:
        """floor(x / 2**k) for int64 x with |x| < 2**62 (an offset makes the truncating Div a floor)."""
        k = np.asarray(k, dtype=np.int64)
        y = self.op("Div", [self.op("Add", [x, self.const(OFF64)]), self.const(np.left_shift(1, k))])
        return self.op("Sub", [y, self.const(OFF64 >> k)])

    def lut(self, x: str, table: np.ndarray, meta: Meta) -> str:
        """``table[stored x - min stored]`` with one Gather (the whole function of a narrow input)."""
        m = self.meta[x]
        idx = self.cast(x, "int32")
        first = m.lo + m.offset
        if first:
            idx = self.op("Sub", [idx, self.const(first, "int32")])
        return self.op("Gather", [self.const(table, meta.dtype), idx], meta, axis=0)


def _flat(a: Any) -> np.ndarray:
    arr = _ints(a)
    return arr.reshape(()) if arr.size == 1 else arr.reshape(-1)


def _floordiv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=object) // np.asarray(b, dtype=object)


def _shaped(a: Any, shape: tuple) -> np.ndarray:
    arr = np.asarray(a, dtype=np.int64)
    return arr.reshape(shape) if shape and arr.size > 1 else (arr.reshape(()) if arr.size == 1 else arr)
