"""Structured pruning: the dependency graph on zoo models and on hand-written third-party-style models.

Faithfulness check (methods.md): before fine-tuning, the pruned model's output equals the dense model with the
same channels / heads zeroed (tolerance 1e-4 absolute on logits of order 1, float32)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgekit.models as zoo
from edgekit.errors import UserInputError
from edgekit.prune.depgraph import DependencyGraph
from edgekit.prune.slots import Side
from edgekit.prune.apply import zero_units
from edgekit.prune.structured import make_plan, prune
from tests.models import my_resnet, my_vit
from tests.prune_models import Branchy, TinyTransformer

ATOL = 1e-4
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


def _check_zero_equivalence(model, ignore=(), ratio=0.4, importance="l1"):
    plan = make_plan(model, (X,), ratio=ratio, importance=importance, ignore=ignore)
    assert plan.remove, "nothing was pruned"
    zeroed = zero_units(model, plan.remove)
    new, report = prune(model, (X,), plan=plan)
    with torch.no_grad():
        dense, z, p = model(X), zeroed(X), new(X)
    assert p.shape == dense.shape
    assert (dense - p).abs().max() > 10 * ATOL  # pruning did change the function
    torch.testing.assert_close(p, z, atol=ATOL, rtol=1e-4)
    assert report["params"]["after"] < report["params"]["before"]
    assert report["macs"]["after"] < report["macs"]["before"]
    return new, report, plan


# LayerNorm statistics include zeroed channels, so the equivalence check keeps norm-coupled dims (the ViT
# residual width, a final LayerNorm) out of it; they are pruned and exported in the other tests.
ZOO_IGNORE = ["norm", "*norm1", "*norm2", "*.norm"]


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_pruned_equals_zeroed_dense(name):
    torch.manual_seed(0)
    model = _randomize_bn(zoo.create(name, pretrained=False))
    _check_zero_equivalence(model, ignore=ZOO_IGNORE)


def test_third_party_resnet_equals_zeroed_and_exports():
    model = _randomize_bn(my_resnet())
    new, report, plan = _check_zero_equivalence(model)
    # residual adds: every member of the stem's group removed the same indices
    graph = plan.graph
    stem_group = next(g for g in graph.groups if "conv1" in g.layers and "layers.0.conv2" in g.layers)
    removed = [u for u in plan.remove if u in stem_group.units]
    for u in removed:
        outs = {s.layer: s.index for s in u.slots if s.side is Side.OUT}
        assert len(set(outs.values())) == 1 and {"conv1", "bn1", "layers.0.conv2", "layers.0.bn2"} <= set(outs)
    torch.export.export(new, (X,))


def test_third_party_vit_prunes_whole_heads():
    torch.manual_seed(0)
    model = my_vit().eval()
    new, report, plan = _check_zero_equivalence(model, ignore=["ln", "layers.*.ln*"])
    head_groups = [g for g in report["groups"] if any(l.endswith("attn.qkv") for l in g["layers"])]
    assert head_groups and all(g["units"] == 3 for g in head_groups)
    qkv = new.get_submodule("layers.0.attn.qkv")
    assert qkv.out_features % (3 * 16) == 0 and qkv.out_features < 144  # whole heads of width 16
    torch.export.export(new, (X,))


def test_branchy_cat_grouped_depthwise_chunk_se():
    torch.manual_seed(0)
    model = _randomize_bn(Branchy())
    new, report, _ = _check_zero_equivalence(model)
    right = new.get_submodule("right")
    dw = new.get_submodule("dw")
    assert right.groups == 4 and right.in_channels % 4 == 0 and right.out_channels % 4 == 0
    assert dw.groups == dw.in_channels == dw.out_channels < 48
    assert new.get_submodule("pw").in_channels * 2 == dw.out_channels  # chunk halves stay equal
    torch.export.export(new, (X,))


def test_tiny_transformer_separate_qkv_heads():
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    new, report, _ = _check_zero_equivalence(model, ignore=["blocks.*.pre", "blocks.*.post"])
    q = new.get_submodule("blocks.0.q")
    assert q.out_features % 8 == 0 and q.out_features < 32  # heads of width 8
    assert new.get_submodule("blocks.0.k").out_features == q.out_features


@pytest.mark.parametrize("global_pruning", [False, True])
def test_head_ratio_prunes_heads_that_the_channel_ratio_rounds_away(global_pruning):
    """0.34 of 2 heads floors to 0: without head_ratio attention stays whole; head_ratio=0.5 removes one head of
    every heads group (global mode too: heads leave the pool), exactly as zeroing it, and at 4x the tokens the
    MACs fall further than the channel pruning alone takes them."""
    torch.manual_seed(0)
    model = TinyTransformer(n_heads=2).eval()
    kw = dict(ratio=0.34, round_to=8, ignore=["blocks.*.pre", "blocks.*.post", "out"], global_pruning=global_pruning)
    _, base = prune(model, (X,), **kw)
    assert all(g["removed"] == 0 for g in base["groups"] if g["kind"] == "heads")
    plan = make_plan(model, (X,), head_ratio=0.5, **kw)
    heads = [g for g in plan.per_group if g["kind"] == "heads"]
    assert len(heads) == 2 and all(g["removed"] == 1 for g in heads)
    zeroed = zero_units(model, plan.remove)
    new, _ = prune(model, (X,), plan=plan)
    with torch.no_grad():
        torch.testing.assert_close(new(X), zeroed(X), atol=ATOL, rtol=1e-4)
    assert new.get_submodule("blocks.0.q").out_features == 16  # one head of width 16 left
    big = torch.randn(1, 3, 64, 64)
    from edgekit.metrics import count_macs

    pruned_channels_only, _ = prune(model, (X,), **kw)
    assert count_macs(new, big) < count_macs(pruned_channels_only, big)
    _, report = prune(model, (X,), head_ratio=0.5, **kw)
    assert report["head_ratio"] == 0.5 and report["macs"]["after"] == count_macs(new, X)
    with pytest.raises(UserInputError, match="head_ratio"):
        make_plan(model, (X,), ratio=0.3, head_ratio=1.0)


def test_vit_embedding_width_prunes_and_exports(tmp_path):
    torch.manual_seed(0)
    model = zoo.create("vit", pretrained=False)
    new, report = prune(model, (X,), ratio=0.5, round_to=8, ignore=["head"])
    pe = new.patch_embed.proj
    assert pe.out_channels < 64 and pe.out_channels % 8 == 0
    assert new.cls_token.shape[-1] == new.pos_embed.shape[-1] == pe.out_channels
    assert new.blocks[0].attn.num_heads < 4
    assert new(X).shape == (2, 10)
    torch.export.export(new, (X,))
    torch.onnx.export(new, (X,), str(tmp_path / "p.onnx"), dynamo=False)
    assert report["removed_per_layer"]["blocks.0.attn"]["internal"] == 2


def test_round_to_and_ignore():
    model = zoo.create("convnet", pretrained=False)
    new, report = prune(model, (X,), ratio=0.3, round_to=8, ignore=["features.0.*"])
    convs = [m for n, m in new.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert new.features[0][0].out_channels == 16  # ignored
    assert new.features[2][0].out_channels < 32


def test_global_pruning_differs_per_group():
    torch.manual_seed(0)
    model = _randomize_bn(my_resnet())
    with torch.no_grad():
        model.layers[3].bn1.weight[:24].mul_(0.01)  # 3/4 of one group clearly unimportant
    _, report = prune(model, (X,), ratio=0.3, importance="bn_gamma", global_pruning=True)
    frac = {tuple(g["layers"]): g["removed"] / g["units"] for g in report["groups"]}
    low = next(v for k, v in frac.items() if "layers.3.bn1" in k)
    assert low >= 0.7 and min(frac.values()) < 0.3  # per-layer mode would remove 0.3 everywhere


def test_taylor_needs_data_and_runs_with_it():
    from edgekit.data import load_data

    model = zoo.create("convnet", pretrained=False)
    with pytest.raises(UserInputError, match="taylor"):
        prune(model, (X,), ratio=0.3, importance="taylor")
    data = load_data()
    data.train.x, data.train.y = data.train.x[:128], data.train.y[:128]
    new, report = prune(model, (X,), ratio=0.3, importance="taylor", data=data)
    assert report["units_removed"] > 0


def test_custom_handler_registration():
    from edgekit.prune.handlers import LinearHandler, register_handler

    class Scaled(nn.Module):  # a user layer the tracer cannot see into
        def __init__(self, d):
            super().__init__()
            self.inner = nn.Linear(d, d)

        def forward(self, x):
            return self.inner(x) * 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.s, self.b = nn.Linear(8, 16), Scaled(16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.relu(self.s(torch.relu(self.a(x)))))

    x = torch.randn(3, 8)
    groups_before = len(DependencyGraph(Net(), (x,)).groups)

    @register_handler(Scaled)
    class ScaledHandler(LinearHandler):
        def prune_out(self, m, idx):
            super().prune_out(m.inner, idx)

        def prune_in(self, m, idx):
            super().prune_in(m.inner, idx)

        def zero_out(self, m, idx):
            super().zero_out(m.inner, idx)

        def tensors(self, m, side, get):
            return super().tensors(m.inner, side, get)

        def channels(self, m, side):
            return super().channels(m.inner, side)

    net = Net().eval()
    g = DependencyGraph(net, (x,))
    assert len(g.groups) == 2 and groups_before == 2
    new, _ = prune(net, (x,), ratio=0.5)
    assert new.s.inner.in_features == 8 and new.s.inner.out_features == 8 and new(x).shape == (3, 4)


def test_unknown_layer_is_frozen_not_broken():
    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(16, 16))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
            self.op = nn.GRUCell(16, 16)

        def forward(self, x):
            return self.b(self.op(self.a(x)))

    x = torch.randn(3, 8)
    new, report = prune(Net(), (x,), ratio=0.5)
    assert new.a.out_features == 16 and new(x).shape == (3, 4)


@pytest.mark.parametrize("factory", [my_resnet, my_vit, Branchy, TinyTransformer], ids=lambda f: f.__name__)
def test_export_path_equals_zeroed_dense(factory):
    """The same fx-traceable models through the torch.export (ATen) path: cat, chunk, grouped and depthwise
    convs, an SE gate, flatten into a Linear, hand-written heads."""
    from edgekit.prune.capture import CaptureMethod

    torch.manual_seed(0)
    model = _randomize_bn(factory())
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    plan = make_plan(model, (X,), ratio=0.4, ignore=ignore, method=CaptureMethod.EXPORT)
    assert plan.graph.capture_method is CaptureMethod.EXPORT and plan.remove
    zeroed = zero_units(model, plan.remove)
    new, report = prune(model, (X,), plan=plan)
    with torch.no_grad():
        dense, z, p = model(X), zeroed(X), new(X)
    assert (dense - p).abs().max() > 10 * ATOL
    torch.testing.assert_close(p, z, atol=ATOL, rtol=1e-4)
    assert report["macs"]["after"] < report["macs"]["before"] and report["capture"]["method"] == "torch.export"
