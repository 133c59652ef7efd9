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
