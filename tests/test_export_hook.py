"""A model that carries its own ONNX writer (I-ViT's integer graph) is exported by it everywhere."""

from __future__ import annotations

import torch
from torch import nn


def test_to_onnx_uses_the_models_own_writer(tmp_path):
    from edgekit.exporters.onnx import to_onnx

    calls = []

    def writer(model, example, path):
        calls.append((model, tuple(example.shape)))
        path.write_bytes(b"custom")
        return path

    m = nn.Linear(4, 2)
    m.edgekit_onnx_export = writer
    out = to_onnx(m, torch.randn(1, 4), tmp_path / "m.onnx")
    assert out.read_bytes() == b"custom" and calls == [(m, (1, 4))]
