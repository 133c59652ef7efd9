"""ONNX export of the I-ViT integer form ("I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", Li & Gu, ICCV 2023) with integer ops only between the input quantizer and the output dequantizer.

The graph is written directly with ``onnx.helper`` (deterministic names, opset 17), lowering each integer
module op by op: MatMulInteger (int8/uint8 x int8 -> int32) for Linear, MatMul and Conv (im2col with Slice/
Concat; TVM's ONNX importer has no ConvInteger), int64 Mul/Add/Sub/Div/Max/Min/Clip/Where/Gather/ReduceMax/
ReduceSum for requantization, Shiftmax, ShiftGELU and I-LayerNorm. Floor semantics: ONNX integer Div
truncates toward zero, so every division here has non-negative operands -- a floor shift of a signed value
adds 2**62 first (``(v + 2**62) / 2**k - 2**(62-k)``) and variable powers of two come from a Gather table
(BitShift exists for unsigned types only). Shapes are specialised to the example input (batch included).
Activations between modules are stored in their narrowest integer type (int8, uint8, int16, int32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from edgekit.backends import require
from edgekit.errors import UserInputError
from edgekit.quant.ivit import executor
from edgekit.quant.ivit import functional as IF
from edgekit.quant.ivit import modules as M

OPSET = 17
OFF = 2**62
_NP = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
       "float32": np.float32, "bool": np.bool_}


class Builder:
    """A tiny deterministic ONNX graph builder (constants deduplicated, names t0, t1, ...)."""

    def __init__(self) -> None:
        onnx = require("onnx", "I-ViT ONNX export")
        self.h, self.T = onnx.helper, onnx.TensorProto
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.dtype: dict[str, str] = {}
        self._consts: dict[tuple, str] = {}
        self._n = 0

    def name(self, hint: str = "t") -> str:
        self._n += 1
        return f"{hint}{self._n}"

    def const(self, value: Any, dtype: str = "int64") -> str:
        arr = np.ascontiguousarray(np.asarray(value, dtype=_NP[dtype]))
        key = (dtype, arr.shape, arr.tobytes())
        if key not in self._consts:
            from onnx import numpy_helper

            name = self.name("c")
            self.inits.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
            self.dtype[name] = dtype
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], dtype: str | None = None, n_out: int = 1, **attrs: Any):
        outs = [self.name() for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op_type, inputs, outs, **attrs))
        for o in outs:
            self.dtype[o] = dtype or self.dtype.get(inputs[0], "int64")
        return outs[0] if n_out == 1 else outs

    # integer helpers -----------------------------------------------------------------------------
    def cast(self, x: str, dtype: str) -> str:
        if self.dtype.get(x) == dtype:
            return x
        return self.op("Cast", [x], dtype, to=getattr(self.T, "FLOAT" if dtype == "float32" else dtype.upper()))

    def i64(self, x: str) -> str:
        return self.cast(x, "int64")

    def add(self, a, b):
        return self.op("Add", [a, b])

    def sub(self, a, b):
        return self.op("Sub", [a, b])

    def mul(self, a, b):
        return self.op("Mul", [a, b])

    def div(self, a, b):  # operands are non-negative wherever this is used: truncation == floor
        return self.op("Div", [a, b])

    def clip(self, x: str, lo: int | None, hi: int | None) -> str:
        return self.op("Clip", [x, self.const(lo) if lo is not None else "", self.const(hi) if hi is not None else ""])

    def floor_shift(self, x: str, k: Any) -> str:
        """floor(x / 2**k) for signed int64 x (|x| < 2**62), k a constant (scalar or per-channel array)."""
        k = np.asarray(k, dtype=np.int64)
        return self.sub(self.div(self.add(x, self.const(OFF)), self.const(np.left_shift(1, k))),
                        self.const(OFF >> k))

    def requant(self, x: str, m: Any, e: Any, lo: int, hi: int, extra: Any = 0) -> str:
        """clamp((x*m + extra + 2**(e-1)) >> e): the dyadic requantization (m, e, extra may be per-channel)."""
        e = np.asarray(e, dtype=np.int64)
        half = np.left_shift(np.int64(1), e - 1) + np.asarray(extra, dtype=np.int64)
        y = self.add(self.mul(x, self.const(m)), self.const(half))
        return self.clip(self.floor_shift(y, e), lo, hi)


def _shift_exp(b: Builder, x: str, scale: float, n: int) -> str:
    x0 = IF.exp_x0(scale)
    t = b.sub(b.add(x, b.floor_shift(x, 1)), b.floor_shift(x, 4))
    t = b.op("Max", [t, b.const(n * x0)])
    q = b.div(t, b.const(x0))  # both negative: truncation == floor
    r = b.sub(t, b.mul(q, b.const(x0)))
    a = b.mul(b.sub(r, b.const(2 * x0)), b.const(2**n))
    pow2 = b.op("Gather", [b.const([2 ** (i + 1) for i in range(n + 1)]), q], "int64", axis=0)
    return b.div(a, pow2)


# --------------------------------------------------------------------------------- module lowerings

Lowering = Callable[[Builder, nn.Module, list[Any], list[Any], Any], str]
LOWERINGS: dict[type, Lowering] = {}


def lowering(*types: type):
    def deco(fn: Lowering) -> Lowering:
        for t in types:
            LOWERINGS[t] = fn
        return fn

    return deco


def _store(b: Builder, x: str, m: nn.Module) -> str:
    return b.cast(x, M.storage_dtype(m.out_lo, m.out_hi))


@lowering(M.IntQuantize)
def _quant(b, m, ins, vals, out):
    y = b.op("Round", [b.op("Mul", [ins[0], b.const(np.float32(m.inv), "float32")], "float32")], "float32")
    y = b.op("Clip", [y, b.const(np.float32(m.out_lo), "float32"), b.const(np.float32(m.out_hi), "float32")], "float32")
    return b.cast(y, M.storage_dtype(m.out_lo, m.out_hi))


@lowering(M.IntDequantize)
def _dequant(b, m, ins, vals, out):
    return b.op("Mul", [b.cast(ins[0], "float32"), b.const(np.float32(m.scale.item()), "float32")], "float32")


@lowering(M.IntConst)
def _const(b, m, ins, vals, out):
    return b.const(m.params_np()["value"], M.storage_dtype(m.out_lo, m.out_hi))


@lowering(M.IntRequant)
def _requant(b, m, ins, vals, out):
    p = m.params_np()
    return _store(b, b.requant(b.i64(ins[0]), p["m"], p["e"], m.out_lo, m.out_hi), m)


def _int8_operand(b: Builder, x: str) -> str:
    return x if b.dtype[x] in ("int8", "uint8") else b.cast(x, "int8")


@lowering(M.IntLinear)
def _linear(b, m, ins, vals, out):
    p = m.params_np()
    acc = b.op("MatMulInteger", [_int8_operand(b, ins[0]), b.const(p["w"].T, "int8")], "int32")
    acc = b.add(b.i64(acc), b.const(p["b"]))
    return _store(b, b.requant(acc, p["m"], p["e"], m.out_lo, m.out_hi), m)


@lowering(M.IntConv2d)
def _conv(b, m, ins, vals, out):
    p = m.params_np()
    x = _int8_operand(b, ins[0])
    bsz, c, h, w = vals[0].shape
    o, cg, kh, kw = p["w"].shape
    (sh, sw), (ph, pw), g = m.stride, m.padding, m.groups
    ho, wo = out.shape[2], out.shape[3]
    if g == 1 and (sh, sw) == (kh, kw) and (ph, pw) == (0, 0) and h % kh == 0 and w % kw == 0:  # patchify
        t = b.op("Reshape", [x, b.const([bsz, c, ho, kh, wo, kw])])
        t = b.op("Transpose", [t], perm=[0, 2, 4, 1, 3, 5])
        t = b.op("Reshape", [t, b.const([bsz, ho * wo, c * kh * kw])])
        acc = b.op("MatMulInteger", [t, b.const(p["w"].reshape(o, -1).T, "int8")], "int32")
        acc = b.op("Transpose", [acc], perm=[0, 2, 1])
    else:  # im2col: one strided Slice per kernel tap
        if ph or pw:
            x = b.op("Pad", [x, b.const([0, 0, ph, pw, 0, 0, ph, pw])])
        taps = []
        for i in range(kh):
            for j in range(kw):
                s = b.op("Slice", [x, b.const([i, j]), b.const([i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1]),
                                   b.const([2, 3]), b.const([sh, sw])])
                taps.append(b.op("Unsqueeze", [s, b.const([2])]))
        t = taps[0] if len(taps) == 1 else b.op("Concat", taps, axis=2)
        t = b.op("Reshape", [t, b.const([bsz, g, cg * kh * kw, ho * wo])])
        t = b.op("Transpose", [t], perm=[0, 1, 3, 2])
        wmat = p["w"].reshape(g, o // g, cg * kh * kw).transpose(0, 2, 1)
        acc = b.op("MatMulInteger", [t, b.const(wmat, "int8")], "int32")
        acc = b.op("Transpose", [acc], perm=[0, 1, 3, 2])
    acc = b.op("Reshape", [acc, b.const([bsz, o, ho, wo])])
    acc = b.add(b.i64(acc), b.const(p["b"].reshape(o, 1, 1)))
    return _store(b, b.requant(acc, p["m"], p["e"], m.out_lo, m.out_hi), m)


@lowering(M.IntMatMul)
def _matmul(b, m, ins, vals, out):
    p = m.params_np()
    acc = b.op("MatMulInteger", [_int8_operand(b, ins[0]), _int8_operand(b, ins[1])], "int32")
    return _store(b, b.requant(b.i64(acc), p["m"], p["e"], m.out_lo, m.out_hi), m)


@lowering(M.IntSoftmax)
def _softmax(b, m, ins, vals, out):
    x = b.i64(ins[0])
    n = IF.exp_shift(int(vals[0].shape[-1]), m.s_in)
    x = b.sub(x, b.op("ReduceMax", [x], axes=[-1], keepdims=1))
    e = _shift_exp(b, x, m.s_in, n)
    total = b.clip(b.op("ReduceSum", [e, b.const([-1])], keepdims=1), 1, IF.INT32_MAX)
    y = b.add(b.mul(e, b.div(b.const(IF.INT32_MAX), total)), b.const(1 << (31 - m.bits)))
    y = b.div(y, b.const(2 ** (31 - m.bits + 1)))
    return _store(b, y, m)


@lowering(M.IntGELU)
def _gelu(b, m, ins, vals, out):
    p = m.params_np()
    x = b.i64(ins[0])
    s_sig = m.s_in * IF.GELU_ALPHA
    n = IF.exp_shift(1, s_sig, terms=2)
    big = b.clip(x, 0, None)
    e1 = _shift_exp(b, b.sub(x, big), s_sig, n)
    e2 = _shift_exp(b, b.sub(b.const(0), big), s_sig, n)
    f = b.div(b.const(IF.INT32_MAX), b.clip(b.add(e1, e2), 1, None))
    sigma = b.div(b.add(b.mul(e1, f), b.const(1 << (31 - m.sigmoid_bits))), b.const(2 ** (31 - m.sigmoid_bits + 1)))
    return _store(b, b.requant(b.mul(x, sigma), p["m"], p["e"], m.out_lo, m.out_hi), m)


@lowering(M.IntLayerNorm)
def _layernorm(b, m, ins, vals, out):
    p = m.params_np()
    x = b.i64(ins[0])
    c = int(vals[0].shape[-1])
    k_off = OFF // c  # floor((s + c//2) / c) with a non-negative dividend
    s = b.op("ReduceSum", [x, b.const([-1])], keepdims=1)
    mu = b.sub(b.div(b.add(s, b.const(c // 2 + c * k_off)), b.const(c)), b.const(k_off))
    y = b.sub(x, mu)
    v = b.op("ReduceSum", [b.mul(y, y), b.const([-1])], keepdims=1)
    rest, k = v, b.const(2)
    for sh in (32, 16, 8, 4, 2, 1):  # k0 = 2**(floor(log2 v)//2 + 1), within 2x above sqrt(v)
        cond = b.op("GreaterOrEqual", [rest, b.const(1 << sh)], "bool")
        rest = b.op("Where", [cond, b.div(rest, b.const(1 << sh)), rest], "int64")
        if sh > 1:
            k = b.op("Where", [cond, b.mul(k, b.const(1 << (sh // 2))), k], "int64")
    k = b.clip(k, 1, None)
    for _ in range(IF.ISQRT_STEPS):
        k = b.clip(b.op("Min", [k, b.div(b.add(k, b.div(v, k)), b.const(2))]), 1, None)
    yn = b.floor_shift(b.mul(y, b.div(b.const(IF.INT32_MAX), k)), 1)
    return _store(b, b.requant(yn, p["m"], p["e"], m.out_lo, m.out_hi, extra=p["b"]), m)


@lowering(M.IntAdd)
def _add(b, m, ins, vals, out):
    p = m.params_np()
    lo, hi = IF.qrange(32)
    ya = b.requant(b.i64(ins[0]), p["ma"], p["ea"], lo, hi)
    yb = b.requant(b.i64(ins[1]), p["mb"], p["eb"], lo, hi)
    return _store(b, b.clip(b.add(ya, yb), m.out_lo, m.out_hi), m)


@lowering(M.IntMean)
def _mean(b, m, ins, vals, out):
    p = m.params_np()
    s = b.op("ReduceSum", [b.i64(ins[0]), b.const(list(m.dims))], keepdims=int(m.keepdim))
    return _store(b, b.requant(s, p["m"], p["e"], m.out_lo, m.out_hi), m)


@lowering(M.IntReLU)
def _relu(b, m, ins, vals, out):
    return b.cast(b.clip(b.i64(ins[0]), 0, None), b.dtype[ins[0]])


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
        widest = M.storage_dtype(min(int(np.iinfo(_NP[b.dtype[i]]).min) for i in items),
                                 max(int(np.iinfo(_NP[b.dtype[i]]).max) for i in items))
        dim = kwargs.get("dim", vals[1] if len(vals) > 1 else 0)
        return b.op("Concat", [b.cast(i, widest) for i in items], axis=int(dim) % out.ndim)
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
            b.dtype[node.name] = "float32"
            names[node.name] = node.name
        elif node.op == "call_module":
            mod = mods[node.target]
            fn = LOWERINGS.get(type(mod))
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
    out_shape = list(env[node.args[0].name].shape)
    graph = b.h.make_graph(
        b.nodes, "ivit",
        [b.h.make_tensor_value_info(graph_in, b.T.FLOAT, list(example.shape))],
        [b.h.make_tensor_value_info("output", b.T.FLOAT, out_shape)],
        b.inits,
    )
    proto = b.h.make_model(graph, opset_imports=[b.h.make_opsetid("", OPSET)], producer_name="edgekit-ivit", ir_version=8)
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

