"""I-ViT conversion: the fake-integer PyTorch model, the numpy integer executor, ONNX Runtime and TVM agree
bit for bit on every ViT-style model; the exported graph has no float tensor inside; QAT gradients flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit import models
from edgekit.errors import UserInputError
from edgekit.quant.ivit import checker, executor, onnx_export
from edgekit.quant.ivit.convert import convert, freeze
from tests.models import my_vit

MODELS = {
    "vit": lambda: models.create("vit", pretrained=False),
    "hybrid": lambda: models.create("hybrid", pretrained=False),
    "my_vit": my_vit,
}


@pytest.fixture(scope="module")
def converted(digits):
    torch.manual_seed(0)
    out = {}
    for name, factory in MODELS.items():
        out[name] = (factory().eval(), freeze(convert(factory().eval(), digits.calib.x[:64], max_batches=1)))
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_output_grids_are_never_finer_than_needed(name, converted):
    """IntMatMul outputs are never on a grid finer than the product's own; a residual sum keeps its wide
    input's grid when that covers its range with at most one bit to spare (its graph branch is then the
    stored value itself) and otherwise gets one bit of headroom."""
    from edgekit.quant.ivit import modules as M

    _, q = converted[name]
    mms = [m for m in q.modules() if isinstance(m, M.IntMatMul)]
    adds = [m for m in q.modules() if isinstance(m, M.IntAdd)]
    assert mms and adds
    assert all(m.s_out >= m.s_a * m.s_b for m in mms)
    kept = [m for m in adds if m.s_out in (m.s_a, m.s_b)]
    assert kept  # the residual stream keeps its grid through (some of) the blocks
    for m in kept:  # identity branch: requantize(x, m, e) == x
        p = m.params_np()
        assert int(p["ma"]) == 1 << int(p["ea"]) or int(p["mb"]) == 1 << int(p["eb"])


def _reseeded(factory):
    torch.manual_seed(0)
    return factory().eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_executor_onnx_bit_exact_and_integer_only(name, converted, digits):
    float_model, q = converted[name]
    x = digits.test.x[:4]
    with torch.no_grad():
        ref = q(x).numpy()
        fp = float_model(x).numpy()
    assert ref.dtype == np.float32 and ref.shape == fp.shape
    assert np.array_equal(executor.run(q, x), ref)
    proto = onnx_export.build(q, x)
    assert checker.float_tensors(proto) == []
    assert {n.op_type for n in proto.graph.node} >= {"MatMulInteger"}
    assert np.array_equal(onnx_export.run_onnxruntime(proto, x), ref)


@pytest.mark.parametrize("name", list(MODELS))
def test_integer_modules_replace_float_ops(name, converted):
    _, q = converted[name]
    kinds = {type(m).__name__ for m in q.modules()}
    assert {"IntLinear", "IntSoftmax", "IntGELU", "IntLayerNorm", "IntAdd", "IntMatMul"} <= kinds
    assert not any(isinstance(m, (nn.Linear, nn.LayerNorm, nn.GELU, nn.Softmax, nn.Conv2d)) for m in q.modules())


def test_torch_export_roundtrip(converted, digits):
    _, q = converted["my_vit"]
    x = digits.test.x[:2]
    ep = torch.export.export(q, (x,), strict=False)
    assert torch.equal(ep.module()(x), q(x))


def test_tvm_bit_exact(converted, digits):
    pytest.importorskip("tvm")
    from edgekit.quant.ivit import tvm_build

    from tests.models import MyViT

    torch.manual_seed(0)
    q = freeze(convert(MyViT(dim=16, depth=1, heads=2).eval(), digits.calib.x[:32], max_batches=1))
    x = digits.test.x[:2]
    with torch.no_grad():
        ref = q(x).numpy()
    # generic llvm target: this test is the integer graph's exactness on TVM (the VNNI path on this CPU, slower
    # to compile, is test_ivit_export.py::test_export_tvm_heuristic_integer_matmuls_on_vnni_bit_exact)
    assert np.array_equal(tvm_build.build(onnx_export.build(q, x), target="llvm")(x), ref)


def test_qat_step_gives_weight_gradients_and_exact_forward(digits):
    torch.manual_seed(0)
    q = convert(my_vit().eval(), digits.calib.x[:64], max_batches=1)
    x, y = digits.train.x[:8], digits.train.y[:8]
    with torch.no_grad():
        exact = q.eval()(x)
    q.train()
    out = q(x)
    assert torch.allclose(out, exact, atol=1e-4)  # the STE forward is the integer forward
    nn.functional.cross_entropy(out, y).backward()
    grads = [p.grad for n, p in q.named_parameters() if n.endswith("weight")]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_unsupported_op_is_named(digits):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            return torch.sigmoid(self.fc(x.flatten(1)))

    with pytest.raises(UserInputError, match="sigmoid"):
        convert(Odd(), digits.calib.x[:8])


def test_checker_lists_float_island():
    onnx = pytest.importorskip("onnx")
    h, T = onnx.helper, onnx.TensorProto
    nodes = [h.make_node("Cast", ["x"], ["q"], to=T.INT8), h.make_node("Cast", ["q"], ["f"], to=T.FLOAT),
             h.make_node("Softmax", ["f"], ["s"]), h.make_node("Cast", ["s"], ["q2"], to=T.INT32),
             h.make_node("Cast", ["q2"], ["y"], to=T.FLOAT)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 3])], [h.make_tensor_value_info("y", T.FLOAT, [2, 3])])
    found = checker.float_tensors(h.make_model(g))
    assert [f["tensor"] for f in found] == ["f", "s"]
    with pytest.raises(Exception, match="float tensor"):
        checker.check(h.make_model(g))


def test_stage_calibration_only(digits):
    from edgekit.stages import StageContext, get_stage

    torch.manual_seed(0)
    model = my_vit().eval()
    fn, cfg_cls = get_stage("ivit")
    q, report = fn(model, cfg_cls(epochs=0, calibration_batches=1), StageContext(digits, model, (digits.test.x[:1],)))
    assert report["executor_bit_exact"] is True
    assert report["layers"]["IntSoftmax"] == 2 and report["storage_bytes"] > 0
    assert 0.0 <= report["accuracy_integer"] <= 1.0
    with pytest.raises(Exception):
        cfg_cls(epochs=1, bogus=3)
