"""CNN Q/DQ rules checked on the graph ONNX Runtime runs: a classifier Linear becomes QGemm (int32 bias), a
max pool runs on the integer tensor. The model is written the way model libraries write a ResNet (shape
control flow in forward, so torch.fx cannot trace it and the graph is captured by torch.export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.quant.config import PTQConfig
from edgekit.quant.ptq import gemm_input_scales, graph_of, quantize_ptq


class LibResNet(nn.Module):
    """Stem conv + ReLU + max pool, one residual block, global average pool, Linear classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.c1, self.c2 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        if x.shape[-1] != x.shape[-2]:  # shape control flow: torch.fx.symbolic_trace fails on it
            raise ValueError("square inputs only")
        x = self.pool(F.relu(self.stem(x)))
        x = F.relu(x + self.c2(F.relu(self.c1(x))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    model = LibResNet().eval()
    for m in model.modules():  # non-trivial biases, so an int32 bias is checked on real values
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.uniform_(m.bias, -0.5, 0.5)
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)
    x = torch.randn(48, 3, 32, 32)
    q, rep = quantize_ptq(model, x, x[:1], PTQConfig(calibration={"method": "minmax", "samples": 48}))
    return model, q, rep, x


def test_classifier_bias_is_int32_on_the_input_times_weight_grid(quantized):
    _, q, rep, _ = quantized
    assert rep["capture"]["method"] == "torch.export", rep["capture"]
    gm = graph_of(q)
    layers = dict(gm.named_modules())
    fc = next(m for m in layers.values() if type(m).__name__ == "QuantLinear")
    assert fc.bias_int32.dtype == torch.int32 and fc.bias_int32.abs().max() > 0
    # the grid is (input scale) x (weight scale), and the float bias the model computes with lies on it
    in_scale = next(iter(gemm_input_scales(gm).values()))
    torch.testing.assert_close(fc.bias_scale, fc.weight_scale * in_scale)
    torch.testing.assert_close(fc.bias.detach(), fc.bias_int32.float() * fc.bias_scale, rtol=0, atol=1e-7)
    assert fc.qbias().dtype == torch.float32
    # the convs keep a float bias (ORT fuses QLinearConv with it): only Gemm-form linears are changed
    assert all(getattr(m, "bias_int32", None) is None for m in layers.values() if type(m).__name__ == "QuantConv2d")


def test_ort_runs_qgemm_and_an_integer_max_pool_and_agrees(quantized, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.quant import qdq
    from edgekit.training import predict

    _, q, _, x = quantized
    path = to_onnx(q, x[:1], tmp_path / "q.onnx")
    g = onnx.load(str(path)).graph
    inits = {i.name: i.data_type for i in g.initializer}
    dq_int32 = [n for n in g.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) == onnx.TensorProto.INT32]
    assert len(dq_int32) == 1, [n.input for n in g.node if n.op_type == "DequantizeLinear"]
    ops = qdq.ort_optimized_op_types(path)
    assert ops.get("QGemm") == 1 and "Gemm" not in ops, ops  # was a float Gemm on a dequantized weight
    assert ops.get("QLinearConv") == 3 and "Conv" not in ops, ops
    # the global average pool runs on uint8 (qdq rule 8): torch.export's mean is written as GlobalAveragePool
    assert ops.get("QLinearGlobalAveragePool") == 1 and "ReduceMean" not in ops and "GlobalAveragePool" not in ops, ops
    # max pool on uint8: only the graph input's Q and no DQ left but none (the logits come out of QGemm as float)
    assert ops.get("MaxPool") == 1 and ops.get("DequantizeLinear", 0) <= 1 and ops.get("QuantizeLinear", 0) <= 2, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i : i + 1].numpy()})[0] for i in range(16)])
    want = predict(q, x[:16]).numpy()
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max(), np.abs(got - want).max()


def test_max_pool_output_is_on_its_inputs_grid(quantized):
    from edgekit.quant.fakequant import TiedFakeQuant

    gm = graph_of(quantized[1])
    pools = [n for n in gm.graph.nodes if "max_pool" in str(n.target)]
    assert pools, [str(n.target) for n in gm.graph.nodes]
    users = [u for p in pools for u in p.users if u.op == "call_module"]
    assert users and all(isinstance(gm.get_submodule(u.target), TiedFakeQuant) for u in users), users


def test_linear_on_tokens_keeps_a_float_bias():
    """A Linear on 3-D tokens with a quantized output exports as MatMul + Add (no Gemm to fuse): its bias is
    left as it was."""

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc2((x + self.fc1(x)).mean(1))  # fc1's output is quantized (a residual add reads it)

    torch.manual_seed(0)
    x = torch.randn(32, 5, 8)
    q, _ = quantize_ptq(Tokens().eval(), x, x[:1], PTQConfig(calibration={"method": "minmax", "samples": 32}))
    gm = graph_of(q)
    assert getattr(gm.get_submodule("fc1"), "bias_int32", None) is None
    assert gm.get_submodule("fc2").bias_int32.dtype == torch.int32


