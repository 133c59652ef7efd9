"""ONNX export of the I-ViT integer form ("I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", Li & Gu, ICCV 2023) with integer ops only between the input quantizer and the output dequantizer.

The graph is written directly with ``onnx.helper`` (deterministic names, opset 17), lowering each integer
module op by op, fast on ONNX Runtime and bit-exact with the model (see :mod:`.onnx_builder` for storage
and the int32 requantization):

* Linear, MatMul and Conv: ``MatMulInteger`` on uint8 activations with zero point 128 (the u8 x s8 kernel;
  convolutions as patchify / im2col, TVM's ONNX importer has no ConvInteger), then one int32 requantization.
* Shiftmax: ``x - rowmax`` (int32), the shift-exponential as a table of the row's possible values (one
  ``GatherElements``), an int32 row sum, one integer division per row, the normalisation in int32.
* ShiftGELU: its input is int8, so the whole function (requantization included) is a 256-entry table, read
  straight from the int32 result of the producer's requantization.
* I-LayerNorm: mean and centring in int32 on the stored values, the variance in int64, Newton's integer
  square root on the rows only (start from one comparison against the powers of 4, as many steps as the
  variance bound needs), the normalised value and its requantization in int32.
* Residual add: each branch's dyadic rescale (a table for an 8-bit branch) and the sum in int32.

Shapes are specialised to the example input (batch included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from edgekit.registry import KeyedRegistry
from edgekit.backends import require
from edgekit.errors import UserInputError
from edgekit.quant.ivit import executor
from edgekit.quant.ivit import functional as IF
from edgekit.quant.ivit import modules as M
from edgekit.quant.ivit.onnx_builder import Builder, Meta, lowest_clamp

OPSET = 17

# --------------------------------------------------------------------------------- module lowerings

Lowering = Callable[[Builder, nn.Module, list[Any], list[Any], Any], str]
LOWERINGS: KeyedRegistry[Lowering] = KeyedRegistry("I-ViT ONNX lowering")  # by exact module type


def lowering(*types: type):
    def deco(fn: Lowering) -> Lowering:
        for t in types:
            LOWERINGS.add(t, fn, replace=True)
        return fn

    return deco


@lowering(M.IntQuantize)
def _quant(b, m, ins, vals, out):
    y = b.op("Round", [b.op("Mul", [ins[0], b.const(np.float32(m.inv), "float32")], "float32")], "float32")
    y = b.op("Clip", [y, b.const(np.float32(m.out_lo), "float32"), b.const(np.float32(m.out_hi), "float32")], "float32")
    y = b.op("Sub", [y, b.const(np.float32(m.out_lo), "float32")], "float32")  # exact: integers below 2**24
    meta = Meta("uint8" if m.out_hi - m.out_lo <= 255 else "int32", -m.out_lo, m.out_lo, m.out_hi)
    return b.cast(y, meta.dtype, meta)


@lowering(M.IntDequantize)
def _dequant(b, m, ins, vals, out):
    return b.op("Mul", [b.cast(b.value(ins[0]), "float32"), b.const(np.float32(m.scale.item()), "float32")], "float32")


@lowering(M.IntConst)
def _const(b, m, ins, vals, out):
    v = m.params_np()["value"]
    name = b.const(v, "int32")
    b.meta[name] = Meta("int32", 0, int(v.min()), int(v.max()))
    return name


@lowering(M.IntRequant)
def _requant(b, m, ins, vals, out):
    p = m.params_np()
    return b.requant(ins[0], p["m"], p["e"], m.out_lo, m.out_hi, shape=(-1,))  # per channel: a layer scale


def _matmul_integer(b: Builder, a: str, w: str, w_range: tuple[int, int], k: int, b_zp: int | None = None) -> str:
    """int32 ``a @ w`` of an 8-bit activation ``a`` (uint8 + zero point) and ``w`` (int8 weights or uint8 +
    ``b_zp``); the result's range from the operands' ranges and the inner dimension ``k``."""
    ua, za = b.to_u8(a)
    ma = b.meta[a]
    inputs = [ua, w, b.const(za, "uint8") if za or b_zp else ""]
    if b_zp:
        inputs.append(b.const(b_zp, "uint8"))
    bound = k * max(abs(ma.lo), abs(ma.hi)) * max(abs(w_range[0]), abs(w_range[1]))
    return b.op("MatMulInteger", [i for i in inputs if i is not None], Meta("int32", 0, -bound, bound))


@lowering(M.IntLinear)
def _linear(b, m, ins, vals, out):
    p = m.params_np()
    w = p["w"].T
    acc = _matmul_integer(b, ins[0], b.const(w, "int8"), (int(w.min()), int(w.max())), w.shape[0])
    return b.requant(acc, p["m"], p["e"], m.out_lo, m.out_hi, bias=p["b"], shape=(-1,))


@lowering(M.IntConv2d)
def _conv(b, m, ins, vals, out):
    p = m.params_np()
    x = ins[0]
    xm = b.meta[x]
    bsz, c, h, w = vals[0].shape
    o, cg, kh, kw = p["w"].shape
    (sh, sw), (ph, pw), g = m.stride, m.padding, m.groups
    ho, wo = out.shape[2], out.shape[3]
    ux, zx = b.to_u8(x)
    if g == 1 and (sh, sw) == (kh, kw) and (ph, pw) == (0, 0) and h % kh == 0 and w % kw == 0:  # patchify
        t = b.op("Reshape", [ux, b.const([bsz, c, ho, kh, wo, kw])])
        t = b.op("Transpose", [t], perm=[0, 2, 4, 1, 3, 5])
        t = b.op("Reshape", [t, b.const([bsz, ho * wo, c * kh * kw])])
        wmat = p["w"].reshape(o, -1).T
        acc = _matmul_integer(b, t, b.const(wmat, "int8"), (int(wmat.min()), int(wmat.max())), wmat.shape[0])
        y = b.requant(acc, p["m"], p["e"], m.out_lo, m.out_hi, bias=p["b"], shape=(-1,))  # B, HW, O
        return b.op("Reshape", [b.op("Transpose", [y], perm=[0, 2, 1]), b.const([bsz, o, ho, wo])])
    if ph or pw:  # pad with the zero point: the padded value is 0
        ux = b.op("Pad", [ux, b.const([0, 0, ph, pw, 0, 0, ph, pw]), b.const(zx, "uint8")])
    taps = []
    for i in range(kh):
        for j in range(kw):
            s = b.op("Slice", [ux, b.const([i, j]), b.const([i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1]),
                               b.const([2, 3]), b.const([sh, sw])])
            taps.append(b.op("Unsqueeze", [s, b.const([2])]))
    t = taps[0] if len(taps) == 1 else b.op("Concat", taps, axis=2)
    t = b.op("Reshape", [t, b.const([bsz, g, cg * kh * kw, ho * wo])])
    t = b.op("Transpose", [t], perm=[0, 1, 3, 2])
    wmat = p["w"].reshape(g, o // g, cg * kh * kw).transpose(0, 2, 1)
    b.meta[t] = Meta("uint8", zx, xm.lo, xm.hi)
    acc = _matmul_integer(b, t, b.const(wmat, "int8"), (int(wmat.min()), int(wmat.max())), cg * kh * kw)
    acc = b.op("Transpose", [acc], perm=[0, 1, 3, 2])
    acc = b.op("Reshape", [acc, b.const([bsz, o, ho, wo])])
    return b.requant(acc, p["m"], p["e"], m.out_lo, m.out_hi, bias=p["b"], shape=(-1, 1, 1))


@lowering(M.IntMatMul)
def _matmul(b, m, ins, vals, out):
    p = m.params_np()
    ub, zb = b.to_u8(ins[1])
    mb = b.meta[ins[1]]
    acc = _matmul_integer(b, ins[0], ub, (mb.lo, mb.hi), int(vals[1].shape[-2]), b_zp=zb)
    return b.requant(acc, p["m"], p["e"], m.out_lo, m.out_hi)


@lowering(M.IntSoftmax)
def _softmax(b, m, ins, vals, out):
    x = b.cast(ins[0], "int32")  # the storage offset cancels in x - rowmax
    xm = b.meta[ins[0]]
    n = IF.exp_shift(int(vals[0].shape[-1]), m.s_in, limit=IF.SOFTMAX_SUM)
    u = b.op("Sub", [b.op("ReduceMax", [x], axes=[-1], keepdims=1), x], Meta("int32", 0, 0, xm.hi - xm.lo))
    table, _ = IF.shift_exp(-np.arange(xm.hi - xm.lo + 1, dtype=np.int64), m.s_in, n, IF.SOFTMAX_Q_MAX)
    last = int(np.flatnonzero(table != table[-1])[-1]) + 1 if np.any(table != table[-1]) else 0
    if last < len(table) - 1:  # beyond ``last`` the shift-exponential is constant: clamp there
        u = b.op("Min", [u, b.const(last, "int32")], Meta("int32", 0, 0, last))
        table = table[: last + 1]
    e = b.lut(u, table, Meta("int32", 0, int(table.min()), int(table.max())), vals[0].shape)
    total = b.op("ReduceSum", [e, b.const([-1])], keepdims=1)  # <= 2**30 by the choice of n
    f = b.op("Div", [b.const(1 << 30, "int32"), total])  # per row
    y = b.op("Add", [b.op("Mul", [e, f]), b.const(1 << (30 - m.bits), "int32")])  # e * f <= 2**30
    y = b.op("Div", [y, b.const(1 << (31 - m.bits), "int32")], Meta("int32", 0, m.out_lo, m.out_hi))
    return b.cast(y, "uint8")


@lowering(M.IntGELU)
def _gelu(b, m, ins, vals, out):
    xm = b.meta[ins[0]]
    if xm.hi - xm.lo > 65535:
        raise UserInputError(f"I-ViT ONNX export: GELU input range [{xm.lo}, {xm.hi}] is too wide for a table")
    table = executor.run_module(m, [np.arange(xm.lo, xm.hi + 1, dtype=np.int64)]) - m.out_lo
    meta = Meta("uint8" if m.out_hi - m.out_lo <= 255 else "int32", -m.out_lo, m.out_lo, m.out_hi)
    return b.lut(ins[0], table, meta, vals[0].shape)


@lowering(M.IntLayerNorm)
def _layernorm(b, m, ins, vals, out):
    p = m.params_np()
    x = b.cast(ins[0], "int32")  # stored values: the offset cancels in x - mu (mu of the stored values)
    xm = b.meta[ins[0]]
    c = int(vals[0].shape[-1])
    s_lo, s_hi = xm.lo + xm.offset, xm.hi + xm.offset
    s = b.op("ReduceSum", [x, b.const([-1])], keepdims=1)  # |s| < c * 2**17
    k_off = max(0, -s_lo) + 1 if s_lo < 0 else 0  # floor((s + c//2) / c) from a non-negative dividend
    mu = b.op("Div", [b.op("Add", [s, b.const(c // 2 + c * k_off, "int32")]), b.const(c, "int32")])
    if k_off:
        mu = b.op("Sub", [mu, b.const(k_off, "int32")])
    y = b.op("Sub", [x, mu])
    v = b.op("ReduceSumSquare", [b.cast(y, "int64")], "int64", axes=[-1], keepdims=1)
    k = _isqrt(b, v, c * (s_hi - s_lo) ** 2)  # |x - mu| <= hi - lo: V <= c (hi - lo)**2
    f = b.cast(b.op("Div", [b.const(1 << (IF.NORM_BITS + 14)), k]), "int32")  # 2**29 // k, per row
    z = b.op("Mul", [y, f])  # |y| <= k, so |y * f| <= 2**29
    # z = floor(y f / 2**14) stored with offset K: a truncating Div of y f + K 2**14, which is the floor for
    # every z >= -K; below -K (a quotient <= 0) the requantization only ever clamps, at or above stored 0.
    # K as small as that allows keeps the stored values small enough to requantize without moving them first
    top = 1 << IF.NORM_BITS
    k_z = min(top, max(0, -lowest_clamp(p["m"], p["e"], m.out_lo, m.out_hi, -top, top, p["b"])))
    z = b.op("Div", [b.op("Add", [z, b.const(k_z << 14, "int32")]), b.const(1 << 14, "int32")],
             Meta("int32", k_z, -top, top))
    return b.requant(z, p["m"], p["e"], m.out_lo, m.out_hi, extra=p["b"], shape=(-1,))


def _isqrt(b: Builder, v: str, v_max: int) -> str:
    """``floor(sqrt(v))`` (at least 1) of the int64 row variances, equal to :func:`functional.isqrt`'s (both
    converge): the start ``2**(floor(log2 v)//2 + 1)`` is ``2**(j+1)`` for the largest ``4**j <= v`` (one
    comparison against every power of 4 up to ``v_max``, a Where, a ReduceMax), then
    :func:`functional.isqrt_steps` Newton steps; only the last needs the ``min`` (before it the iterate can
    only step between ``floor(sqrt v)`` and ``floor(sqrt v) + 1``, which the next step undoes). ``v`` is raised
    to at least 1 first: the result is the same (1), and no step can reach 0."""
    v = b.op("Max", [v, b.const(1)])
    powers = np.arange((max(v_max, 1).bit_length() - 1) // 2 + 1)
    ge = b.op("GreaterOrEqual", [v, b.const(np.left_shift(1, 2 * powers))], "bool")
    k = b.op("Where", [ge, b.const(np.left_shift(1, powers + 1)), b.const(0)], "int64")
    k = b.op("ReduceMax", [k], axes=[-1], keepdims=1)
    steps = IF.isqrt_steps(v_max)
    for i in range(steps):
        k_new = b.op("Div", [b.op("Add", [k, b.op("Div", [v, k])]), b.const(2)])
        k = b.op("Min", [k, k_new]) if i == steps - 1 else k_new
    return k


@lowering(M.IntAdd)
def _add(b, m, ins, vals, out):
    p = m.params_np()
    plans, offset, top = [], 0, 0
    for x, mm, ee in ((ins[0], int(p["ma"]), int(p["ea"])), (ins[1], int(p["mb"]), int(p["eb"]))):
        xm = b.meta[x]
        if mm == 1 << ee:  # the sum keeps this input's grid: its stored value as it is
            if max(abs(xm.lo + xm.offset), abs(xm.hi + xm.offset)) >= 2**30:
                return _add_int64(b, m, ins, p)
            plans.append((x, 1, 0, None))
            offset += xm.offset
            top += xm.hi + xm.offset
            continue
        half = 1 << ee >> 1
        lo, hi = sorted((mm * xm.lo + half, mm * xm.hi + half))
        shift = max(0, -(lo >> ee))  # floor(v / 2**e) + shift >= 0: the truncating Div is a floor
        const = half - mm * xm.offset + (shift << ee)
        prods = (mm * (xm.lo + xm.offset), mm * (xm.hi + xm.offset))
        plans.append((x, mm, ee, const))
        offset += shift
        top += (hi >> ee) + shift
        if max(abs(t) for t in prods) >= 2**31 or max(abs(t + const) for t in prods) >= 2**31:
            return _add_int64(b, m, ins, p)
    if top + abs(m.out_lo) >= 2**31:
        return _add_int64(b, m, ins, p)
    terms = []
    for (x, mm, ee, const), v in zip(plans, vals):
        xm = b.meta[x]
        if const is None:
            terms.append(b.cast(x, "int32"))
            continue
        if xm.hi - xm.lo <= 255:  # an 8-bit branch: its rescale as a table (one GatherElements, not 3 passes)
            stored = np.arange(xm.lo + xm.offset, xm.hi + xm.offset + 1, dtype=np.int64)
            table = (stored * mm + const) >> ee
            terms.append(b.lut(x, table, Meta("int32", 0, int(table.min()), int(table.max())), v.shape))
            continue
        t = b.cast(x, "int32")
        t = t if mm == 1 else b.op("Mul", [t, b.const(mm, "int32")])
        t = t if const == 0 else b.op("Add", [t, b.const(const, "int32")])
        terms.append(t if ee == 0 else b.op("Div", [t, b.const(1 << ee, "int32")]))
    y = b.op("Add", terms)
    return b.op("Clip", [y, b.const(m.out_lo + offset, "int32"), b.const(m.out_hi + offset, "int32")],
                Meta("int32", offset, m.out_lo, m.out_hi))


def _add_int64(b: Builder, m: nn.Module, ins: list[str], p: dict[str, np.ndarray]) -> str:
    b.int64_fallbacks.append(ins[0])
    lo32, hi32 = IF.qrange(32)
    terms = []
    for x, mm, ee in ((ins[0], p["ma"], p["ea"]), (ins[1], p["mb"], p["eb"])):
        v = b.op("Add", [b.op("Mul", [b.value(x, "int64"), b.const(mm)]), b.const(1 << int(ee) >> 1)])
        terms.append(b.op("Clip", [b.floor_shift(v, ee), b.const(lo32), b.const(hi32)]))
    y = b.op("Clip", [b.op("Add", terms), b.const(m.out_lo), b.const(m.out_hi)], Meta("int64", 0, m.out_lo, m.out_hi))
    return b.cast(y, "int32")


@lowering(M.IntMean)
def _mean(b, m, ins, vals, out):
    p = m.params_np()
    xm = b.meta[ins[0]]
    s = b.op("ReduceSum", [b.cast(ins[0], "int32"), b.const(list(m.dims))], keepdims=int(m.keepdim))
    b.meta[s] = Meta("int32", xm.offset * m.count, xm.lo * m.count, xm.hi * m.count)  # the offset sums too
    return b.requant(s, p["m"], p["e"], m.out_lo, m.out_hi)


@lowering(M.IntReLU)
def _relu(b, m, ins, vals, out):
    xm = b.meta[ins[0]]
    zero = b.const(xm.offset, xm.dtype)  # value >= 0 <=> stored >= offset
    return b.op("Max", [ins[0], zero], Meta(xm.dtype, xm.offset, 0, xm.hi))


# ------------------------------------------------------------------------------------- shape ops


def _index_op(b: Builder, x: str, idx: Any, in_shape: tuple, out_shape: tuple) -> str:
    idx = idx if isinstance(idx, tuple) else (idx,)
    starts, ends, axes, steps = [], [], [], []
    axis = 0
    for it in idx:
        if it is Ellipsis:
            axis = len(in_shape) - (len(idx) - 1 - idx.index(Ellipsis)) - sum(1 for i in idx[idx.index(Ellipsis) + 1 :] if i is None)
            continue
        if it is None:
            continue
        if isinstance(it, int):
            i = it % in_shape[axis]
            starts.append(i), ends.append(i + 1), axes.append(axis), steps.append(1)
        elif isinstance(it, slice):
            st, en, sp = it.indices(in_shape[axis])
            starts.append(st), ends.append(en), axes.append(axis), steps.append(sp)
        else:
            raise UserInputError(f"I-ViT ONNX export: unsupported index {it!r}")
        axis += 1
    if starts:
        x = b.op("Slice", [x, b.const(starts), b.const(ends), b.const(axes), b.const(steps)])
    return b.op("Reshape", [x, b.const(list(out_shape))])


def _shape_node(b: Builder, node: fx.Node, args: list[Any], kwargs: dict, vals: list[Any], out: Any) -> Any:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    x = args[0]
    if isinstance(x, (list, tuple)) and name == "getitem":  # picking one result of unbind / chunk / split
        return x[vals[1]]
    if name in ("cat", "concat"):
        items = list(x)
        metas = [b.meta[i] for i in items]
        dim = int(kwargs.get("dim", vals[1] if len(vals) > 1 else 0)) % out.ndim
        lo, hi = min(mt.lo for mt in metas), max(mt.hi for mt in metas)
        if all((mt.dtype, mt.offset) == (metas[0].dtype, metas[0].offset) for mt in metas):
            return b.op("Concat", items, Meta(metas[0].dtype, metas[0].offset, lo, hi), axis=dim)
        return b.op("Concat", [b.value(i) for i in items], Meta("int32", 0, lo, hi), axis=dim)
    if name in ("contiguous", "clone"):
        return x
    if name in ("permute", "transpose", "t"):
        nd = vals[0].ndim
        if name == "permute":
            perm = list(vals[1]) if len(vals) == 2 and isinstance(vals[1], (tuple, list)) else list(vals[1:])
        else:
            a, c = (vals[1], vals[2]) if name == "transpose" else (0, 1)
            perm = list(range(nd))
            perm[a % nd], perm[c % nd] = perm[c % nd], perm[a % nd]
        return b.op("Transpose", [x], perm=[int(p) % nd for p in perm])
    if name == "getitem":
        return _index_op(b, x, vals[1], vals[0].shape, out.shape)
    if name in ("expand", "expand_as", "repeat"):
        if name == "repeat":
            return b.op("Tile", [x, b.const(list(vals[1:]))])
        return b.op("Expand", [x, b.const(list(out.shape))])
    if name in ("unbind", "chunk", "split"):
        dim = kwargs.get("dim", vals[2] if name != "unbind" and len(vals) > 2 else (vals[1] if name == "unbind" and len(vals) > 1 else 0))
        dim = int(dim) % vals[0].ndim
        sizes = [o.shape[dim] if name != "unbind" else 1 for o in out]
        parts = b.op("Split", [x, b.const(sizes)], n_out=len(out), axis=dim)
        parts = [parts] if isinstance(parts, str) else parts
        return [b.op("Reshape", [p, b.const(list(o.shape))]) for p, o in zip(parts, out)]
    if name in ("reshape", "view", "flatten", "unsqueeze", "squeeze", "unflatten"):
        return b.op("Reshape", [x, b.const(list(out.shape))])
    raise UserInputError(f"I-ViT ONNX export: no ONNX form for {node.format_node()}")


# ------------------------------------------------------------------------------------------ driver


def build(model: fx.GraphModule, example: torch.Tensor, opset: int = OPSET):
    """Return the integer ONNX ModelProto of a frozen I-ViT model, specialised to ``example``'s shape."""
    if opset < OPSET:
        raise UserInputError(f"I-ViT ONNX export: opset {opset}; accepted: >= {OPSET}")
    onnx = require("onnx", "I-ViT ONNX export")
    _, env = executor.run(model, example, record=True)
    mods = dict(model.named_modules())
    b = Builder()
    names: dict[str, Any] = {}
    graph_in = graph_out = None
    for node in model.graph.nodes:
        out = env.get(node.name)
        vals = [env[a.name] if isinstance(a, fx.Node) else a for a in node.args]

        def nm(a: Any) -> Any:
            return fx.node.map_arg(a, lambda n: names.get(n.name, env[n.name]))

        if node.op == "placeholder":
            graph_in = node.name
            b.meta[node.name] = Meta("float32")
            names[node.name] = node.name
        elif node.op == "call_module":
            mod = mods[node.target]
            fn = LOWERINGS.lookup(type(mod), mro=False)
            if fn is None:
                raise UserInputError(f"I-ViT ONNX export: no lowering for {type(mod).__name__} ({node.target})")
            names[node.name] = fn(b, mod, list(nm(node.args)), vals, out)
        elif node.op in ("call_function", "call_method"):
            is_tensor = isinstance(out, np.ndarray) or (isinstance(out, (tuple, list)) and out and isinstance(out[0], np.ndarray))
            if not is_tensor:
                continue  # shape arithmetic: its value is a constant of the specialised graph
            names[node.name] = _shape_node(b, node, list(nm(node.args)), nm(dict(node.kwargs)), vals, out)
        elif node.op == "output":
            graph_out = names[node.args[0].name]
    if graph_out is None or graph_in is None:
        raise UserInputError("I-ViT ONNX export: the model must have one input and one output tensor")
    b.nodes.append(b.h.make_node("Identity", [graph_out], ["output"]))
    b.prune()
    out_shape = list(env[node.args[0].name].shape)
    graph = b.h.make_graph(
        b.nodes, "ivit",
        [b.h.make_tensor_value_info(graph_in, b.T.FLOAT, list(example.shape))],
        [b.h.make_tensor_value_info("output", b.T.FLOAT, out_shape)],
        b.inits,
    )
    proto = b.h.make_model(graph, opset_imports=[b.h.make_opsetid("", OPSET)], producer_name="edgekit-ivit", ir_version=8)
    b.h.set_model_props(proto, {"int64_fallbacks": str(len(b.int64_fallbacks))})
    onnx.checker.check_model(proto)
    return proto


def export(model: fx.GraphModule, example: torch.Tensor, path: str | Path, opset: int = OPSET) -> Path:
    """Write the integer ONNX graph to ``path`` (atomically)."""
    import os
    import tempfile

    proto = build(model, example, opset)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(proto.SerializeToString())
    os.replace(tmp, path)
    return path


def run_onnxruntime(proto: Any, x: torch.Tensor | np.ndarray, threads: int = 2) -> np.ndarray:
    ort = require("onnxruntime", "I-ViT ONNX Runtime check")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, dtype=np.float32)})[0]

