"""A small deterministic ONNX graph builder for the I-ViT integer graph ("I-ViT: Integer-only Quantization for
Efficient Vision Transformer Inference", Li & Gu, ICCV 2023), with the integer helpers the lowerings share.

Every integer tensor carries its storage (:class:`Meta`: ONNX dtype, an ``offset`` with ``stored = value +
offset``, and the value range). int8 activations are stored as uint8 with offset 128, so that
``MatMulInteger`` runs ONNX Runtime's fast u8 x s8 kernel with zero point 128 (the s8 x s8 path is ~30x
slower on x86); probabilities as uint8 with offset 0; wider tensors as int32.

Requantization ``clamp(floor((t * m + c) / 2**e), lo, hi)`` runs in int32 (:meth:`Builder.requant`): the input
is first clamped to a range outside which the result only saturates (exact, the map is monotone), then ``t *
m + c - lo * 2**e`` fits int32 when ``e <= shift_cap(bits)`` (the model's dyadic pairs are chosen so), the
truncating ``Div`` by ``2**e`` followed by ``Clip(0, hi - lo)`` equals the floor (negative quotients clip to
0 either way), and the result is stored with offset ``-lo``. Where the scale is at most 1 the input clamp can
be made tight, so that no output ``Clip`` is needed; per-channel constants that are all equal are written as
scalars. Where a bound does not fit int32 the same arithmetic runs in int64 (counted in
``Builder.int64_fallbacks``). Each form is checked against an exact reference in tests/test_ivit_builder.py.
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
        self._wide: dict[str, str] = {}  # narrow Cast output -> the int32 tensor it was cast from (same values)
        self._unclipped: dict[str, tuple[str, int, int]] = {}  # Clip(0, span) output -> (its input, input range)

    def name(self, hint: str = "t") -> str:
        self._n += 1
        return f"{hint}{self._n}"

    def prune(self) -> None:
        """Drop the nodes and initializers nothing downstream of them reads (a narrowing Cast whose int32
        source served every consumer, say). The last node writes the graph output. Call once, at the end."""
        needed: set[str] = set()
        keep = []
        for i, n in enumerate(reversed(self.nodes)):
            if i == 0 or any(o in needed for o in n.output):
                keep.append(n)
                needed.update(x for x in n.input if x)
        self.nodes = keep[::-1]
        self.inits = [t for t in self.inits if t.name in needed]
        self._consts = {k: v for k, v in self._consts.items() if v in needed}

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
        """``x`` as ``dtype`` (same stored values). Casting back to int32 a tensor that was narrowed from int32
        returns that int32 tensor instead of a second Cast."""
        m = meta or Meta(dtype, self.meta[x].offset, self.meta[x].lo, self.meta[x].hi)
        if self.dtype(x) == dtype:
            return x
        if dtype == "int32" and x in self._wide:
            return self._wide[x]
        to = getattr(self.T, "FLOAT" if dtype == "float32" else dtype.upper())
        y = self.op("Cast", [x], m, to=to)
        if self.dtype(x) == "int32" and dtype == "uint8" and m.lo is not None and 0 <= m.lo + m.offset <= m.hi + m.offset <= 255:
            self._wide[y] = x  # an exact narrowing: the int32 source holds the same values
        return y

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
        """Clamp with scalar (Clip) or per-channel (Max / Min) bounds; ``None`` for a side that needs none."""
        lo, hi = (None if v is None else np.asarray(v) for v in (lo, hi))
        if lo is not None and hi is not None and lo.size == 1 and hi.size == 1:
            return self.op("Clip", [x, self.const(lo.reshape(()), dtype), self.const(hi.reshape(()), dtype)])
        if lo is not None:
            x = self.op("Max", [x, self.const(lo, dtype)])
        return x if hi is None else self.op("Min", [x, self.const(hi, dtype)])

    # requantization ----------------------------------------------------------------------------
    def requant(self, x: str, m: Any, e: Any, lo: int, hi: int, extra: Any = 0, bias: Any = 0, shape: tuple = ()) -> str:
        """``clamp(floor(((value + bias) * m + extra + 2**(e-1)) / 2**e), lo, hi)``, stored with offset -lo
        (uint8 when the range spans 256 values, else int32). ``m, e, extra, bias`` broadcast against the
        value (per-channel arrays pre-shaped by the caller). Of the exact int32 forms (see :func:`_clamps`)
        the one with the fewest / cheapest clamps is written."""
        meta = self.meta[x]
        m, e, extra, bias = (_flat(a) for a in (m, e, extra, bias))
        c = _ints(extra) + (_ints(1) << np.maximum(e - 1, 0)) * (e > 0)
        bias = _ints(bias)
        two_e = _ints(1) << e
        span = hi - lo
        out_meta = Meta("uint8" if span <= 255 else "int32", -lo, lo, hi)
        s_range = (meta.lo + meta.offset, meta.hi + meta.offset)  # stored values
        if np.all(m == two_e) and np.ndim(bias) == 0 and np.ndim(c) == 0 and np.ndim(e) == 0:
            y = self._requant_identity(x, int(bias) + int(c) // int(two_e), lo, hi, out_meta)
            if y is not None:
                return y
        best = None
        for t1, t2, final_clip in _clamps(m, c, two_e, lo, hi, meta.lo + bias, meta.hi + bias):
            for shift in (meta.offset, bias):  # clamp the stored value, or first move it to value + bias (one Add)
                s_lo, s_hi = t1 - bias + meta.offset, t2 - bias + meta.offset  # the clamp in stored units
                if final_clip and np.size(s_lo) > 1 and np.ndim(shift) == 0:  # one scalar Clip for every channel
                    s_lo, s_hi = np.min(s_lo), np.max(s_hi)
                need = (np.any(s_lo > s_range[0]), np.any(s_hi < s_range[1]))
                u_lo = np.where(need[0], s_lo, s_range[0]) - meta.offset + shift  # after the move
                u_hi = np.where(need[1], s_hi, s_range[1]) - meta.offset + shift
                const = c - lo * two_e + (bias - shift) * m
                prods = [u_lo * m, u_hi * m]
                if not _fits(s_lo, s_hi, u_lo, u_hi, *prods, *(p + const for p in prods), const, two_e):
                    continue
                scalar = np.size(_shaped(s_lo, shape)) == 1 and np.size(_shaped(s_hi, shape)) == 1
                clamp_cost = (1.0 if scalar and all(need) else 1.6 * sum(need)) if any(need) else 0.0
                cost = clamp_cost + final_clip + bool(np.any(shift != meta.offset))
                if best is None or cost < best[0]:
                    best = (cost, s_lo if need[0] else None, s_hi if need[1] else None, shift, const, final_clip,
                            [p + const for p in prods])
        if best is not None:
            _, s_lo, s_hi, shift, const, final_clip, ends = best
            y = self.cast(x, "int32")
            if s_lo is not None or s_hi is not None:
                y = self.clamp(y, None if s_lo is None else _shaped(s_lo, shape),
                               None if s_hi is None else _shaped(s_hi, shape), "int32")
            if np.any(shift != meta.offset):
                y = self.op("Add", [y, self.const(_shaped(shift - meta.offset, shape), "int32")])
            if not np.all(m == 1):
                y = self.op("Mul", [y, self.const(_shaped(m, shape), "int32")])
            if np.any(const != 0):
                y = self.op("Add", [y, self.const(_shaped(const, shape), "int32")])
            if np.any(e != 0):
                y = self.op("Div", [y, self.const(_shaped(two_e, shape), "int32")])
            if final_clip:
                q = [np.sign(v) * (np.abs(v) // two_e) for v in ends]  # the truncating Div of both ends
                pre = y
                y = self.op("Clip", [y, self.const(0, "int32"), self.const(span, "int32")])
                self._unclipped[y] = (pre, int(np.min(np.minimum(*q))), int(np.max(np.maximum(*q))))
            self.meta[y] = Meta("int32", -lo, lo, hi)
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

    def _requant_identity(self, x: str, k: int, lo: int, hi: int, out_meta: Meta) -> str | None:
        """A requantization of scale exactly 1: ``clamp(value + k, lo, hi)``, one Clip of the stored value (an
        int32 result keeps the input's storage offset, shifted by ``k``; a uint8 one gets offset ``-lo``).
        None where a bound does not fit int32."""
        meta = self.meta[x]
        shift = meta.offset - k  # stored = value + k + shift
        a, b = max(lo, meta.lo + k), min(hi, meta.hi + k)
        if a > b:  # the whole input range saturates one way
            a = b = lo if meta.hi + k < lo else hi
        if not _fits(a + shift, b + shift, -lo, meta.lo + meta.offset, meta.hi + meta.offset):
            return None
        y = self.cast(x, "int32")
        if a > meta.lo + k or b < meta.hi + k:
            y = self.op("Clip", [y, self.const(a + shift, "int32"), self.const(b + shift, "int32")])
        self.meta[y] = Meta("int32", shift, a, b)
        if out_meta.dtype == "int32":
            return y
        if shift != -lo:
            y = self.op("Add", [y, self.const(-lo - shift, "int32")], Meta("int32", -lo, a, b))
        return self.cast(y, out_meta.dtype, Meta(out_meta.dtype, -lo, a, b))

    def floor_shift(self, x: str, k: Any) -> str:
        """floor(x / 2**k) for int64 x with |x| < 2**62 (an offset makes the truncating Div a floor)."""
        k = np.asarray(k, dtype=np.int64)
        y = self.op("Div", [self.op("Add", [x, self.const(OFF64)]), self.const(np.left_shift(1, k))])
        return self.op("Sub", [y, self.const(OFF64 >> k)])

    def lut(self, x: str, table: np.ndarray, meta: Meta, shape: tuple) -> str:
        """``table[stored x - min stored]`` (the whole function of a narrow input) as one ``GatherElements`` on
        the flattened tensor of static ``shape``: ONNX Runtime's ``Gather`` copies element by element (4-5x
        slower here). A small positive first index pads the table instead of a ``Sub`` on every element.
        When ``x`` is a requantization's ``Clip(0, span)`` (see :meth:`requant`), the table is read at the
        Clip's input instead, extended with the saturated entries (negative indices count from the end)."""
        m = self.meta[x]
        idx = self.cast(x, "int32")
        first = m.lo + m.offset
        table = np.asarray(table)
        if idx in self._unclipped and first == 0 and len(table) == m.hi - m.lo + 1:
            pre, d_lo, d_hi = self._unclipped[idx]
            pos = table[np.clip(np.arange(max(d_hi, 0) + 1), 0, len(table) - 1)]
            neg = np.full(max(0, -d_lo), table[0], dtype=table.dtype)
            if len(pos) + len(neg) <= 4 * 65536:
                idx, table = pre, np.concatenate([pos, neg])
        if 0 < first <= 4 * len(table):
            table, first = np.concatenate([np.full(first, table[0], dtype=table.dtype), table]), 0
        if first:
            idx = self.op("Sub", [idx, self.const(first, "int32")])
        flat = self.op("Reshape", [idx, self.const([-1])])
        y = self.op("GatherElements", [self.const(table, meta.dtype), flat], meta, axis=0)
        return self.op("Reshape", [y, self.const(list(shape))])


