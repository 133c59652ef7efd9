"""Target-aware int8 placement (quantize.target), fused attention made quantizable, the per-op precision
report read from the runtimes' execution graphs, and the validation.json note for another runtime (issue 21)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from edgekit.quant.config import PTQConfig
from edgekit.quant.fakequant import ActFakeQuant
from edgekit.quant.placement import PLACEMENTS, placement_note, placement_note_for
from edgekit.quant.ptq import graph_of, quantize_ptq, trace

# exported QDQ graph vs the PyTorch fake-quant model: int8 kernels round a few accumulators differently from the
# float fake-quant arithmetic (one activation level here and there): a small margin over the measured agreement
QDQ_REL_TOL = 1e-2  # max |runtime - torch| <= 1% of max |torch logits| (measured on this model: 2e-7)


def _tiny_vit():
    from edgekit.models.vit import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(32, 8, 32, 2, 2, 2.0, 10).eval()


class SdpaViT(nn.Module):
    """Attention written the way many users write it: one fused F.scaled_dot_product_attention call."""

    def __init__(self, dim: int = 32, heads: int = 2, mask: bool = False) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, 8)
        self.norm = nn.LayerNorm(dim)
        self.qkv, self.proj, self.head = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 10)
        self.heads = heads
        self.bias = nn.Parameter(torch.randn(1, heads, 16, 16) * 0.1) if mask else None

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, d = t.shape
        q, k, v = self.qkv(self.norm(t)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        t = t + self.proj(o.transpose(1, 2).reshape(b, n, d))
        return self.head(t.mean(1))


def _calib(n=16):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _quant(model, target, **kw):
    x = _calib()
    cfg = PTQConfig(calibration={"method": "minmax", "samples": len(x)}, bias_correction=False, target=target, **kw)
    return quantize_ptq(model, x, x[:1], cfg)


def test_registry_names_and_unknown_target_refused():
    assert {"onnxruntime", "openvino", "tensorrt"} <= set(PLACEMENTS.names())
    assert PTQConfig().target == "onnxruntime"
    with pytest.raises(ValidationError, match="unknown quantization target 'tflite'.*openvino"):
        PTQConfig(target="tflite")


def test_openvino_placement_grids_and_float_attention_logits():
    q, rep = _quant(_tiny_vit(), "openvino")
    gm = graph_of(q)
    assert rep["target"] == "openvino" and "uint8 (zero point 0)" in rep["activations"]
    quants = {n.args[0].name: gm.get_submodule(n.target) for n in gm.graph.nodes
              if n.op == "call_module" and isinstance(gm.get_submodule(n.target), ActFakeQuant)}
    softmax_out = [q for src, q in quants.items() if "softmax" in src]
    assert len(softmax_out) == 2 and all(q.scheme.qmin == 0 and q.zero_point_i == 0 for q in softmax_out)
    signed = [q for src, q in quants.items() if "softmax" not in src and q.scheme.qmin < 0]
    assert signed and all(q.zero_point_i == 0 for q in signed)  # symmetric: no zero point anywhere
    # the Q·Kᵀ logits (matmul -> mul -> softmax) carry no quantizer: the softmax reads the float product
    for n in gm.graph.nodes:
        if "softmax" in str(n.target) or n.target == "softmax":
            src = n.args[0]
            assert not (src.op == "call_module" and isinstance(gm.get_submodule(src.target), ActFakeQuant)), src
            assert not (src.args and src.args[0].op == "call_module"), src  # nor the product before the scaling


def test_onnxruntime_placement_is_uint8_affine_everywhere():
    q, rep = _quant(_tiny_vit(), "onnxruntime")
    scales = [m for m in graph_of(q).modules() if isinstance(m, ActFakeQuant)]
    assert rep["target"] == "onnxruntime" and rep["activations"] == "uint8 affine"
    assert scales and all(m.scheme.qmin == 0 and m.scheme.qmax == 255 for m in scales)


def test_position_embedding_add_is_not_a_residual_add():
    from edgekit.quant import qdq

    gm, _ = trace(_tiny_vit(), _calib(1))
    p = qdq.plan(gm)
    adds = [n for n in p.op_nodes if n.startswith("add")]
    assert len(adds) == 4  # two residual adds per block; x + pos_embed is not one of them
    pos = next(n for n in gm.graph.nodes if n.op == "get_attr" and n.target == "pos_embed")
    assert all(pos not in next(x for x in gm.graph.nodes if x.name == a).args for a in adds)
    assert any(pos in n.args for n in gm.graph.nodes if n.op == "call_function")  # the add is there, in float


@pytest.mark.parametrize("mask", [False, True])
def test_fused_attention_is_decomposed_exactly_and_both_products_quantized(mask):
    from edgekit.quant.placement_attention import decompose_attention

    model = SdpaViT(mask=mask).eval()
    x = _calib(4)
    gm, _ = trace(model, x[:1])
    assert not any("scaled_dot_product" in str(n.target) for n in gm.graph.nodes)  # trace decomposed it
    with torch.no_grad():
        ref, got = model(x), gm(x)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6), (got - ref).abs().max()
    assert decompose_attention(gm) == 0  # idempotent
    q, rep = _quant(model, "openvino")
    assert not any("scaled_dot_product" in f for f in rep["float_ops"])
    gm = graph_of(q)
    matmuls = [n for n in gm.graph.nodes if "matmul" in str(n.target)]
    assert len(matmuls) == 2 and all(_reads_quantized(a, gm) for n in matmuls for a in n.args[:2])


def _reads_quantized(node, gm) -> bool:
    """A quantizer's output, or a slice / permutation of one (the OpenVINO placement reads q, k, v that way)."""
    from edgekit.quant import qdq

    while node.op != "call_module":
        if not qdq.moves_data(node):
            return False
        node = node.args[0]
    return isinstance(gm.get_submodule(node.target), ActFakeQuant)


