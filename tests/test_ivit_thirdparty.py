"""I-ViT on ViTs written by other people (nn.MultiheadAttention with layer scale, F.scaled_dot_product_attention
with a tuple output, transformers' ViTForImageClassification): torch.fx cannot trace them, the converter finds
softmax / GELU / LayerNorm / linear / matmul by op in the torch.export graph, and `ivit-int8` then ONNX export
validates bit-exact with no float op inside -- nothing registered by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekit.quant.ivit import checker, onnx_export
from edgekit.quant.ivit.convert import convert, freeze
from tests import thirdparty_models as T

CASES = ["mha_vit", "sdpa_deit", "hf_vit"]


@pytest.mark.parametrize("name", CASES)
def test_converts_by_op_and_onnx_is_bit_exact(name):
    tp = T.MODELS[name]
    model = tp.build()
    T.assert_fx_fails(model)
    x = T.example(16)
    q = freeze(convert(model, x, batch_size=8, max_batches=2))
    kinds = {type(m).__name__ for _, m in q.named_modules()}
    assert {"IntSoftmax", "IntGELU", "IntLayerNorm", "IntLinear", "IntMatMul"} <= kinds
    proto = onnx_export.build(q, x[:1])
    assert checker.float_tensors(proto) == []
    with torch.no_grad():
        ref = q(x[:3]).numpy()
        out = model(x[:3])
    got = np.concatenate([onnx_export.run_onnxruntime(proto, x[i : i + 1]) for i in range(3)])
    assert np.array_equal(got, ref)
    logits = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
    cos = float(np.dot(ref.ravel(), logits.numpy().ravel()) / np.linalg.norm(ref) / np.linalg.norm(logits.numpy()))
    assert cos > 0.98  # calibration only, random weights: the integer model tracks the float one


def test_masked_attention_is_refused_by_name():
    from edgekit.errors import UserInputError

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(3, 24)

        def forward(self, x):
            b = x.shape[0]
            q, k, v = self.qkv(x.flatten(2).transpose(1, 2)[:, :16]).reshape(b, 16, 3, 8).unbind(2)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).mean(1)

    with pytest.raises(UserInputError, match="scaled_dot_product_attention.*mask or is_causal"):
        convert(Masked().eval(), T.example(4), batch_size=4, max_batches=1)


@pytest.mark.slow
def test_ivit_recipe_then_export_on_transformers_vit(tmp_path, digits):
    from edgekit.exporters.base import export
    from edgekit.pipeline import compress
    from edgekit.records import ModelInfo

    model = T.MODELS["hf_vit"].build()
    out = tmp_path / "c"
    compress(model, "ivit-int8", digits, overrides=["ivit.epochs=0", "ivit.calibration_batches=1"], out=out,
             latency=False, info=ModelInfo(name="hf_vit", input_shape=(3, 32, 32)))
    assert json.loads((out / "manifest.json").read_text())["program"]["kind"] == "ivit"
    art = export(str(out), "onnx", out=tmp_path / "e")
    assert art.report.passed
    assert {c["name"]: c["passed"] for c in art.report.checks} == {"integer_only": True, "bit_exact": True}