def lowest_clamp(m: Any, e: Any, lo: int, hi: int, t_lo: int, t_hi: int, extra: Any = 0) -> int:
    """The lowest input clamp any form of :meth:`Builder.requant` may apply to values in ``[t_lo, t_hi]``
    (``t_lo`` when some form clamps nothing below): values under it only ever reach the clamp."""
    m, e, extra = (_flat(a) for a in (m, e, extra))
    c = _ints(extra) + (_ints(1) << np.maximum(e - 1, 0)) * (e > 0)
    if np.all(m == (_ints(1) << e)):  # the scale-1 form clamps elsewhere: claim nothing
        return int(t_lo)
    return int(min(np.min(t1) for t1, _, _ in _clamps(m, c, _ints(1) << e, lo, hi, _ints(t_lo), _ints(t_hi))))


def _clamps(m, c, two_e, lo: int, hi: int, t_lo, t_hi):
    """Clamps ``[t1, t2]`` of ``t`` (per channel) under which ``clamp(f(t), lo, hi)``, ``f(t) = floor((t m +
    c) / 2**e)``, is unchanged, each with whether the output still needs its ``Clip(lo, hi)``:

    * tight (no output Clip): when every ``|m| <= 2**e`` (a scale <= 1), ``f`` moves by at most 1 per step
      of ``t``, so the first and last ``t`` with ``f(t)`` in ``[lo, hi]`` give exactly ``lo`` and ``hi``;
      clamping ``t`` to them saturates as the output clamp would, and ``t m + c - lo 2**e`` is then
      non-negative, so a truncating ``Div`` is the floor;
    * loose (with the output Clip): the widest clamp that changes nothing (``f(t1) <= lo``, ``f(t2) >= hi``
      for ``m > 0``), or any wider one (a single scalar Clip for all channels) that still fits int32."""
    safe_m = np.where(m == 0, 1, m)
    if np.all(m != 0) and np.all(np.abs(m) <= two_e):
        pos = m > 0
        low = np.where(pos, lo * two_e - c, c - (hi + 1) * two_e + 1)  # t |m| >= low
        high = np.where(pos, (hi + 1) * two_e - 1 - c, c - lo * two_e)  # t |m| <= high
        am = np.abs(safe_m)
        t1, t2 = np.maximum(-_floordiv(-low, am), t_lo), np.minimum(_floordiv(high, am), t_hi)
        if np.all(t1 <= t2):
            yield t1, t2, False
    a = ((lo + 1) * two_e - c - 1)
    b = hi * two_e - c
    fa, fb = _floordiv(a, safe_m), _floordiv(b, safe_m)
    ca, cb = -_floordiv(-a, safe_m), -_floordiv(-b, safe_m)
    big1, big2 = np.where(m > 0, fa, np.where(m < 0, fb, t_lo)), np.where(m > 0, cb, np.where(m < 0, ca, t_lo))
    t1, t2 = np.maximum(big1, t_lo), np.minimum(big2, t_hi)
    out = t1 > t2  # the whole input range saturates one way: any point of it will do
    pick = np.where(t_lo > big2, t_lo, t_hi)
    yield np.where(out, pick, t1), np.where(out, pick, t2), True


def _flat(a: Any) -> np.ndarray:
    arr = _ints(a)
    return arr.reshape(()) if arr.size == 1 else arr.reshape(-1)


def _floordiv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=object) // np.asarray(b, dtype=object)


def _shaped(a: Any, shape: tuple) -> np.ndarray:
    """``a`` for broadcasting against a tensor of the full shape: per-channel arrays reshaped to ``shape``,
    and a scalar where every channel has the same value (ONNX Runtime's scalar-operand loops run 2x faster
    than its per-channel broadcast)."""
    arr = np.asarray(a, dtype=np.int64)
    if arr.size > 1 and np.all(arr == arr.flat[0]):
        return arr.reshape(-1)[:1].reshape(())
    return arr.reshape(shape) if shape and arr.size > 1 else (arr.reshape(()) if arr.size == 1 else arr)
