"""A model that carries its own ONNX writer (I-ViT's integer graph) is exported by it everywhere."""

from __future__ import annotations

import torch
from torch import nn


def test_to_onnx_uses_the_models_own_writer(tmp_path):
    from edgekit.exporters.onnx import to_onnx

    from edgekit.records import OnnxWriter

    calls = []

    class OwnWriter(nn.Linear):
        def write_onnx(self, path, example, opset):
            calls.append((self, tuple(example.shape), opset))
            path.write_bytes(b"custom")
            return path

    m = OwnWriter(4, 2)
    assert isinstance(m, OnnxWriter) and not isinstance(nn.Linear(4, 2), OnnxWriter)
    out = to_onnx(m, torch.randn(1, 4), tmp_path / "m.onnx", opset=18)
    assert out.read_bytes() == b"custom" and calls == [(m, (1, 4), 18)]
