"""I-ViT ONNX builder pieces against exact references on ONNX Runtime: the int32 requantization in each of its
forms (tight clamps without an output Clip, one scalar guard Clip for all channels, per-channel clamps), the
row square root with its bounded Newton steps, and the table lookup."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.quant.ivit import functional as IF
from edgekit.quant.ivit.onnx_builder import Builder, Meta

pytest.importorskip("onnxruntime")


def _run(b: Builder, inp: str, out: str, x: np.ndarray, dtype: str) -> np.ndarray:
    from edgekit.quant.ivit.onnx_export import OPSET
    import onnxruntime as ort

    b.nodes.append(b.h.make_node("Identity", [out], ["y"]))
    b.prune()
    elem = getattr(b.T, dtype.upper())
    graph = b.h.make_graph(b.nodes, "t", [b.h.make_tensor_value_info(inp, elem, list(x.shape))],
                           [b.h.make_tensor_value_info("y", getattr(b.T, b.dtype(out).upper()), None)], b.inits)
    proto = b.h.make_model(graph, opset_imports=[b.h.make_opsetid("", OPSET)], ir_version=8)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {inp: x})[0]


def _requant_ref(v, m, e, lo, hi, extra, bias):
    v = np.asarray(v, dtype=object)
    c = np.asarray(extra, dtype=object) + np.where(e > 0, np.asarray(1, dtype=object) << np.maximum(e - 1, 0), 0)
    y = ((v + bias) * m + c) // (np.asarray(1, dtype=object) << e)
    return np.clip(y, lo, hi).astype(np.int64)


CASES = [  # (name, value range, storage dtype / offset, m (a tuple: per channel in that range), e, out bits, bias, extra)
    ("scale<1 scalar, uint8 in", (-128, 127), ("uint8", 128), 11, 5, 8, 0, 0),
    ("scale<1 negative m", (-128, 127), ("uint8", 128), -7, 4, 8, 0, 3),
    ("scale>1 scalar", (-3000, 3000), ("int32", 0), 19073, 14, 16, 0, 0),
    ("per-channel tight clamps", (-3_000_000, 3_000_000), ("int32", 0), (200, 9000), 22, 8, "pc", 0),
    ("per-channel one guard Clip", (-3_000_000, 3_000_000), ("int32", 0), (3000, 4000), 22, 8, "pc", 0),
    ("per-channel negative m", (-3_000_000, 3_000_000), ("int32", 0), (-9000, -200), 22, 8, 0, "pc"),
    ("per-channel mixed signs, wide out", (-40_000, 40_000), ("int32", 0), (-30000, 30000), 14, 16, 0, "pc"),
    ("stored with offset, all saturating", (1000, 2000), ("int32", 5), 3000, 4, 8, 0, 0),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_requant_forms_match_the_reference(case):
    _, (vlo, vhi), (dtype, offset), m, e, bits, bias, extra = case
    rng = np.random.default_rng(0)
    channels = 6
    if isinstance(m, tuple):
        m = rng.integers(*m, channels)
    if bias == "pc":
        bias = rng.integers(-5000, 5000, channels)
    if extra == "pc":
        extra = rng.integers(-9000, 9000, channels)
    m, bias, extra = (np.broadcast_to(np.asarray(a, dtype=np.int64), (channels,)) for a in (m, bias, extra))
    e_arr = np.full(channels, e, dtype=np.int64)
    lo, hi = IF.qrange(bits)
    # every value when the range is narrow, else both ends, the neighbourhood of every saturation point, random
    if vhi - vlo < 5000:
        v = np.arange(vlo, vhi + 1)
    else:
        edges = (np.asarray([lo, hi + 1])[:, None] << e) // np.where(m == 0, 1, m)[None] - bias[None]  # per channel
        near = (edges.ravel()[:, None] + np.arange(-3, 4)[None]).ravel()
        v = np.concatenate([[vlo, vhi], near, rng.integers(vlo, vhi + 1, 3000)])
        v = np.clip(v, vlo, vhi)
    v = np.repeat(v[:, None], channels, axis=1)
    b = Builder()
    b.meta["x"] = Meta(dtype, offset, vlo, vhi)
    y = b.requant("x", m, e_arr, lo, hi, extra=extra, bias=bias, shape=(-1,))
    got = _run(b, "x", y, (v + offset).astype(dtype), dtype).astype(np.int64) - b.meta[y].offset
    assert np.array_equal(got, _requant_ref(v, m, e_arr, lo, hi, extra, bias))


def test_requant_scale_at_most_one_needs_no_output_clip():
    b = Builder()
    b.meta["x"] = Meta("int32", 0, -3_000_000, 3_000_000)
    b.requant("x", 4000, 22, -128, 127)
    assert [n.op_type for n in b.nodes] == ["Clip", "Mul", "Add", "Div", "Cast"]


@pytest.mark.parametrize("v_max", [1, 2**20, 192 * 65535**2, 2**61])
def test_isqrt_graph_is_exact(v_max):
    from edgekit.quant.ivit.onnx_export import _isqrt

    steps = IF.isqrt_steps(v_max)
    assert steps <= IF.ISQRT_STEPS
    squares = np.arange(1, min(math.isqrt(v_max), 3_000_000) + 1, max(1, math.isqrt(v_max) // 2000)) ** 2
    powers = 4 ** np.arange(0, (v_max.bit_length() + 1) // 2)
    v = np.concatenate([[0, 1, 2, 3, v_max], squares - 1, squares, squares + 1, powers, powers - 1,
                        np.random.default_rng(0).integers(0, v_max + 1, 2000, dtype=np.int64)])
    v = np.clip(v, 0, v_max).astype(np.int64).reshape(-1, 1)
    ref = np.array([[max(1, math.isqrt(int(a)))] for a in v.ravel()])
    assert np.array_equal(IF.isqrt(v, steps=steps), ref)  # the bounded step count converges in numpy too
    b = Builder()
    b.meta["v"] = Meta("int64")
    assert np.array_equal(_run(b, "v", _isqrt(b, "v", v_max), v, "int64"), ref)


def test_lut_pads_a_small_first_index_and_gathers_elements():
    b = Builder()
    b.meta["x"] = Meta("uint8", 0, 3, 200)
    table = (np.arange(198) * 7 % 256).astype(np.uint8)
    y = b.lut("x", table, Meta("uint8", 0, 0, 255), (2, 99))
    assert [n.op_type for n in b.nodes] == ["Cast", "Reshape", "GatherElements", "Reshape"]
    x = np.arange(3, 201, dtype=np.uint8).reshape(2, 99)
    assert np.array_equal(_run(b, "x", y, x, "uint8"), table.reshape(2, 99))


def test_lut_after_a_requant_reads_the_unclipped_division():
    """A table on a requantization's result (scale > 1: the form with an output Clip) reads the Div before
    that Clip, negative indices included: the same values as the clipped path, one pass fewer."""
    rng = np.random.default_rng(1)
    acc = np.concatenate([np.arange(-400, 401), [-3_000_000, 3_000_000]]).astype(np.int32).reshape(1, -1)
    m, e, extra = np.asarray(3000), np.asarray(10), -(1 << 12)
    table = rng.integers(0, 256, 256).astype(np.uint8)
    b = Builder()
    b.meta["x"] = Meta("int32", 0, -3_000_000, 3_000_000)
    y = b.requant("x", m, e, -128, 127, extra=extra)
    z = b.lut(y, table, Meta("uint8", 0, 0, 255), acc.shape)
    got = _run(b, "x", z, acc, "int32")
    assert [n.op_type for n in b.nodes] == ["Clip", "Mul", "Add", "Div", "Reshape", "GatherElements", "Reshape", "Identity"]
    ref = _requant_ref(acc, m, e, -128, 127, extra, 0)
    assert ref.min() == -128 and ref.max() == 127  # both saturations are exercised
    assert np.array_equal(got, table[ref + 128])


@pytest.mark.parametrize("out_bits,offset,extra", [(16, 0, 0), (16, 32768, 5), (8, 0, 0), (8, 128, -3)])
def test_requant_of_scale_one_is_a_clip(out_bits, offset, extra):
    """m == 2**e (an IntMatMul whose output grid is the accumulator's): clamp(value + extra // 2**e), one
    Clip (plus the Add into uint8 storage for an 8-bit result)."""
    lo, hi = IF.qrange(out_bits)
    v = np.arange(-70_000, 70_001, 3).reshape(1, -1)
    b = Builder()
    b.meta["x"] = Meta("int32", offset, -70_000, 70_000)
    y = b.requant("x", 1 << 14, 14, lo, hi, extra=extra << 14)
    got = _run(b, "x", y, (v + offset).astype(np.int32), "int32").astype(np.int64) - b.meta[y].offset
    assert [n.op_type for n in b.nodes][:-1] == (["Clip"] if out_bits == 16 else ["Clip", "Add", "Cast"])
    assert np.array_equal(got, _requant_ref(v, np.asarray(1 << 14), np.asarray(14), lo, hi, extra << 14, 0))


@pytest.mark.parametrize("gamma", ["ones", "per-channel"])
def test_layernorm_lowering_with_saturating_outputs(gamma):
    """I-LayerNorm on rows with outliers and an output scale that saturates often: the normalised value's
    storage offset is as small as the requantization's lowest clamp allows (quotients below it truncate, and
    only ever reach the clamp), and the graph still equals the numpy kernel bit for bit."""
    import torch
    from torch import nn

    from edgekit.quant.ivit import modules as M
    from edgekit.quant.ivit.onnx_export import _layernorm

    rng = np.random.default_rng(3)
    c = 48
    ln = nn.LayerNorm(c)
    if gamma == "per-channel":
        with torch.no_grad():
            ln.weight.copy_(torch.from_numpy(rng.uniform(-3, 3, c)))
            ln.bias.copy_(torch.from_numpy(rng.uniform(-1, 1, c)))
    mod = M.IntLayerNorm(ln, s_in=0.01, s_out=0.004)  # |out| <= 0.5: most normalised values saturate
    mod.freeze()
    x = rng.integers(-200, 200, (64, c))
    x[:8, :3] = rng.choice([-32768, 32767], (8, 3))  # outliers: a few values far out in a row
    x[8] = 5  # a constant row (variance 0)
    b = Builder()
    b.meta["x"] = Meta("int32", 0, -32768, 32767)
    y = _layernorm(b, mod, ["x"], [x], None)
    got = _run(b, "x", y, x.astype(np.int32), "int32").astype(np.int64) - b.meta[y].offset
    ref = mod.kernel(x, p=mod.params_np(), steps=None)
    assert ref.min() == -128 and ref.max() == 127
    assert np.array_equal(got, np.asarray(ref))