def _ort_run(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i : i + 1]})[0] for i in range(len(x))])


def _ov_run(path, x):
    from edgekit.exporters.runtimes import openvino_compiled

    c = openvino_compiled(path, 2)
    return np.concatenate([c([x[i : i + 1]])[0] for i in range(len(x))])


@pytest.mark.slow  # 25-44 s measured under load (load average ~18 on 2 cores): export + runtime compile
@pytest.mark.parametrize("target,runtime", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_fake_quant_model_and_exported_qdq_agree(tmp_path, target, runtime):
    pytest.importorskip(runtime)
    from edgekit.exporters.torch2onnx import to_onnx

    # SmoothQuant off here: on this tiny random-weight ViT, smoothed, OpenVINO's result drifts from PyTorch's by 18%
    # of the logit range while ORT stays at 2e-7 (not understood yet; on the trained digits vit, smoothed: 3.8%,
    # top-1 agreement 100%, unsmoothed 1.1%) -- reported to the lead as open
    q, _ = _quant(_tiny_vit(), target, smoothquant={"enabled": False})
    x = _calib(8)
    path = to_onnx(q, x[:1], tmp_path / "q.onnx")
    with torch.no_grad():
        ref = q(x).numpy()
    got = (_ort_run if runtime == "onnxruntime" else _ov_run)(path, x.numpy())
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err <= QDQ_REL_TOL, err
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75


@pytest.mark.slow  # 53 s measured under load: two exports and two OpenVINO compiles
def test_openvino_runs_attention_in_int8_with_the_openvino_placement(tmp_path):
    pytest.importorskip("openvino")
    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.quant.placement_report import openvino_precisions, side_by_side

    x = _calib(1)
    reports = {}
    for target in ("openvino", "onnxruntime"):  # every layer int8 (quantize.ends: the patch embed and head too)
        q, _ = _quant(_tiny_vit(), target, ends="int8")
        reports[target] = openvino_precisions(to_onnx(q, x, tmp_path / f"{target}.onnx"))
    ov = reports["openvino"]
    assert ov["MatMul (activations)"] == {"int8": 4, "float": 0}  # Q·Kᵀ and A·V of both blocks
    assert ov["MatMul (weights)"]["float"] == 0 and ov["MVN"]["float"] == 0
    assert reports["onnxruntime"]["MatMul (activations)"]["float"] > 0  # the affine placement does not get there
    headers, rows = side_by_side(reports)
    assert headers == ["op (int8 / all)", "openvino", "onnxruntime"] and ["MatMul (activations)", "4/4"] == rows[[r[0] for r in rows].index("MatMul (activations)")][:2]


def test_placement_note_for_another_runtime():
    assert placement_note("openvino", "openvino")["made_for_this_target"] is True
    other = placement_note("openvino", "onnx")
    assert other["made_for_this_target"] is False and "quantize.target: onnxruntime" in other["note"]
    assert placement_note_for(None, "onnx") is None
    assert placement_note_for({"mode": "ptq"}, "onnx")["made_for"] == "onnxruntime"  # the default, recorded


@pytest.mark.slow  # a compress + an export of the digits vit
def test_export_to_another_runtime_writes_the_note(tmp_path):
    """A compress output made for OpenVINO exported to ONNX (ORT): it works, and validation.json says so."""
    pytest.importorskip("onnxruntime")
    from edgekit import compress, export

    compress("vit", "int8", out=tmp_path / "c", latency=False, overrides=[
        "quantize.target=openvino", "quantize.calibration.samples=32", "quantize.calibration.method=minmax"])
    stages = json.loads((tmp_path / "c" / "report.json").read_text())["stages"]
    assert next(s for s in stages if s["name"] == "quantize")["report"]["target"] == "openvino"
    art = export(tmp_path / "c", "onnx", "int8", out=tmp_path / "e")
    note = json.loads((tmp_path / "e" / "validation.json").read_text())["extra"]["int8_placement"]
    assert note["made_for"] == "openvino" and note["made_for_this_target"] is False
    assert art.report.passed


def test_slices_of_a_quantized_tensor_share_its_grid():
    """q, k, v cut out of the quantized qkv output take its quantizer's grid (TiedFakeQuant), never their own."""
    from edgekit.quant import qdq
    from edgekit.quant.fakequant import TiedFakeQuant

    q, _ = _quant(_tiny_vit(), "onnxruntime")
    gm = graph_of(q)
    tied = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), TiedFakeQuant)]
    assert len(tied) >= 4  # at least q and k (or kᵀ) of both blocks' Q·Kᵀ
    for n in tied:
        src = n.args[0]
        while not (src.op == "call_module" and isinstance(gm.get_submodule(src.target), ActFakeQuant)):
            assert qdq.moves_data(src), src  # only data movement between the source quantizer and the tie
            src = src.args[0]
        assert gm.get_submodule(n.target).source is gm.get_submodule(src.target)
    plain = copy.deepcopy(gm)
    for n in tied:
        setattr(plain, n.target, nn.Identity())
    x = _calib(4)
    with torch.no_grad():  # a slice of a quantized tensor is already on the source's grid: the tie changes nothing
        assert torch.allclose(gm(x), plain(x), atol=1e-6)


