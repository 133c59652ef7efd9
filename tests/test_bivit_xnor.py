"""XNOR-popcount path: the numpy reference and the TVM kernel agree with the BinaryLinear forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends import available
from edgekit.quant.bivit import xnor
from edgekit.quant.bivit.modules import BinaryLinear

# float32 tolerance of the scale/bias epilogue (the integer part is exact); outputs are O(1)
ATOL = 1e-5


@pytest.mark.parametrize("k", [1, 63, 64, 65, 200])
def test_xnor_dot_equals_integer_matmul(k):
    rng = np.random.default_rng(k)
    a = rng.choice([-1, 1], size=(7, k))
    b = rng.choice([-1, 1], size=(5, k))
    dot = xnor.xnor_dot_ref(xnor.pack_bits_u64(a), xnor.pack_bits_u64(b), k)
    assert np.array_equal(dot, a @ b.T)


def _layer(k: int, n: int, seed: int) -> BinaryLinear:
    torch.manual_seed(seed)
    layer = BinaryLinear.from_linear(nn.Linear(k, n), act_bits=1)
    with torch.no_grad():
        layer.act_shift.normal_(0, 0.1)
        layer.alpha.mul_(torch.rand(n) + 0.5)
    return layer.eval()


@pytest.mark.parametrize("frozen", [False, True])
def test_numpy_reference_matches_binary_linear(frozen):
    layer = _layer(96, 40, 0)
    if frozen:
        layer.freeze()
    x = torch.randn(13, 96)
    with torch.no_grad():
        expected = layer(x).numpy()
    got = xnor.binary_linear_ref(x.numpy(), xnor.layer_operands(layer))
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_operands_need_binary_activations():
    layer = BinaryLinear.from_linear(nn.Linear(8, 4), act_bits=8)
    with pytest.raises(ValueError, match="1-bit activations"):
        xnor.layer_operands(layer)


@pytest.mark.skipif(not available("tvm"), reason="apache-tvm is not installed")
@pytest.mark.parametrize("m,k,n", [(17, 64, 32), (5, 100, 24)])
def test_tvm_kernel_matches_reference(m, k, n):
    layer = _layer(k, n, 1)
    kernel = xnor.build_tvm_kernel(layer, m)
    x = np.random.default_rng(2).standard_normal((m, k)).astype(np.float32)
    ref = xnor.binary_linear_ref(x, xnor.layer_operands(layer))
    np.testing.assert_allclose(kernel(x), ref, atol=ATOL, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(kernel(x), layer(torch.from_numpy(x)).numpy(), atol=ATOL, rtol=0)