def test_tensorrt_placement_keeps_float_biases(quantized):
    """TensorRT's ONNX parser takes no int32 DequantizeLinear: the tensorrt placement (int8-sym) keeps them float."""
    model, _, _, x = quantized
    q, _ = quantize_ptq(model, x, x[:1], PTQConfig(target="tensorrt", calibration={"method": "minmax", "samples": 48}))
    assert all(getattr(m, "bias_int32", None) is None for m in graph_of(q).modules())


def test_coreml_converts_the_int32_bias(quantized):
    """MIL dequantizes int8 / uint8 only: the CoreML exporter turns the int32 bias into its float constant."""
    ct = pytest.importorskip("coremltools")
    from edgekit.exporters.coreml import _exported, register_qdq_converter

    _, q, _, x = quantized
    register_qdq_converter()
    ml = ct.convert(_exported(q, x[:1]), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                    inputs=[ct.TensorType(name="input", shape=(1, 3, 32, 32), dtype=np.float32)])
    ops = [op.op_type for f in ml._mil_program.functions.values() for op in f.operations]
    assert "linear" in ops and ops.count("constexpr_affine_dequantize") == 4, ops  # 4 int8 weights; the bias: const


def test_global_average_pool_forms():
    """Rule 8 takes the spatial mean that keeps its dims, written any of the usual ways, and nothing else."""
    from torch.fx.passes.shape_prop import ShapeProp

    from edgekit.quant import qdq

    class Pools(nn.Module):
        def __init__(self):
            super().__init__()
            self.gap = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return (self.gap(x), F.adaptive_avg_pool2d(x, (1, 1)), x.mean((2, 3), keepdim=True),
                    x.mean((-1, -2), keepdim=True), x.mean((2, 3)), x.mean(1, keepdim=True), F.adaptive_avg_pool2d(x, 2))

    gm = torch.fx.symbolic_trace(Pools())
    ShapeProp(gm).propagate(torch.randn(1, 4, 6, 6))
    mods = dict(gm.named_modules())
    got = [qdq.is_global_avg_pool(n, mods) for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    assert got == [True, True, True, True, False, False, False], got


def test_onnx_reduce_mean_becomes_global_average_pool_only_over_h_w(tmp_path):
    """The dynamo export writes torch.export's spatial mean (keepdim) as GlobalAveragePool, equal outputs; a mean
    over channels or without keepdim stays ReduceMean."""
    ort = pytest.importorskip("onnxruntime")
    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.quant import qdq

    class Means(nn.Module):
        def forward(self, x):
            if x.shape[1] != 4:  # torch.export, then the dynamo exporter (a graph module)
                raise ValueError
            return torch.cat([F.adaptive_avg_pool2d(x, 1).flatten(1), x.mean((2, 3)), x.mean(1, keepdim=True).flatten(1)], 1)

    x = torch.randn(1, 4, 5, 6)
    gm = torch.export.export(Means(), (x,), strict=False).module()
    path = to_onnx(gm, x, tmp_path / "m.onnx")
    ops = qdq.onnx_op_types(path)
    assert ops.get("GlobalAveragePool") == 1 and ops.get("ReduceMean") == 2, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, Means()(x).numpy(), rtol=1e-5, atol=1e-6)


def test_global_pool_read_by_a_float_norm_stays_float():
    """Rule 8 only where the pooled values are quantized anyway (a flatten and a dropout into a Linear, as in
    torchvision's classifiers); a pool that feeds a
    LayerNorm (as InceptionNeXt / UniRepLKNet heads do) keeps its float output, so the model is unchanged."""
    from torch.fx.passes.shape_prop import ShapeProp

    from edgekit.quant import qdq

    class Head(nn.Module):
        def __init__(self, norm: bool):
            super().__init__()
            self.conv, self.norm, self.fc = nn.Conv2d(3, 8, 3), nn.LayerNorm(8) if norm else nn.Dropout(0.2), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.norm(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1), 1)))

    for norm, pooled in ((False, True), (True, False)):
        gm = torch.fx.symbolic_trace(Head(norm))
        ShapeProp(gm).propagate(torch.randn(1, 3, 8, 8))
        pool = next(n for n in gm.graph.nodes if "adaptive_avg_pool2d" in str(n.target))
        assert (pool.name in qdq.plan(gm).tensors) is pooled, (norm, qdq.plan(gm).tensors)
