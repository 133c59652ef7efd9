"""1-bit packing (8 weights a byte, exact unpack), frozen layers, packed files and torch.export round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import UserInputError
from edgekit.metrics import storage_bytes
from edgekit.models.vit import VisionTransformer
from edgekit.quant.bivit.convert import BinarizeOptions, convert
from edgekit.quant.bivit.modules import BinaryLinear, freeze
from edgekit.quant.bivit.pack import (load_packed, pack_signs, packed_nbytes, restore, save_packed, unpack_signs,
                                      unpack_signs_torch)


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0).eval()


@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (5, 13), (64, 64), (7, 129)])
def test_pack_unpack_exact(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    signs = rng.choice([-1.0, 1.0], size=shape).astype(np.float32)
    packed = pack_signs(signs)
    assert packed.dtype == np.uint8 and packed.shape == (shape[0], (shape[1] + 7) // 8)
    assert packed.nbytes == packed_nbytes(*shape)
    assert np.array_equal(unpack_signs(packed, shape[1]), signs)
    assert torch.equal(unpack_signs_torch(torch.from_numpy(packed), shape[1]), torch.from_numpy(signs))


def test_bit_layout_lsb_first():
    signs = np.array([[1, -1, -1, -1, -1, -1, -1, -1, -1, 1]])  # col 0 -> bit 0 of byte 0, col 9 -> bit 1 of byte 1
    assert pack_signs(signs).tolist() == [[1, 2]]


def test_unpack_rejects_wrong_shape():
    with pytest.raises(UserInputError, match="expected"):
        unpack_signs(np.zeros((2, 3), np.uint8), 30)


def test_freeze_is_exact_and_counts_one_bit_per_weight():
    torch.manual_seed(1)
    layer = BinaryLinear.from_linear(nn.Linear(100, 24), act_bits=1).eval()
    with torch.no_grad():
        layer.act_shift.normal_(0, 0.1)
    x = torch.randn(5, 100)
    with torch.no_grad():
        before = layer(x)
        signs = layer.signs().clone()
        for name in ("alpha", "bias", "act_shift"):  # what freezing does to the side parameters
            getattr(layer, name).copy_(getattr(layer, name).half().float())
        rounded = layer(x)
    layer.freeze()
    assert "packed_weight" in layer.state_dict() and "weight" not in layer.state_dict()
    assert layer.packed_weight.dtype == torch.uint8 and tuple(layer.packed_weight.shape) == (24, 13)
    assert layer.alpha.dtype == torch.float16
    with torch.no_grad():
        assert torch.equal(layer(x), rounded)  # exact once the fp16 rounding of the scales is accounted for
        torch.testing.assert_close(layer(x), before, rtol=2e-3, atol=2e-3 * before.abs().max().item())
        assert torch.equal(layer.signs(), signs)
    # 13 bytes a row + alpha, bias (24 each) and the 100 activation thresholds, 2 bytes each (float16)
    assert layer.storage_bytes() == 24 * 13 + 2 * (24 + 24 + 100)
    fp32 = 4 * (24 * 100 + 24)
    assert fp32 / layer.storage_bytes() > 10  # small layer: thresholds and scales weigh; see the benchmark


def test_save_load_restore_exact_and_export(tmp_path):
    model = tiny_vit()
    binary, _ = convert(model, BinarizeOptions(act_bits=1))
    with torch.no_grad():  # perturb the scales/thresholds so that restore must really read them
        for m in binary.modules():
            if isinstance(m, BinaryLinear):
                m.alpha.mul_(1.3)
                m.act_shift.normal_(0, 0.05)
    freeze(binary)
    binary.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        y = binary(x)
    path = save_packed(binary, tmp_path / "packed_weights.npz")
    packed = load_packed(path)
    assert set(packed.layers) == {n for n, m in binary.named_modules() if isinstance(m, BinaryLinear)}
    assert packed.config["act_bits"] == 1
    restored = restore(tiny_vit(), path)
    with torch.no_grad():
        assert torch.equal(restored(x), y)
    for name in packed.layers:
        assert torch.equal(restored.get_submodule(name).packed_weight, binary.get_submodule(name).packed_weight)
    # the report's size counts 1 bit per binarized weight
    assert storage_bytes(binary) < storage_bytes(model) / 3
    # torch.export: the program stores the packed uint8 bits and reproduces the outputs exactly
    ep = torch.export.export(binary, (x,), strict=False)
    torch.export.save(ep, str(tmp_path / "model.pt2"))
    reloaded = torch.export.load(str(tmp_path / "model.pt2")).module()
    assert torch.equal(reloaded(x), y)
    consts = {**dict(ep.named_buffers()), **ep.constants}
    assert any(t.dtype == torch.uint8 for t in consts.values())


def test_load_packed_rejects_other_files(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(3))
    with pytest.raises(UserInputError, match="__meta__"):
        load_packed(bad)
    with pytest.raises(UserInputError, match="not a readable"):
        load_packed(tmp_path / "missing.npz")


def test_save_packed_needs_frozen_model(tmp_path):
    binary, _ = convert(tiny_vit())
    with pytest.raises(UserInputError, match="not frozen"):
        save_packed(binary, tmp_path / "p.npz")
