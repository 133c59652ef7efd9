"""XNOR-popcount arithmetic for binarized linear layers (W1A1): a numpy reference and a TVM-compiled kernel.

With activations ``x ~ s_x * sign(x)`` (per-row scale) and weights ``W ~ alpha * sign(W)`` (per-output-channel
scale), a binarized linear layer is

    y[i, j] = s_x[i] * alpha[j] * (K - 2 * popcount(bits(x_i) XOR bits(w_j))) + bias[j]

because for +-1 vectors of length ``K`` the dot product is (#equal - #different) = ``K - 2 * #different``. Bits
are packed LSB first, 64 a word (:func:`pack_bits_u64`, the byte layout of :mod:`edgekit.quant.bivit.pack`
read as little-endian uint64). Padding bits are 0 in both operands, so they XOR to 0 and do not count.

This is the XNOR-Net formulation (Rastegari et al., ECCV 2016) applied to BiViT's binary layers (He et al.,
ICCV 2023). TVM is imported lazily, only by :func:`build_tvm_kernel`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from edgekit.backends import require
from edgekit.errors import UserInputError

__all__ = [
    "pack_bits_u64",
    "xnor_dot_ref",
    "binary_linear_ref",
    "layer_operands",
    "TvmXnorLinear",
    "build_tvm_kernel",
]


def pack_bits_u64(signs: np.ndarray) -> np.ndarray:
    """``(rows, K)`` with ``>= 0`` meaning +1 -> ``(rows, ceil(K / 64))`` uint64, bit ``b`` of word ``w`` = col
    ``64 w + b``."""
    if sys.byteorder != "little":  # pragma: no cover - the uint8 -> uint64 view assumes little endian
        raise UserInputError("pack_bits_u64 needs a little-endian machine")
    arr = np.asarray(signs)
    if arr.ndim != 2:
        raise UserInputError(f"pack_bits_u64: expected a 2-D array, got shape {arr.shape}")
    rows, k = arr.shape
    words = (k + 63) // 64
    packed = np.zeros((rows, words * 8), dtype=np.uint8)
    packed[:, : (k + 7) // 8] = np.packbits(arr >= 0, axis=1, bitorder="little")
    return packed.view(np.uint64)


def xnor_dot_ref(x_bits: np.ndarray, w_bits: np.ndarray, k: int) -> np.ndarray:
    """Integer +-1 dot products ``(M, N)`` from packed rows: ``K - 2 * popcount(x XOR w)``."""
    if x_bits.shape[1] != w_bits.shape[1]:
        raise UserInputError(f"xnor_dot_ref: word counts differ ({x_bits.shape[1]} vs {w_bits.shape[1]})")
    diff = np.bitwise_count(x_bits[:, None, :] ^ w_bits[None, :, :]).sum(axis=-1, dtype=np.int64)
    return (k - 2 * diff).astype(np.int32)


@dataclass
class XnorOperands:
    """The constant part of a binarized linear layer in XNOR form."""

    w_bits: np.ndarray  # (N, words) uint64
    alpha: np.ndarray  # (N,) float32
    bias: np.ndarray  # (N,) float32 (zeros when the layer has none)
    shift: np.ndarray  # (K,) float32 activation threshold (zeros when none)
    in_features: int


def layer_operands(layer) -> XnorOperands:
    """Read a :class:`~edgekit.quant.bivit.modules.BinaryLinear` with 1-bit activations into XNOR operands."""
    if getattr(layer, "act_bits", None) != 1:
        raise UserInputError(f"XNOR path needs a BinaryLinear with 1-bit activations, got {type(layer).__name__} "
                             f"(act_bits={getattr(layer, 'act_bits', None)})")
    with torch.no_grad():
        signs = layer.signs().cpu().numpy()
        n, k = signs.shape
        bias = layer.bias.cpu().numpy() if layer.bias is not None else np.zeros(n, np.float32)
        shift = layer.act_shift.cpu().numpy() if layer.act_shift is not None else np.zeros(k, np.float32)
        alpha = layer.alpha.cpu().numpy()
    return XnorOperands(pack_bits_u64(signs), alpha.astype(np.float32), bias.astype(np.float32),
                        shift.astype(np.float32), k)


def binary_linear_ref(x: np.ndarray, ops: XnorOperands) -> np.ndarray:
    """The numpy reference of a W1A1 BinaryLinear on ``(M, K)`` float inputs, through XNOR-popcount."""
    x = np.asarray(x, dtype=np.float32) - ops.shift
    scale = np.abs(x).mean(axis=1, keepdims=True)
    dot = xnor_dot_ref(pack_bits_u64(x), ops.w_bits, ops.in_features)
    return (dot.astype(np.float32) * scale * ops.alpha + ops.bias).astype(np.float32)  # the order torch uses


# ----------------------------------------------------------------------------------------------- TVM


def _target(tvm: Any):
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, "mtriple": codegen.llvm_get_system_triple()})


def _xnor_prim_func(m: int, n: int, words: int, k: int, tvm: Any):
    """TIR for ``y = (K - 2 * sum_w popcount(x[i, w] ^ wt[w, j])) * s[i] * alpha[j] + bias[j]``.

    ``wt`` is the packed weight transposed to (words, N) so that the vectorised ``j`` loop reads contiguously.
    """
    te = tvm.te
    X = te.placeholder((m, words), "uint64", name="X")
    WT = te.placeholder((words, n), "uint64", name="WT")
    S = te.placeholder((m,), "float32", name="S")
    A = te.placeholder((n,), "float32", name="A")
    B = te.placeholder((n,), "float32", name="B")
    r = te.reduce_axis((0, words), name="r")
    D = te.compute((m, n), lambda i, j: te.sum(te.popcount(X[i, r] ^ WT[r, j]).astype("int32"), axis=r), name="D")
    Y = te.compute(
        (m, n), lambda i, j: (k - 2 * D[i, j]).astype("float32") * S[i] * A[j] + B[j], name="Y"
    )
    return te.create_prim_func([X, WT, S, A, B, Y])


def _schedule(func: Any, n: int, tvm: Any, vec: int = 16):
    sch = tvm.s_tir.Schedule(func)
    d = sch.get_sblock("D")
    y = sch.get_sblock("Y")
    i, j, r = sch.get_loops(d)
    if n % vec == 0:
        jo, ji = sch.split(j, [None, vec])
        sch.reorder(i, jo, r, ji)
        sch.vectorize(ji)
    sch.parallel(i)
    yi, yj = sch.get_loops(y)
    sch.parallel(yi)
    if n % vec == 0:
        _, yji = sch.split(yj, [None, vec])
        sch.vectorize(yji)
    return sch.mod


class TvmXnorLinear:
    """A compiled W1A1 linear layer for a fixed number of rows ``m``: ``__call__(x_bits, scale) -> y``.

    Activation binarization + packing (``x -> bits, scale``) stays in numpy (:meth:`prepare`); the kernel does
    the XNOR-popcount GEMM and the scale/bias epilogue.
    """

    def __init__(self, ops: XnorOperands, m: int) -> None:
        tvm = require("tvm", "the TVM XNOR-popcount kernel")
        self.tvm, self.ops, self.m = tvm, ops, m
        n, words = ops.w_bits.shape
        self.n, self.words = n, words
        mod = _schedule(_xnor_prim_func(m, n, words, ops.in_features, tvm), n, tvm)
        self.lib = tvm.compile(mod, target=_target(tvm))
        self.fn = self.lib["main"]
        self.dev = tvm.cpu()
        t = tvm.runtime.tensor
        self.wt = t(np.ascontiguousarray(ops.w_bits.T), self.dev)
        self.alpha = t(ops.alpha, self.dev)
        self.bias = t(ops.bias, self.dev)
        self.out = t(np.zeros((m, n), np.float32), self.dev)

    def prepare(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32) - self.ops.shift
        return pack_bits_u64(x), np.abs(x).mean(axis=1).astype(np.float32)

    def run_packed(self, x_bits: Any, scale: Any) -> Any:
        """Run on device tensors (``to_device``); returns the output device tensor (reused between calls)."""
        self.fn(x_bits, self.wt, scale, self.alpha, self.bias, self.out)
        return self.out

    def to_device(self, x_bits: np.ndarray, scale: np.ndarray) -> tuple[Any, Any]:
        if x_bits.shape != (self.m, self.words):
            raise UserInputError(f"TvmXnorLinear: compiled for {self.m} rows x {self.words} words, got {x_bits.shape}")
        t = self.tvm.runtime.tensor
        return t(np.ascontiguousarray(x_bits), self.dev), t(scale, self.dev)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        xb, s = self.to_device(*self.prepare(x))
        return self.run_packed(xb, s).numpy().copy()


def build_tvm_kernel(layer, m: int) -> TvmXnorLinear:
    """Compile the XNOR-popcount kernel for a W1A1 BinaryLinear and ``m`` input rows."""
    return TvmXnorLinear(layer_operands(layer), m)


def build_tvm_dense_fp32(m: int, n: int, k: int) -> Callable:
    """A float32 dense layer ``y = x @ w.T + b`` compiled by TVM with the same simple schedule (a same-compiler
    baseline for the benchmark). Returns ``fn(x, w, b, out)`` over TVM tensors."""
    tvm = require("tvm", "the TVM fp32 baseline kernel")
    te = tvm.te
    X = te.placeholder((m, k), "float32", name="X")
    WT = te.placeholder((k, n), "float32", name="WT")
    B = te.placeholder((n,), "float32", name="B")
    r = te.reduce_axis((0, k), name="r")
    D = te.compute((m, n), lambda i, j: te.sum(X[i, r] * WT[r, j], axis=r), name="D")
    Y = te.compute((m, n), lambda i, j: D[i, j] + B[j], name="Y")
    mod = _schedule(te.create_prim_func([X, WT, B, Y]), n, tvm)
    return tvm.compile(mod, target=_target(tvm))["main"]
