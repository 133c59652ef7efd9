"""fuse() on models written without edgekit.ops: graph pattern matching, the users check, ConvTranspose and
Linear folds, the torch.export fallback, the recipe stage, and exportability of the result."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import edgekit
from edgekit.errors import UserInputError
from edgekit.fusion import fuse
from edgekit.ops import ConvBN

from tests._fusion_util import RTOL_F32, RTOL_F64, RTOL_TUNE, forward_and_grads, randomize_bn, rel_err
from tests.models import my_resnet, my_vit


def _prep(model, dtype=torch.float64):
    torch.manual_seed(0)
    return randomize_bn(model).to(dtype).eval()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, RTOL_F64), (torch.float32, RTOL_F32)], ids=["f64", "f32"])
def test_my_resnet_deploy_folds_every_bn(dtype, tol):
    model = _prep(my_resnet(), dtype)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    fused, report = edgekit.fuse(model, mode="deploy")
    assert rel_err(fused(x), model(x)) < tol
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(report["folded"]) == n_bn and report["left"] == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert type(fused) is type(model)  # the user's class and forward are kept


def test_my_resnet_tune_equals_eval_with_gradients():
    model = _prep(my_resnet())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    (e, re), (t, rt) = fuse(model, "eval"), fuse(model, "tune")
    assert len(rt["folded"]) == 15 and all(isinstance(m.conv, nn.Conv2d) for m in t.modules() if isinstance(m, ConvBN))
    out_e, g_e = forward_and_grads(e.train(), x)
    out_t, g_t = forward_and_grads(t.train(), x)
    assert rel_err(out_t, out_e) < RTOL_TUNE
    assert g_e.keys() == g_t.keys() and any(k.endswith("bn.weight") for k in g_e)
    for k in g_e:
        assert rel_err(g_t[k], g_e[k]) < RTOL_TUNE, k


def test_vit_without_bn_is_unchanged():
    model = my_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    fused, report = fuse(model)
    assert report["folded"] == [] and torch.equal(fused(x), model(x))


def test_plain_pair_agrees_with_pytorch_reference():
    conv, bn = nn.Conv2d(3, 5, 3, bias=True), nn.BatchNorm2d(5)
    model = _prep(nn.Sequential(conv, bn))
    fused, report = fuse(model)
    theirs = fuse_conv_bn_eval(copy.deepcopy(model[0]), copy.deepcopy(model[1]))
    assert report["folded"] == [{"layer": "0", "bn": "1", "type": "Conv2d"}]
    assert torch.allclose(fused[0].weight, theirs.weight, rtol=0, atol=1e-12)
    assert torch.allclose(fused[0].bias, theirs.bias, rtol=0, atol=1e-12)


class SharedOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        z = self.conv2(self.bn(y) + y)  # conv output used by bn and by the add
        return self.bn2(z)


def test_no_fold_when_conv_output_has_other_users():
    model = _prep(SharedOutput())
    fused, report = fuse(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert rel_err(fused(x), model(x)) < RTOL_F64
    assert report["folded"] == [{"layer": "conv2", "bn": "bn2", "type": "Conv2d"}]
    assert report["left"] == [{"layer": "bn", "reason": "output of 'conv' has other users"}]
    assert isinstance(fused.bn, nn.BatchNorm2d)


@pytest.mark.parametrize("groups,stride", [(1, 2), (2, 1)])
def test_conv_transpose_fold(groups, stride):
    model = _prep(nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride, groups=groups), nn.BatchNorm2d(6)))
    fused, report = fuse(model)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    assert len(report["folded"]) == 1 and rel_err(fused(x), model(x)) < RTOL_F64


def test_linear_bn1d_fold_needs_a_2d_output():
    flat = _prep(nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6)))
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    fused, report = fuse(flat, example_inputs=(x,))
    assert len(report["folded"]) == 1 and rel_err(fused(x), flat(x)) < RTOL_F64
    _, unknown = fuse(flat)  # without example inputs the output rank is unknown: left, with the reason
    assert unknown["folded"] == [] and "example inputs" in unknown["left"][0]["reason"]
    seq = _prep(nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)))  # (N, 5, 6) -> BN over dim 1, not foldable
    x3 = torch.randn(2, 5, 6, dtype=torch.float64)
    fused3, report3 = fuse(seq, example_inputs=(x3,))
    assert report3["folded"] == [] and "rank 3" in report3["left"][0]["reason"]
    assert torch.equal(fused3(x3), seq(x3))


class ShapeBranch(nn.Module):
    """torch.fx cannot trace Python control flow on shapes; torch.export can."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.shape[-1] > 4:
            y = y * 2
        return y


def test_export_fallback_when_fx_fails():
    model = _prep(ShapeBranch())
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    with pytest.raises(UserInputError, match="example inputs"):
        fuse(model)
    fused, report = fuse(model, example_inputs=(x,))
    assert report["tracer"] == "torch.export" and len(report["folded"]) == 1
    assert rel_err(fused(x), model(x)) < RTOL_F64


def test_bad_mode_is_a_user_error():
    with pytest.raises(UserInputError, match="accepted: deploy, tune, eval"):
        fuse(nn.Conv2d(1, 1, 1), mode="fold")


def test_fused_model_exports_with_torch_export_and_onnx(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _prep(my_resnet(), torch.float32)
    fused, _ = fuse(model)
    x = torch.randn(1, 3, 32, 32)
    ep = torch.export.export(fused, (x,), strict=False)
    assert not any("batch_norm" in str(n.target) for n in ep.graph.nodes)
    path = tmp_path / "fused.onnx"
    torch.onnx.export(fused, (x,), str(path), dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert rel_err(torch.from_numpy(out), model(x)) < 1e-4


def test_fuse_stage_runs_from_the_deploy_recipe():
    from edgekit.recipe import load_recipe
    from edgekit.stages import StageContext, get_stage

    recipe = load_recipe(["deploy"], [])
    assert [s.name for s in recipe.stages] == ["fuse"] and recipe.stages[0].config.mode == "deploy"
    fn, config_cls = get_stage("fuse")
    cfg = config_cls.from_dict({"mode": "tune"})
    model = _prep(my_resnet(), torch.float32)
    x = torch.randn(1, 3, 32, 32)
    ctx = StageContext(data=None, reference=model, example_inputs=(x,))
    tuned, report = fn(model, cfg, ctx)
    assert report["mode"] == "tune" and len(report["folded"]) == 15
    assert rel_err(tuned(x), model(x)) < RTOL_F32