@pytest.mark.slow  # ~15 s under load: one export and one ORT session
def test_onnxruntime_placement_runs_attention_integer_without_float_slices(tmp_path):
    """ORT placement: both attention products as QLinearMatMul, a float softmax (not QLinearSoftmax), and no
    DequantizeLinear -> Gather left between the qkv output and the products (the tied grids let ORT drop them)."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from edgekit.exporters.torch2onnx import to_onnx

    q, _ = _quant(_tiny_vit(), "onnxruntime")
    path = to_onnx(q, _calib(1), tmp_path / "q.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = onnx.load(str(tmp_path / "opt.onnx")).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("QLinearMatMul") == 4 and "MatMulIntegerToFloat" not in ops  # 2 blocks x Q·Kᵀ, A·V
    assert "QLinearSoftmax" not in ops and ops.count("Softmax") == 2
    assert ops.count("Gelu") == 2 and "Erf" not in ops  # one fused Gelu kernel per MLP (quant/placement_gelu.py)
    # qkv, proj, fc1 (float output into the Gelu: int32 bias) and fc2 of both blocks; the head is float (ends auto)
    assert ops.count("QGemm") == 8 and ops.count("Gemm") == 1
    from edgekit.quant.placement_report import ort_kernel_profile

    prof = ort_kernel_profile(path, _calib(1).numpy(), runs=2)  # ORT's own profiler, per op type of that graph
    assert prof["QGemm"] > 0 and prof["Gelu"] > 0 and "Erf" not in prof and "QLinearMatMul" in prof
    made_by = {o: n.op_type for n in g.node for o in n.output}
    gathers_of_dq = [n.name for n in g.node if n.op_type == "Gather" and made_by.get(n.input[0]) == "DequantizeLinear"]
    assert not gathers_of_dq


def test_ends_of_a_transformer_stay_float_by_default_and_cnns_stay_int8():
    """quantize.ends (edgekit.quant.placement_ends): patch embedding and head float on a ViT by default."""
    from edgekit.quant.fakequant import QuantWeight
    from edgekit.quant.placement_ends import end_layers

    gm, _ = trace(_tiny_vit(), _calib(1))
    assert end_layers(gm) == (["patch_embed.proj"], ["head"])
    int8 = lambda q: {n for n, m in graph_of(q).named_modules() if isinstance(m, QuantWeight)}  # noqa: E731
    q, rep = _quant(_tiny_vit(), "onnxruntime")
    assert rep["float_ends"] == ["patch_embed.proj", "head"] and {"patch_embed.proj", "head"} <= set(rep["ignored"])
    assert "patch_embed.proj" not in int8(q) and "head" not in int8(q) and "blocks.0.mlp.fc1" in int8(q)
    q, rep = _quant(_tiny_vit(), "onnxruntime", ends="int8")
    assert rep["float_ends"] == [] and {"patch_embed.proj", "head"} <= int8(q)
    q, rep = _quant(_tiny_vit(), "onnxruntime", ignore=["head"])  # already ignored: not listed twice
    assert rep["float_ends"] == ["patch_embed.proj"] and rep["ignored"].count("head") == 1
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 28 * 28, 10))
    q, rep = _quant(cnn.eval(), "onnxruntime")  # no attention: every layer int8
    assert rep["float_ends"] == [] and len(int8(q)) == 3
    q, rep = _quant(cnn.eval(), "onnxruntime", ends="float")
    assert rep["float_ends"] == ["0", "4"] and int8(q) == {"2"}
    hybrid = copy.deepcopy(_tiny_vit())  # a transformer on a convolutional stem: the stem stays int8 (auto)
    hybrid.patch_embed.proj = nn.Conv2d(3, 32, 3, 8, 1)
    assert _quant(hybrid, "onnxruntime")[1]["float_ends"] == ["head"]
    with pytest.raises(ValidationError):
        PTQConfig(ends="on")


def test_gelu_is_rewritten_exactly_into_the_form_ort_fuses():
    from edgekit.quant.placement_gelu import rewrite_gelu

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(8, 8), nn.GELU()

        def forward(self, x):
            return F.gelu(self.act(self.fc(x))) + F.gelu(x, approximate="tanh")

    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) * 3
    m = M().eval()
    gm = torch.fx.symbolic_trace(m)
    assert rewrite_gelu(gm) == 2 and rewrite_gelu(gm) == 0  # the tanh approximation is left alone
    assert not any(isinstance(mod, nn.GELU) for mod in gm.modules())
    with torch.no_grad():
        assert torch.allclose(gm(x), m(x), rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # ~10 s: two exports and two OpenVINO compiles
def test_openvino_placement_reads_q_k_v_through_the_layout_ops(tmp_path, monkeypatch):
    """OpenVINO placement (``requantize_moved=False``): q, k, v cut out of the quantized qkv output get no Q/DQ
    pair of their own, so the CPU plugin folds kᵀ into the Q·Kᵀ product instead of running an int8 Transpose
    between two quantizers; the fake-quant model is the same (the moved values were already on the grid)."""
    pytest.importorskip("openvino")
    from dataclasses import replace

    import openvino as ov

    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.quant import ptq
    from edgekit.quant.fakequant import TiedFakeQuant
    from edgekit.quant.placement import placement

    x = _calib(4)
    q_new, _ = _quant(_tiny_vit(), "openvino", ends="int8")
    def tied_product_inputs(q):
        g = graph_of(q)
        return [a for n in g.graph.nodes if "matmul" in str(n.target) for a in n.args[:2]
                if a.op == "call_module" and isinstance(g.get_submodule(a.target), TiedFakeQuant)]

    assert not tied_product_inputs(q_new)
    with monkeypatch.context() as m:  # the same placement with its own pair on every moved product input
        m.setattr(ptq, "activation_policy", lambda *a: replace(placement("openvino"), requantize_moved=True))
        q_old, _ = _quant(_tiny_vit(), "openvino", ends="int8")
    assert len(tied_product_inputs(q_old)) >= 4  # q and kᵀ of both blocks' Q·Kᵀ at least
    with torch.no_grad():
        assert torch.allclose(q_new(x), q_old(x), atol=1e-6)

    def transposes(model, name):
        compiled = ov.Core().compile_model(str(to_onnx(model, x[:1], tmp_path / name)), "CPU")
        return sum(op.get_rt_info()["layerType"].astype(str) == "Transpose" for op in compiled.get_runtime_model().get_ordered_ops())

    assert transposes(q_new, "new.onnx") == transposes(q_old, "old.onnx") - 2  # kᵀ of both blocks folded


class MaskedSdpaViT(SdpaViT):
    """An attention mask built the way ``transformers`` 5.x builds its ViT's: ``arange(n) >= 0`` expanded to the
    batch (attends everywhere, from shapes only); ``from_values``: an all-True mask that depends on the input's
    values (must be kept: another input could mask something)."""

    def __init__(self, from_values: bool = False) -> None:
        super().__init__()
        self.from_values = from_values

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        b, n, d = t.shape
        if self.from_values:
            mask = (t.abs().sum(-1) >= 0)[:, None, None, :].expand(b, 1, n, n)
        else:
            mask = (torch.arange(n) >= 0)[None, None, None, :].expand(b, 1, n, n)
        q, k, v = self.qkv(self.norm(t)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        t = t + self.proj(o.transpose(1, 2).reshape(b, n, d))
        return self.head(t.mean(1))


@pytest.mark.parametrize("from_values", [False, True])
def test_a_mask_that_attends_everywhere_from_shapes_only_is_dropped(from_values):
    model = MaskedSdpaViT(from_values).eval()
    x = _calib(4)
    gm, _ = trace(model, x[:1])
    masked = [n for n in gm.graph.nodes if "masked_fill" in str(n.target)]
    assert len(masked) == (1 if from_values else 0)
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), rtol=1e-5, atol=1e-6)


def test_transformers_vit_attends_everywhere_mask_is_dropped_and_ops_int8():
    """``transformers``' ViTForImageClassification (captured with torch.export): its all-True attention mask is
    gone from the quantized graph (no float ``masked_fill`` left), and the output is unchanged by the rewrite."""
    pytest.importorskip("transformers")
    from tests.thirdparty_models import MODELS

    model = MODELS["hf_vit"].build().eval()
    x = _calib(4)
    gm, _ = trace(model, x[:1])
    assert not [n for n in gm.graph.nodes if "masked_fill" in str(n.target) or "arange" in str(n.target)]
    with torch.no_grad():
        ref = model(x)
        ref = ref.logits if hasattr(ref, "logits") else ref
        assert torch.allclose(gm(x), ref, rtol=1e-5, atol=1e-6)
    _, rep = _quant(model, "onnxruntime")
    assert not [f for f in rep["float_ops"] if "masked_fill" in f or "logical_not" in f]
