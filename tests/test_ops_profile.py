"""layer_macps: per-layer MACs are the analytic counts and MACs per second are MACs / seconds."""

from __future__ import annotations

import torch
from torch import nn

from edgekit.ops.profile import layer_macps


def test_layer_macps_counts_convs_and_linears():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    rows = layer_macps(model, torch.randn(1, 3, 16, 16), runs=3, warmup=1)
    by = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == ["0", "1", "2", "3"]  # execution order
    assert by["0"]["macs"] == 8 * 16 * 16 * 3 * 9 and by["0"]["type"] == "Conv2d"
    assert by["3"]["macs"] == 8 * 16 * 16 * 10
    assert by["1"]["macs"] == 0 and by["1"]["macps"] is None
    for r in (by["0"], by["3"]):
        assert r["seconds"] > 0 and abs(r["macps"] - r["macs"] / r["seconds"]) < 1e-6 * r["macps"]
