"""OpenVINO placement: Linears on token tensors run on 2-D tokens (quant/placement_linear2d.py), so that the CPU
plugin keeps the residual branches' FullyConnected outputs int8 and runs each GELU as its own int8 kernel, as in
NNCF's graph of detector-hybrid (issue 19: the OpenVINO int8 latency of the hybrid-backbone detector)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import edgekit.quant.ptq as ptq
from edgekit.quant.config import PTQConfig
from edgekit.quant.fakequant import ActFakeQuant
from edgekit.quant.placement_linear2d import RESHAPED_2D


class UserBlockNet(nn.Module):
    """A pre-norm MLP block written the way users write one: tokens from a conv, ``x + fc2(gelu(fc1(norm(x))))``,
    mean over the tokens, a classifier."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, 8)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2, self.head = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.Linear(dim, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = t + self.fc2(nn.functional.gelu(self.fc1(self.norm(t))))
        return self.head(t.mean(1))


def _models():
    from edgekit.models.vit import VisionTransformer

    torch.manual_seed(0)
    return {"zoo vit": VisionTransformer(32, 8, 32, 2, 2, 2.0, 10).eval(), "user block": UserBlockNet().eval()}


def _quantize(model, linear_2d: bool, monkeypatch):
    base = ptq.activation_policy
    monkeypatch.setattr(ptq, "activation_policy", lambda t, s: dataclasses.replace(base(t, s), linear_2d=linear_2d))
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = PTQConfig(calibration={"method": "minmax", "samples": 16}, bias_correction=False, target="openvino",
                    ends="int8")
    q, _ = ptq.quantize_ptq(model, x, x[:1], cfg)
    monkeypatch.setattr(ptq, "activation_policy", base)
    return q, x


def _runtime_fcs(onnx_path):
    """(output precision, whether a GELU is fused into it) of each FullyConnected the CPU plugin runs."""
    import openvino as ov

    gelus = {op.get_friendly_name() for op in ov.convert_model(str(onnx_path)).get_ordered_ops()
             if op.get_type_name() == "Gelu"}
    compiled = ov.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": 1})
    out = []
    for node in compiled.get_runtime_model().get_ordered_ops():
        rt = node.get_rt_info()
        if rt["layerType"].astype(str) == "FullyConnected":
            names = set(rt["originalLayersNames"].astype(str).split(","))
            out.append((rt["outputPrecisions"].astype(str), bool(names & gelus)))
    return out, len(gelus)


@pytest.mark.parametrize("name", ["zoo vit", "user block"])
def test_linears_on_2d_tokens_keep_the_function_and_the_quantizers(name, monkeypatch):
    model = _models()[name]
    on, x = _quantize(model, True, monkeypatch)
    off, _ = _quantize(model, False, monkeypatch)
    g = ptq.graph_of(on)
    reshapes = [n for n in g.graph.nodes if n.meta.get(RESHAPED_2D)]
    on_tokens = 4 * 2 if name == "zoo vit" else 2  # qkv, proj, fc1, fc2 per block; the classifier is on 2-D
    assert len(reshapes) == 2 * on_tokens  # one before and one after each Linear on 3-D tokens
    mods = dict(g.named_modules())
    # no reshape got a quantizer of its own: the same quantizers, the same function (bit for bit)
    assert not any(u.op == "call_module" and isinstance(mods.get(u.target), ActFakeQuant) for r in reshapes for u in r.users)
    count = lambda q: sum(isinstance(m, ActFakeQuant) for m in q.modules())  # noqa: E731
    assert count(on) == count(off)
    with torch.no_grad():
        assert torch.equal(on(x), off(x))
        if name == "user block":  # the token count is read at run time: the same weights on 4x the tokens
            big = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
            assert torch.equal(on(big), off(big))


@pytest.mark.parametrize("name", ["zoo vit", "user block"])
def test_openvino_keeps_fully_connected_outputs_int8_and_gelu_apart(name, monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    from edgekit.exporters.torch2onnx import to_onnx

    model = _models()[name]
    got = {}
    for flag in (True, False):
        q, x = _quantize(model, flag, monkeypatch)
        got[flag] = _runtime_fcs(to_onnx(q, x[:1], tmp_path / f"{flag}.onnx"))
    (fcs, gelus), (fcs_off, _) = got[True], got[False]
    assert gelus >= 1
    tokens = fcs[:-1]  # the last one is the classifier (graph output: float)
    assert tokens and all(prec == "i8" for prec, _ in tokens), fcs  # residual branches' outputs int8 too
    assert not any(fused for _, fused in fcs), fcs  # every GELU an int8 kernel of its own
    # what the rule is for: on 3-D tokens the plugin ran the residual branches' FullyConnected with a float output
    # and fused the GELU into the first MLP layer
    assert any(prec != "i8" for prec, _ in fcs_off[:-1]) and any(fused for _, fused in fcs_off), fcs_off
