"""I-ViT integer kernels: dyadic pairs, requantization, isqrt, Shiftmax, ShiftGELU, I-LayerNorm.

Tolerances: approximations are compared with the float op within a stated number of output steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgekit.quant.ivit import functional as IF


@pytest.mark.parametrize("scale", [0.5, 1e-3, 3.7e-7, 0.999999, 1 / 3, 12.5e-5])
def test_dyadic_matches_frexp(scale):
    m, e = IF.dyadic(scale)
    mant, exp = math.frexp(scale)
    assert int(m) == math.floor(mant * 2**31 + 0.5) or int(m) == 2**30  # rounding carry renormalises
    assert int(e) == 31 - exp or int(m) == 2**30
    assert abs(int(m) / 2 ** int(e) - scale) <= scale * 2**-30


def test_dyadic_per_channel_sign_and_cap():
    m, e = IF.dyadic(np.array([0.25, -0.25, 1e-30]))
    assert m[0] == -m[1] and m[0] > 0 and e.max() <= IF.MAX_SHIFT


def test_requantize_rounds_half_up_and_clamps():
    x = np.array([-300, -3, -1, 0, 1, 3, 5, 300], dtype=np.int64)
    y, s = IF.requantize(x, 1, 1, bits=8, scale=1.0)  # x / 2, half up
    assert y.tolist() == [-128, -1, 0, 0, 1, 2, 3, 127] and s == 0.5
    yt, _ = IF.requantize(torch.from_numpy(x), 1, 1, bits=8)
    assert yt.tolist() == y.tolist()


def test_isqrt_converges_exactly():
    rng = np.random.default_rng(0)
    v = np.concatenate([np.arange(0, 70000), rng.integers(0, 2**62, 20000), 2 ** np.arange(62), 2 ** np.arange(1, 62) - 1])
    v = v.astype(np.int64)
    ref = np.array([max(1, math.isqrt(int(a))) for a in v])
    assert np.array_equal(IF.isqrt(v), ref)  # to convergence
    assert np.array_equal(IF.isqrt(v, steps=IF.ISQRT_STEPS), ref)  # the unrolled count used in graphs suffices
    assert np.array_equal(IF.isqrt(torch.from_numpy(v), steps=IF.ISQRT_STEPS).numpy(), ref)


def test_shiftmax_rows_sum_to_about_2_pow_k_and_track_softmax():
    rng = np.random.default_rng(1)
    x = rng.integers(-4000, 4000, (16, 65)).astype(np.int64)
    s = 2e-3
    p, ps = IF.shiftmax(x, s, out_bits=8)
    assert ps == 2**-7 and p.min() >= 0 and p.max() <= 128
    sums = p.sum(-1)
    assert np.all(np.abs(sums - 128) <= 65 // 2 + 1)  # rounding: < 1/2 per element
    ref = torch.softmax(torch.from_numpy(x * s), -1).numpy()
    assert np.abs(p * ps - ref).max() < 0.05
    pt, _ = IF.shiftmax(torch.from_numpy(x), s, out_bits=8)
    assert np.array_equal(pt.numpy(), p)


def test_shiftmax_no_overflow_on_long_uniform_rows():
    x = np.zeros((1, 64), dtype=np.int64)  # the reference's clamped sum breaks at fine scales
    p, ps = IF.shiftmax(x, 1e-5, out_bits=8)
    assert p.min() == p.max() == 2 and p.sum() * ps == 1.0


def test_shiftgelu_tracks_gelu():
    x = np.arange(-127, 128, dtype=np.int64)
    for s in (0.01, 0.05, 0.1):
        g, gs = IF.shiftgelu(x, s, out_bits=8)
        ref = torch.nn.functional.gelu(torch.from_numpy(x * s)).numpy()
        assert np.abs(g * gs - ref).max() < 0.03 * max(1.0, 127 * s)
        gt, _ = IF.shiftgelu(torch.from_numpy(x), s)
        assert np.array_equal(gt.numpy(), g)


def test_int_layernorm_tracks_layernorm_with_int64():
    rng = np.random.default_rng(2)
    x = rng.integers(-32768, 32767, (8, 192)).astype(np.int64)  # 16-bit residual stream
    w, b = rng.uniform(0.2, 2.0, 192), rng.normal(0, 0.3, 192)
    out_scale = 8 / 127
    y, s = IF.int_layernorm(x, 1.0, w, b, out_bits=8, out_scale=out_scale, steps=None)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x).double(), (192,), torch.from_numpy(w), torch.from_numpy(b)).numpy()
    assert np.abs(y * s - np.clip(ref, -128 * s, 127 * s)).max() <= s  # within one output step
    yt, _ = IF.int_layernorm(torch.from_numpy(x), 1.0, w, b, out_bits=8, out_scale=out_scale)
    assert np.array_equal(yt.numpy(), y)


def test_layernorm_constants_keep_the_requant_in_int32():
    m, e, big = IF.layernorm_constants(np.array([1e-4, 1.0, -0.5]), np.array([3.0, 0.1, 50.0]), 192, 0.02)
    assert np.all(e <= IF.shift_cap(8)) and np.all(np.abs(big) < 2**29)


def test_dyadic_shift_cap_rounds_the_multiplier():
    m, e = IF.dyadic(np.array([1e-4, 0.3]), max_shift=IF.shift_cap(8))
    assert np.all(e <= 22)
    assert np.allclose(m / 2.0**e, [1e-4, 0.3], rtol=2 / 2**22 / 1e-4)


def test_kernels_reject_float_tensors():
    with pytest.raises(TypeError, match="integer"):
        IF.shiftmax(np.zeros((2, 3)), 0.1)
