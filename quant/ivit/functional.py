"""Integer-only kernels of I-ViT ("I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", Li & Gu, ICCV 2023): dyadic requantization, Shiftmax, ShiftGELU and I-LayerNorm.

Every kernel takes integer tensors -- ``torch`` int64 tensors or ``numpy`` int64 arrays, the same code runs
on both -- and returns ``(integer result, output scale)``. Only shifts, integer multiplies, adds, floor
divisions, comparisons and reductions are used, so a kernel gives the same bits in PyTorch, in the numpy
executor and (re-expressed op by op) in ONNX Runtime and TVM. Real numbers (scales, LayerNorm weights) are
used only to derive integer constants before inference (``dyadic``, ``layernorm_constants``).

Conventions: ``>>`` is an arithmetic (floor) shift, ``//`` a floor division, on int64. Where this module
deviates from the reference implementation it says so (search "deviation").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

INT32_MAX = 2**31 - 1
LOG2E_SHIFTS = "x + (x >> 1) - (x >> 4)"  # 1.0111b = 1.4375 ~ log2(e)
GELU_ALPHA = 1.702  # GELU(x) ~ x * sigmoid(1.702 x); folded into the sigmoid's input scale
ISQRT_STEPS = 6  # Newton steps unrolled in graphs: enough from a start within 2x for v < 2**62 (tested)
MAX_SHIFT = 62
SOFTMAX_SUM = 2**22  # Shiftmax row sums stay below this (when the scale allows), so 2**30 // sum keeps 8 bits
SOFTMAX_Q_MAX = 30  # Shiftmax clamps far below the row maximum (at 30 x0), where its exponential is 0
NORM_BITS = 15  # I-LayerNorm's normalised value: |z| <= 2**15 at scale sqrt(C) / 2**15


# ----------------------------------------------------------------------------------- array namespaces


class _NumpyOps:
    @staticmethod
    def rowmax(x):
        return np.max(x, axis=-1, keepdims=True)

    @staticmethod
    def rowsum(x):
        return np.sum(x, axis=-1, keepdims=True)

    @staticmethod
    def clamp(x, lo=None, hi=None):
        return np.clip(x, lo, hi)

    @staticmethod
    def where(c, a, b):
        return np.where(c, a, b)

    @staticmethod
    def const(v, like):
        return np.asarray(v, dtype=np.int64)

    @staticmethod
    def minimum(a, b):
        return np.minimum(a, b)


class _TorchOps:
    @staticmethod
    def rowmax(x):
        return torch.amax(x, dim=-1, keepdim=True)

    @staticmethod
    def rowsum(x):
        return torch.sum(x, dim=-1, keepdim=True)

    @staticmethod
    def clamp(x, lo=None, hi=None):
        return torch.clamp(x, lo, hi)

    @staticmethod
    def where(c, a, b):
        return torch.where(c, a, b)

    @staticmethod
    def const(v, like):
        if isinstance(v, torch.Tensor):
            return v.to(dtype=torch.int64, device=like.device)
        return torch.as_tensor(np.asarray(v, dtype=np.int64), device=like.device)

    @staticmethod
    def minimum(a, b):
        return torch.minimum(a, b)


def ops(x: Any):
    """The namespace for ``x`` (torch tensor or numpy array); the kernels are written once against it."""
    return _TorchOps if isinstance(x, torch.Tensor) else _NumpyOps


def _check_int(x: Any, what: str) -> None:
    dtype = x.dtype
    ok = (not dtype.is_floating_point and not dtype.is_complex) if isinstance(x, torch.Tensor) else np.issubdtype(dtype, np.integer)
    if not ok:
        raise TypeError(f"{what}: expected an integer tensor, got dtype {dtype}")


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


# ------------------------------------------------------------------------------------------- dyadic


def shift_cap(out_bits: int) -> int:
    """The largest right shift of a requantization to ``out_bits`` whose arithmetic fits int32 once its input
    is clamped to the range that can still reach the output (``(2**out_bits + 2) * 2**e < 2**31``): graphs
    then run it in int32 (deviation: the reference keeps 31-bit multipliers and int64 products; ``m`` keeps
    ``e + log2(scale)`` bits, plenty for the ``out_bits``-bit result)."""
    return 30 - out_bits


def dyadic(scale: Any, bits: int = 31, max_shift: int = MAX_SHIFT) -> tuple[np.ndarray, np.ndarray]:
    """``scale ~ m / 2**e`` with ``m`` a ``bits``-bit integer (the frexp mantissa in [0.5, 1) times 2**bits,
    rounded half up) and ``e = bits - exponent``. Works element-wise (per-channel scales); the sign of the
    scale is kept in ``m``. Returns int64 arrays (0-d for a scalar). ``e`` is capped at ``max_shift`` (at most
    62; ``m`` shifted down to match, rounded) so that ``x * m + 2**(e-1)`` stays in int64 (or int32, see
    :func:`shift_cap`)."""
    max_shift = min(int(max_shift), MAX_SHIFT)
    s = np.asarray(scale, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"dyadic: scale must be finite, got {scale}")
    mant, exp = np.frexp(s)
    m = np.floor(np.abs(mant) * 2.0**bits + 0.5).astype(np.int64)
    carry = m == 2**bits  # rounding reached 2**bits: renormalise
    m = np.where(carry, m // 2, m)
    exp = np.where(carry, exp + 1, exp).astype(np.int64)
    e = bits - exp
    if np.any((e < 1) & (m != 0)):
        raise ValueError(f"dyadic: scale {scale} is too large for a {bits}-bit multiplier with a right shift")
    over = np.maximum(e - max_shift, 0)
    m = (m + np.where(over > 0, (np.int64(1) << np.maximum(over - 1, 0)), 0)) >> over  # round half up
    e = e - over
    m = np.where(m == 0, 0, m)
    e = np.where(m == 0, 1, e)
    return (np.sign(s).astype(np.int64) * m), e


def dyadic_value(m: Any, e: Any) -> np.ndarray:
    return np.asarray(m, dtype=np.float64) / np.exp2(np.asarray(e, dtype=np.float64))


def requantize(x_int: Any, m: Any, e: Any, bits: int = 8, scale: Any = None, signed: bool = True):
    """``y = clamp((x * m + 2**(e-1)) >> e)`` on ``bits`` bits. ``m, e`` broadcast against ``x`` (per-channel
    pairs on the last axis, or pre-shaped). Returns ``(y, scale * m / 2**e)`` (the output scale implied by
    the dyadic pair when the input scale is given, else None)."""
    _check_int(x_int, "requantize")
    xp = ops(x_int)
    m_, e_ = xp.const(m, x_int), xp.const(e, x_int)
    half = (e_ * 0 + 1) << (e_ - 1)
    lo, hi = qrange(bits, signed)
    y = xp.clamp((x_int * m_ + half) >> e_, lo, hi)
    out_scale = None if scale is None else np.asarray(scale, dtype=np.float64) * dyadic_value(np.asarray(m), np.asarray(e))
    return y, out_scale


# --------------------------------------------------------------------------------------- shift-exp


def exp_x0(scale: float) -> int:
    """``x0 = floor(-1 / s)``: minus the number of integer steps in one unit of the (log2e-scaled) input."""
    return min(-1, math.floor(-1.0 / float(scale)))


def exp_shift(row_len: int, scale: float, n_max: int = 15, terms: int = 1, limit: int = INT32_MAX) -> int:
    """The exponent ``n`` of ShiftExp, as large as ``n_max`` while ``terms * row_len`` values of at most
    ``-x0 * 2**n`` still sum to at most ``limit`` (at least n = 0; deviation: the reference fixes n and clamps
    the sum, which loses the normalisation for long rows at fine input scales)."""
    unit = max(1, terms * row_len) * -exp_x0(scale)
    if unit > INT32_MAX // 2:
        raise ValueError(
            f"shift-exp: input scale {scale:.3g} is too fine for rows of {row_len} (the row sum would overflow int32)"
        )
    return max(0, min(n_max, (limit // unit).bit_length() - 1))


def shift_exp(x_int: Any, scale: float, n: int, q_max: int | None = None):
    """``e**(x s)`` for ``x <= 0`` with shifts only: ``x*log2(e) ~ x + x>>1 - x>>4``; ``x = q*x0 + r``;
    ``2**(r s) ~ 1 + r s / 2``; result ``((r - 2 x0) * 2**n) >> (q + 1)`` at scale ``s / 2**n``. ``x`` is
    clamped at ``q_max * x0`` (default ``n``, as in the reference); a larger ``q_max`` lets the tail decay to
    0 even when ``n`` is small."""
    xp = ops(x_int)
    x0 = exp_x0(scale)
    x = x_int + (x_int >> 1) - (x_int >> 4)
    x = xp.clamp(x, (n if q_max is None else max(n, q_max)) * x0, None)
    q = x // x0  # both <= 0 (x0 < 0): the quotient is >= 0, so floor == truncation
    r = x - q * x0
    exp = ((r - 2 * x0) << n) >> (q + 1)
    return exp, float(scale) / 2**n


def shiftmax(x_int: Any, scale: float, out_bits: int = 8, n: int | None = None):
    """Shiftmax over the last axis: k-bit probabilities at scale ``2**-(k-1)`` (a row sums to ~2**(k-1)).
    Deviation: the final shift rounds half up instead of flooring (with f = 2**30 // sum, flooring turns a
    uniform row of 64 into 1/128 each instead of 2/128)."""
    _check_int(x_int, "shiftmax")
    xp = ops(x_int)
    if n is None:
        n = exp_shift(int(x_int.shape[-1]), scale, limit=SOFTMAX_SUM)
    x = x_int - xp.rowmax(x_int)
    exp, _ = shift_exp(x, scale, n, SOFTMAX_Q_MAX)  # deviation: the tail decays to 0 (n is small, see SOFTMAX_SUM)
    total = xp.clamp(xp.rowsum(exp), 1, INT32_MAX)
    factor = (1 << 30) // total  # exp * factor <= 2**30: the normalisation stays in int32 (deviation: 2**31 - 1)
    out = (exp * factor + (1 << (30 - out_bits))) >> (31 - out_bits)  # deviation: rounded, not floored
    return out, 2.0 ** -(out_bits - 1)


def shiftgelu(x_int: Any, scale: float, out_bits: int = 8, n: int | None = None):
    """ShiftGELU: ``x * sigmoid(1.702 x)`` with the sigmoid as ``e**(z-M) / (e**(z-M) + e**-M)`` and an
    integer division; returns ``(x * sigma_int, s * 2**-(k-1))`` (k = ``out_bits`` of the sigmoid).
    1.702 is folded into the sigmoid's input scale (as in the reference code; the paper uses shifts).
    Deviation: M = max(x, 0) per element instead of the row maximum, which keeps every element's sigmoid
    at full precision (the identity holds for any M >= max(z, 0))."""
    _check_int(x_int, "shiftgelu")
    xp = ops(x_int)
    s_sig = float(scale) * GELU_ALPHA
    if n is None:
        n = exp_shift(1, s_sig, terms=2)
    big = xp.clamp(x_int, 0, None)
    e1, _ = shift_exp(x_int - big, s_sig, n)
    e2, _ = shift_exp(-big, s_sig, n)
    factor = INT32_MAX // xp.clamp(e1 + e2, 1, None)
    sigma = (e1 * factor + (1 << (31 - out_bits))) >> (31 - out_bits + 1)
    return x_int * sigma, float(scale) * 2.0 ** -(out_bits - 1)


# ---------------------------------------------------------------------------------------- LayerNorm


def isqrt(v: Any, steps: int | None = None):
    """floor(sqrt(v)) (at least 1) by Newton's iteration ``k <- (k + v // k) // 2`` from ``k0 = 2**(b//2+1)``,
    b = floor(log2 v), which is within 2x above the root. ``steps=None`` iterates to convergence (a Python
    loop: the executor); an integer unrolls that many steps with ``k <- min(k, k_new)``, which is a no-op
    once converged (graphs; ISQRT_STEPS is enough for v < 2**62, tested against math.isqrt)."""
    xp = ops(v)
    y, k = v, xp.const(2, v) + 0 * v
    for s in (32, 16, 8, 4, 2, 1):
        c = y >= (1 << s)
        y = xp.where(c, y >> s, y)
        if s > 1:
            k = xp.where(c, k << (s // 2), k)
    k = xp.clamp(k, 1, None)
    if steps is None:
        while True:
            k_new = xp.clamp((k + v // k) >> 1, 1, None)
            done = k_new >= k
            k = xp.minimum(k, k_new)
            if bool(done.all()):
                return k
    for _ in range(steps):
        k = xp.clamp(xp.minimum(k, (k + v // k) >> 1), 1, None)
    return k


def isqrt_steps(v_max: int) -> int:
    """Newton steps from :func:`isqrt`'s start that reach ``floor(sqrt(v))`` for every ``0 < v <= v_max``.

    With ``r = sqrt(v)`` and ``k = r (1 + eps)``, the real step gives ``r (1 + eps**2 / (2 (1 + eps)))``; the
    integer step ``(k + v // k) >> 1`` is at most that and at least ``floor(r)``, and the start has
    ``eps <= 1``. Once ``r * eps_n < 1`` the iterate is ``floor(r)`` or ``floor(r) + 1``, and one more step
    (with the ``min``) lands on ``floor(r)``: ``n + 1`` steps (0.5 kept as margin). Graphs with a known
    variance bound unroll this many instead of ISQRT_STEPS (the same result: both converge)."""
    r, eps, n = math.sqrt(max(int(v_max), 1)), 1.0, 0
    while r * eps > 0.5:
        eps, n = eps * eps / (2 * (1 + eps)), n + 1
    return min(n + 1, ISQRT_STEPS) if v_max < 2**62 else ISQRT_STEPS


def layernorm_constants(weight: Any, bias: Any, channels: int, out_scale: float, out_bits: int = 8):
    """Per-channel ``(m, e, b)`` folding LayerNorm's gamma, beta and the normalised scale sqrt(C)/2**15 into
    the output requantization: ``out = clamp((z * m + b + 2**(e-1)) >> e)``, ``e <= shift_cap(out_bits)`` so
    that graphs run it in int32 (|z| <= 2**15)."""
    w = np.asarray(weight, dtype=np.float64).reshape(-1)
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    m, e = dyadic(w * math.sqrt(channels) / 2**NORM_BITS / out_scale, max_shift=shift_cap(out_bits))
    m, e = np.array(m, ndmin=1), np.array(e, ndmin=1)
    big = np.zeros_like(m)
    for _ in range(64):  # a bias far outside the output range: drop multiplier bits until it fits int32
        big = np.round(b / out_scale * np.exp2(e.astype(np.float64)))
        bad = np.abs(big) >= 2.0**29
        if not bad.any():
            break
        m, e = np.where(bad, (m + 1) >> 1, m), np.where(bad, e - 1, e)
    if np.any(e < 1):
        raise ValueError("layernorm_constants: LayerNorm bias too large for the output scale")
    return m.astype(np.int64), e.astype(np.int64), big.astype(np.int64)


def layernorm_normalize(x_int: Any, steps: int | None = ISQRT_STEPS):
    """``(x - mu) / std`` on integers: ``mu = round(mean)``, ``V = sum((x-mu)**2)`` (int64), ``k = isqrt(V)``,
    ``f = 2**29 // k``, ``z = ((x - mu) * f) >> 14`` at scale ``sqrt(C) / 2**15``. Since ``|x - mu| <= k``,
    ``|(x - mu) * f| <= 2**29`` and ``|z| <= 2**15``: everything but V fits int32 (deviation: the reference
    uses ``f = (2**31-1) // k`` and int64 products; 15 bits of the normalised value remain)."""
    xp = ops(x_int)
    c = int(x_int.shape[-1])
    mu = (xp.rowsum(x_int) + c // 2) // c
    y = x_int - mu
    k = isqrt(xp.rowsum(y * y), steps)
    factor = (1 << (NORM_BITS + 14)) // k
    return (y * factor) >> 14, math.sqrt(c) / 2**NORM_BITS


def int_layernorm(x_int: Any, scale: float, weight: Any, bias: Any, out_bits: int = 8,
                  out_scale: float | None = None, steps: int | None = ISQRT_STEPS):
    """I-LayerNorm over the last axis; gamma and beta are folded into the output requantization.
    The input scale cancels (LayerNorm is scale invariant; eps is dropped). ``out_scale`` defaults to one
    that covers ``|gamma| * 3 + |beta|``."""
    _check_int(x_int, "int_layernorm")
    c = int(x_int.shape[-1])
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    if out_scale is None:
        out_scale = float(np.max(np.abs(w) * 3 + np.abs(b))) / qrange(out_bits)[1]
    m, e, big = layernorm_constants(w, b, c, out_scale, out_bits)
    y, _ = layernorm_normalize(x_int, steps)
    return layernorm_output(y, m, e, big, out_bits), out_scale


def layernorm_output(y: Any, m: Any, e: Any, big: Any, out_bits: int):
    xp = ops(y)
    e_ = xp.const(e, y)
    half = (e_ * 0 + 1) << (e_ - 1)
    lo, hi = qrange(out_bits)
    return xp.clamp((y * xp.const(m, y) + xp.const(big, y) + half) >> e_, lo, hi)


# ------------------------------------------------------------------------------ linear and matmul


def quantize_weight(weight: torch.Tensor, bits: int = 8, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel weights: ``s_w = max|W| / 127``, ``W_int = round(W / s_w)`` (float64)."""
    w = weight.detach().double()
    dims = [d for d in range(w.dim()) if d != axis]
    amax = w.abs().amax(dim=dims, keepdim=True) if dims else w.abs()
    s = torch.clamp(amax / qrange(bits)[1], min=1e-12)
    return torch.round(w / s), s.reshape(-1)


def int_linear(x_int: Any, w_int: Any, b_int: Any = None):
    """``x @ W.T + b`` with int8 operands and (at most) 32-bit accumulation; returns the int64 accumulator."""
    _check_int(x_int, "int_linear")
    acc = x_int @ ops(x_int).const(w_int, x_int).T
    return acc if b_int is None else acc + ops(x_int).const(b_int, x_int)


def int_matmul(a_int: Any, b_int: Any):
    """``a @ b`` of two integer activations; the int64 result holds the int32 accumulator."""
    _check_int(a_int, "int_matmul")
    _check_int(b_int, "int_matmul")
    return a_int @ b_int


def int_conv2d(x_int: Any, w_int: Any, b_int: Any = None, stride=(1, 1), padding=(0, 0), groups: int = 1):
    """2-d convolution of integer NCHW input with integer OIHW weights, accumulated exactly.

    torch: a float64 convolution of integer values (exact: every partial sum is an integer below 2**53);
    numpy: im2col and an int64 matmul per group (the executor)."""
    _check_int(x_int, "int_conv2d")
    if isinstance(x_int, torch.Tensor):
        w = torch.as_tensor(w_int).to(torch.float64)
        b = None if b_int is None else torch.as_tensor(b_int).to(torch.float64)
        y = torch.nn.functional.conv2d(x_int.double(), w, b, tuple(stride), tuple(padding), 1, groups)
        return y.round().long()
    cols, (ho, wo) = im2col(x_int, tuple(w_int.shape[2:]), stride, padding)  # B, C, kh*kw, Ho*Wo
    bsz, c = cols.shape[:2]
    o = w_int.shape[0]
    cols = cols.reshape(bsz, groups, (c // groups) * cols.shape[2], ho * wo)
    w = np.asarray(w_int, dtype=np.int64).reshape(groups, o // groups, -1)
    y = np.matmul(w[None], cols).reshape(bsz, o, ho, wo)
    return y if b_int is None else y + np.asarray(b_int, dtype=np.int64).reshape(1, o, 1, 1)


def im2col(x: np.ndarray, kernel, stride, padding):
    """(B, C, H, W) -> (B, C, kh*kw, Ho*Wo) patches, zero padded (numpy)."""
    kh, kw = kernel
    (sh, sw), (ph, pw) = stride, padding
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (x.shape[2] - kh) // sh + 1
    wo = (x.shape[3] - kw) // sw + 1
    cols = [x[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] for i in range(kh) for j in range(kw)]
    return np.stack(cols, axis=2).reshape(x.shape[0], x.shape[1], kh * kw, ho * wo), (ho, wo)
