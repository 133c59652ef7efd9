"""TensorRT constraint checker (exporters/trt_rules.py) against graphs built from TensorRT's documented Q/DQ rules,
and the refusal of asymmetric int8 before any work (naming the recipe int8-sym)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import UserInputError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _graph(act_scale=0.1, act_zp=np.int8(0), w_axis=0, w_scale=None, w_zp_dtype=np.int8, scale_node=False,
           weight_quant_only=False, extra_nodes=(), weight_op="Conv"):
    """x -> Q/DQ -> Conv (int8 weights behind a per-channel DequantizeLinear) -> Relu -> Q/DQ -> y."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(8, 4, 3, 3)).astype(np.int8) if weight_op == "Conv" else \
        rng.integers(-127, 128, size=(16, 8)).astype(np.int8)
    n_out = w.shape[0] if weight_op == "Conv" else w.shape[1]
    w_scale = np.full((n_out if w_axis in (0, 1) else 1,), 0.01, np.float32) if w_scale is None else w_scale
    inits = [_init("w", w), _init("w_s", w_scale), _init("w_zp", np.zeros(w_scale.shape, w_zp_dtype)),
             _init("a_zp", np.asarray(act_zp)), _init("o_s", np.float32(0.2)), _init("o_zp", np.int8(0))]
    nodes = []
    if scale_node:  # the activation scale is computed at run time, not a constant
        inits.append(_init("s_raw", np.float32(-0.1)))
        nodes.append(helper.make_node("Abs", ["s_raw"], ["a_s"], name="scale_abs"))
    else:
        inits.append(_init("a_s", np.asarray(act_scale, np.float32)))
    x_in = "x"
    if not weight_quant_only:
        nodes += [helper.make_node("QuantizeLinear", ["x", "a_s", "a_zp"], ["xq"], name="in_q", axis=1),
                  helper.make_node("DequantizeLinear", ["xq", "a_s", "a_zp"], ["xd"], name="in_dq", axis=1)]
        x_in = "xd"
    nodes.append(helper.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["wd"], name="w_dq", axis=w_axis))
    if weight_op == "Conv":
        nodes.append(helper.make_node("Conv", [x_in, "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]))
        in_shape, out_shape = [1, 4, 8, 8], [1, 8, 8, 8]
    else:
        nodes.append(helper.make_node("MatMul", [x_in, "wd"], ["c"], name="matmul"))
        in_shape, out_shape = [1, 16], [1, 8]
    nodes += [helper.make_node("Relu", ["c"], ["r"], name="relu"),
              helper.make_node("QuantizeLinear", ["r", "o_s", "o_zp"], ["rq"], name="out_q"),
              helper.make_node("DequantizeLinear", ["rq", "o_s", "o_zp"], ["y"], name="out_dq"), *extra_nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _check(model):
    from edgekit.exporters.trt_rules import check_graph

    onnx.checker.check_model(model)
    return check_graph(model)


@pytest.mark.parametrize("weight_op", ["Conv", "MatMul"])
def test_accepts_symmetric_explicit_quantization(weight_op):
    problems, advice = _check(_graph(weight_op=weight_op, w_axis=0 if weight_op == "Conv" else 1))
    assert problems == [] and advice == []


REJECTED = {
    "non-zero zero point": (dict(act_zp=np.int8(3)), "qdq-zero-point", {"in_q", "in_dq"}),
    "uint8 activations": (dict(act_zp=np.uint8(0)), "qdq-int8", {"in_q", "in_dq"}),
    "per-channel activation": (dict(act_scale=np.full((4,), 0.1, np.float32)), "qdq-activation-per-tensor", {"in_q"}),
    "conv weight scales on axis 1": (dict(w_axis=1, w_scale=np.full((4,), 0.01, np.float32)), "qdq-weight-axis", {"w_dq"}),
    "non-constant scale": (dict(scale_node=True), "qdq-scale-const", {"in_q", "in_dq"}),
    "negative scale": (dict(act_scale=np.float32(-0.1)), "qdq-scale-positive", {"in_q", "in_dq"}),
    "unsupported op": (dict(extra_nodes=(helper.make_node("Unique", ["y"], ["u"], name="uniq"),)), "op-unsupported", {"uniq"}),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejects_what_tensorrt_documents_as_unsupported(case):
    kwargs, rule, layers = REJECTED[case]
    model = _graph(**kwargs)
    from edgekit.exporters.trt_rules import check_graph

    problems, _ = check_graph(model)
    hits = [p for p in problems if p["rule"] == rule]
    assert {p["layer"] for p in hits} >= layers, problems
    assert all(p["problem"] for p in hits)


def test_weight_only_quantized_conv_is_advice_not_rejection():
    problems, advice = _check(_graph(weight_quant_only=True))
    assert problems == [] and [a["layer"] for a in advice] == ["conv"]


def test_asymmetric_int8_is_refused_before_any_work_naming_int8_sym(tmp_path):
    """A model whose activations are quantized uint8 affine: TensorRT refuses at once, nothing is written."""
    from edgekit.exporters import export
    from edgekit.quant.config import ACT_UINT8
    from edgekit.quant.fakequant import ActFakeQuant
    from edgekit.records import ModelInfo

    q = ActFakeQuant(ACT_UINT8)
    q.set_qparams(0.02, 128)
    model = nn.Sequential(q, nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    model(torch.randn(1, 3, 8, 8))
    with pytest.raises(UserInputError, match="int8-sym") as err:
        export(model.eval(), "tensorrt", "int8", out=tmp_path / "a", info=ModelInfo(name="m", input_shape=(3, 8, 8)))
    assert "symmetric" in str(err.value)
    assert not (tmp_path / "a").exists()


# ---- int8 on the other targets, N:M kept in exported weights ---------------------------------------------

class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def int8_sym_model():
    from edgekit.quant.config import CalibrationConfig, PTQConfig
    from edgekit.quant.ptq import quantize_ptq

    torch.manual_seed(0)
    model = TinyCNN().eval()
    calib = torch.randn(32, 3, 16, 16)
    cfg = PTQConfig(calibration=CalibrationConfig(method="minmax", samples=32), symmetric_activations=True, bias_correction=False)
    q, _ = quantize_ptq(model, calib, calib[:1], cfg)
    return q.eval()


@pytest.mark.slow
def test_coreml_int8_carries_the_calibrated_qdq(int8_sym_model, tmp_path):
    """CoreML: activation quantizers become MIL quantize/dequantize, weights stay 8-bit (structural on Linux)."""
    pytest.importorskip("coremltools")
    from edgekit.exporters import export
    from edgekit.records import ModelInfo

    art = export(int8_sym_model, "coreml", "int8", out=tmp_path / "c", data="random:3x16x16",
                 info=ModelInfo(name="tiny", input_shape=(3, 16, 16)))
    checks = {c["name"]: c for c in art.report.checks}
    assert checks["int8 activation quantize/dequantize ops present"]["passed"], checks
    assert checks["int8 weights present"]["passed"], checks
    assert art.manifest["coreml_qdq"] is True and art.report.passed


@pytest.mark.slow
def test_tvm_int8_imports_qdq_and_validates(int8_sym_model, tmp_path):
    pytest.importorskip("tvm")
    from edgekit.exporters import export
    from edgekit.records import ModelInfo

    art = export(int8_sym_model, "tvm", "int8", out=tmp_path / "t", data="random:3x16x16", llvm_opt_level=1,
                 info=ModelInfo(name="tiny", input_shape=(3, 16, 16)))
    assert art.report.numeric and art.report.passed, art.report.summary()
    assert "float32 kernels" in art.manifest["tvm_int8"]


def test_nm_pattern_found_through_int8_weights():
    """The N:M finder reads int8 weights behind DequantizeLinear, along the input-channel axis."""
    from edgekit.exporters.graph_weights import nm_layers

    model = _graph()
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w")).copy()
    assert nm_layers(model, 2, 4)["layers_with_pattern"] == []  # dense random weights
    rows = np.moveaxis(w, 1, -1)  # (out, kh, kw, in): groups of 4 input channels
    rows[..., 2:] = 0
    w2 = np.moveaxis(rows, -1, 1)
    for i, init in enumerate(model.graph.initializer):
        if init.name == "w":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w2, "w"))
    assert nm_layers(model, 2, 4)["layers_with_pattern"] == ["conv"]
