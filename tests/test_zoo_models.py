"""Generated from the zoo registry: every model builds at both sizes, fuses exactly (deploy == eval, tune ==
eval with gradients), exports after fusion, and its shipped checkpoint loads with weights_only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgekit.models as zoo
from edgekit.fusion import fuse

from tests._fusion_util import RTOL_F32, RTOL_F64, RTOL_TUNE, forward_and_grads, randomize_bn, rel_err

NAMES = zoo.names()
MIN_ACCURACY = 0.85  # digits test split; a checkpoint below this is a broken checkpoint
REPARAM = {"repvgg": "RepConv", "unireplknet": "DilatedReparamBlock"}


def _model(name, dtype):
    torch.manual_seed(0)
    return randomize_bn(zoo.create(name, pretrained=False)).to(dtype).eval()


def test_zoo_has_the_issue_models():
    expected = {"repvgg", "mobilenetv2", "unireplknet", "inceptionnext", "vit", "hybrid", "cpubone", "resnet50", "convnet"}
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, RTOL_F64), (torch.float32, RTOL_F32)], ids=["f64", "f32"])
def test_deploy_equals_eval(name, dtype, tol):
    model = _model(name, dtype)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    fused, report = fuse(model, "deploy")
    assert rel_err(fused(x), model(x)) < tol
    if name in REPARAM:
        assert any(m["type"] == REPARAM[name] for m in report["merged"])
        left_types = {type(m).__name__ for m in fused.modules()}
        assert REPARAM[name] not in left_types
    if zoo.info(name).family == "cnn":
        assert report["folded"] or report["merged"]


@pytest.mark.parametrize("name", NAMES)
def test_tune_equals_eval_with_gradients(name):
    model = _model(name, torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    (e, _), (t, _) = fuse(model, "eval"), fuse(model, "tune")
    out_e, g_e = forward_and_grads(e, x)
    out_t, g_t = forward_and_grads(t, x)
    assert rel_err(out_t, out_e) < RTOL_TUNE
    assert g_e.keys() == g_t.keys() and len(g_e) == sum(1 for _ in model.parameters())
    for k in g_e:
        assert rel_err(g_t[k], g_e[k]) < RTOL_TUNE, k


@pytest.mark.parametrize("name", NAMES)
def test_fused_model_is_exportable(name):
    fused, _ = fuse(zoo.create(name, pretrained=False))
    ep = torch.export.export(fused, (torch.randn(1, 3, 32, 32),), strict=False)
    if zoo.info(name).family == "cnn":
        assert not any("batch_norm" in str(n.target) for n in ep.graph.nodes) or name == "inceptionnext"


@pytest.mark.parametrize("name", NAMES)
def test_224_configuration_runs(name):
    model = zoo.create(name, pretrained=False, size="224")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def test_224_shapes_follow_the_papers():
    vit = zoo.create("vit", pretrained=False, size="224")
    assert vit.patch_embed.proj.kernel_size == (16, 16) and len(vit.blocks) == 12
    assert vit.blocks[0].attn.num_heads == 3 and vit.pos_embed.shape == (1, 197, 192)
    r50 = zoo.create("resnet50", pretrained=False, size="224")
    assert [len(getattr(r50, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert 23e6 < sum(p.numel() for p in r50.parameters()) < 26e6


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_loads_with_weights_only_and_is_accurate(name, digits):
    from edgekit.training import evaluate

    path = zoo.info(name).checkpoint
    if not path.is_file():
        pytest.fail(f"{name}: no shipped checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = zoo.create(name, pretrained=True)
    assert evaluate(model, digits.test) >= MIN_ACCURACY


def test_checkpoints_stay_small():
    total = sum(p.stat().st_size for p in zoo.CHECKPOINTS.glob("*.pt"))
    assert total < 10 * 1024 * 1024
