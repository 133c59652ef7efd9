"""Model figures: parameter and storage protocols, MACs, fidelity."""

from __future__ import annotations

import torch
from torch import nn

from edgekit.metrics import count_macs, count_params, fidelity, layer_table, storage_bytes


class Packed(nn.Module):
    """A layer that keeps 1-bit weights in a buffer and reports its logical size itself."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bits", torch.zeros(16, dtype=torch.uint8))  # 128 weights
        self.inner = nn.Linear(4, 4)  # skipped: the module reports for its children

    def param_count(self) -> int:
        return 128

    def storage_bytes(self) -> int:
        return 16


def test_param_and_storage_protocols():
    m = nn.Sequential(nn.Linear(10, 5), Packed())
    assert count_params(m) == 55 + 128
    assert storage_bytes(m) == 55 * 4 + 16
    shared = nn.Linear(3, 3)
    assert count_params(nn.Sequential(shared, shared)) == 12  # tied weights count once


def test_macs_and_layer_table():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    x = torch.randn(1, 3, 4, 4)
    expected = 8 * 16 * 27 + 128 * 10
    assert count_macs(m, x) == expected
    total, rows = layer_table(m, x)
    assert total == expected
    by = {r["name"]: r for r in rows}
    assert by["0"]["macs"] == 8 * 16 * 27 and by["0"]["output_shape"] == [1, 8, 4, 4] and by["1"]["macs"] == 0


def test_fidelity_detects_difference():
    a = nn.Linear(4, 3)
    b = nn.Linear(4, 3)
    x = torch.randn(32, 4)
    same = fidelity(a, a, x)
    assert same["cosine"] > 0.999999 and same["max_abs"] == 0 and same["top1_agreement"] == 1.0
    assert fidelity(a, b, x)["cosine"] < 0.99
