"""Conversion registry, cross-layer schedule, the ``binarize`` stage, recipes and ONNX Runtime validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.backends import available
from edgekit.data import DataBundle, Split, load_data
from edgekit.errors import UserInputError
from edgekit.models.hybrid import Hybrid
from edgekit.models.vit import VisionTransformer
from edgekit.quant.bivit.convert import BinarizeOptions, convert, register_converter
from edgekit.quant.bivit.modules import BinaryLinear, BinaryMatMul, BinarySoftmax, freeze, set_active
from edgekit.quant.bivit.pack import load_packed, restore
from edgekit.quant.bivit.schedule import make_phases
from edgekit.recipe import load_recipe
from edgekit.stages import StageContext, get_stage

# ONNX Runtime vs torch on the same binarized model: float32 epilogue differences only (the +-1 products are
# exact integers in both), so a tight absolute tolerance on O(1) logits.
ORT_ATOL = 1e-4


def tiny_vit(seed: int = 0, size: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=size, patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0).eval()


def tiny_data(n_train: int = 96, n_test: int = 64) -> DataBundle:
    full = load_data("digits", (3, 16, 16))
    tr, te = full.train, full.test
    return DataBundle("digits-small", Split(tr.x[:n_train], tr.y[:n_train]), Split(tr.x[:16], tr.y[:16]),
                      Split(te.x[:n_test], te.y[:n_test]), 10, (3, 16, 16))


def test_convert_vit_default_keeps_head_and_patch_embed():
    model = tiny_vit()
    new, rep = convert(model)
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)  # input untouched
    assert isinstance(new.head, nn.Linear) and not isinstance(new.head, BinaryLinear)
    assert isinstance(new.patch_embed.proj, nn.Conv2d)
    assert rep["kept_fp"] == ["head"]
    assert set(rep["binarized"]) == {f"blocks.{b}.{m}" for b in range(2)
                                     for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert rep["binarized"]["blocks.1.attn.qkv"] == "attn" and rep["binarized"]["blocks.0.mlp.fc2"] == "mlp"
    attn = new.blocks[0].attn
    assert isinstance(attn.matmul_qk, BinaryMatMul) and attn.matmul_qk.binarize_a
    assert isinstance(attn.matmul_av, BinaryMatMul) and not attn.matmul_av.binarize_a
    assert isinstance(attn.softmax, BinarySoftmax) and attn.softmax.mode == "softmax_aware"


def test_convert_options_keep_fp_ablation_and_w1a8():
    new, rep = convert(tiny_vit(), BinarizeOptions(keep_fp=("head*", "blocks.0.*"), softmax_aware=False))
    assert isinstance(new.blocks[0].attn.qkv, nn.Linear) and not isinstance(new.blocks[0].attn.qkv, BinaryLinear)
    assert "blocks.0.attn.qkv" in rep["kept_fp"]
    assert new.blocks[1].attn.softmax.mode == "naive"
    w1a8, _ = convert(tiny_vit(), BinarizeOptions(act_bits=8))
    assert w1a8.blocks[0].attn.matmul_qk.bits == 8 and w1a8.blocks[0].mlp.fc1.act_bits == 8
    assert not isinstance(w1a8.blocks[0].attn.softmax, BinarySoftmax)


def test_convert_hybrid_and_custom_converter():
    torch.manual_seed(0)
    hyb = Hybrid((8, 16, 32), (1, 1, 1), ("conv", "conv", "attn"), (2,)).eval()
    new, rep = convert(hyb)
    assert rep["binarized"] and all(n.startswith("features.") for n in rep["binarized"])
    with torch.no_grad():
        assert new(torch.randn(2, 3, 16, 16)).shape == (2, 10)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(UserInputError, match="no layer to binarize"):
        convert(Odd())

    class MyBlock(nn.Linear):
        pass

    seen = []

    @register_converter(MyBlock)
    def _conv(m, name, opts, keep):
        seen.append(name)
        return BinaryLinear.from_linear(m, opts.act_bits, "linear")

    net = nn.Sequential(MyBlock(4, 4))
    new, _ = convert(net, BinarizeOptions(keep_fp=()))
    assert seen == ["0"] and isinstance(new[0], BinaryLinear)


def test_phases_are_cumulative_and_ablation_has_one_phase():
    phases = make_phases(["attn", "mlp"], 5)
    assert [(p.groups, p.epochs) for p in phases] == [(("mlp",), 2), (("attn", "mlp"), 3)]
    single = make_phases(["attn", "mlp"], 5, cross_layer=False)
    assert [(p.groups, p.epochs) for p in single] == [(("attn", "mlp"), 5)]
    with pytest.raises(UserInputError, match="does not have"):
        make_phases(["attn", "mlp"], 4, order=[["linear"], ["attn"]])
    with pytest.raises(UserInputError, match="one per phase"):
        make_phases(["attn", "mlp"], 4, phase_epochs=[1, 2, 3])


def test_set_active_switches_groups_and_reinitialises_alpha():
    new, _ = convert(tiny_vit())
    set_active(new, ["mlp"])
    qkv = new.blocks[0].attn.qkv
    assert not qkv.active and new.blocks[0].mlp.fc1.active and not new.blocks[0].attn.softmax.active
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        qkv.weight.mul_(2.0)  # the float phase changes the weights
        torch.testing.assert_close(qkv(x), nn.functional.linear(x, qkv.weight, qkv.bias))
    set_active(new, ["mlp", "attn"])
    torch.testing.assert_close(qkv.alpha.detach(), qkv.weight.detach().abs().mean(1))


def test_binarize_stage_finetunes_freezes_and_writes_packed_file(tmp_path):
    fn, cfg_cls = get_stage("binarize")
    cfg = cfg_cls.model_validate({"epochs": 2, "lr": 2e-3, "distill_weight": 0.5})
    model = tiny_vit()
    ctx = StageContext(data=tiny_data(), reference=tiny_vit(), example_inputs=(torch.randn(1, 3, 16, 16),),
                       out_dir=tmp_path)
    new, report = fn(model, cfg, ctx)
    assert [p["groups"] for p in report["phases"]] == [["mlp"], ["attn", "mlp"]]
    assert all(p["epochs"] == 1 and np.isfinite(p["final_loss"]) for p in report["phases"])
    assert len(report["frozen"]["packed"]) == 8 and report["frozen"]["reverted_to_float"] == []
    assert all(m.frozen for m in new.modules() if isinstance(m, BinaryLinear))
    assert report["storage"]["binarized_layers_ratio"] > 10
    packed_path = tmp_path / report["packed_file"]
    assert load_packed(packed_path).config["act_bits"] == 1
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(restore(tiny_vit(seed=5), packed_path)(x), new(x))
    # the binarized model survives torch.export (what the pipeline saves)
    ep = torch.export.export(new, (x,), strict=False)
    assert torch.equal(ep.module()(x), new(x))


def test_stage_without_data_and_unnamed_groups():
    fn, cfg_cls = get_stage("binarize")
    ctx = StageContext(data=None, reference=tiny_vit(), example_inputs=(torch.randn(1, 3, 16, 16),))
    with pytest.raises(UserInputError, match="needs data"):
        fn(tiny_vit(), cfg_cls.model_validate({"epochs": 1}), ctx)
    # a group the order does not name joins the last phase (keep_fp, not the schedule, keeps layers in float)
    cfg = cfg_cls.model_validate({"epochs": 0, "cross_layer": {"order": [["mlp"]]}})
    new, rep = fn(tiny_vit(), cfg, ctx)
    assert rep["phases"][-1]["groups"] == ["attn", "mlp"] and len(rep["frozen"]["packed"]) == 8
    assert "packed_file" not in rep  # no output directory in API use


def test_freeze_reverts_groups_never_switched_on():
    new, _ = convert(tiny_vit())
    set_active(new, ["mlp"])
    rep = freeze(new)
    assert all(".mlp." in n for n in rep["packed"]) and "blocks.0.attn.qkv" in rep["reverted_to_float"]
    assert type(new.blocks[0].attn.qkv) is nn.Linear and new.blocks[0].mlp.fc1.frozen


def test_recipes_validate():
    for name, bits in (("bivit-w1a1", 1), ("bivit-w1a8", 8)):
        recipe = load_recipe(name)
        (stage,) = recipe.stages
        assert stage.name == "binarize" and stage.config.activation_bits == bits
    with pytest.raises(UserInputError, match="cross_layer"):
        load_recipe("bivit-w1a1", ["binarize.cross_layer.order=[[mlp],[conv]]"])
    with pytest.raises(UserInputError, match="unknown field"):
        load_recipe("bivit-w1a1", ["binarize.bits=2"])


@pytest.mark.skipif(not (available("onnx") and available("onnxruntime")), reason="onnx / onnxruntime not installed")
@pytest.mark.parametrize("act_bits,packed", [(1, False), (8, False), (1, True)])
def test_onnx_runtime_matches_torch(tmp_path, act_bits, packed):
    import onnx
    import onnxruntime as ort

    from edgekit.exporters.onnx import to_onnx
    from edgekit.quant.bivit.export import to_onnx_packed

    new, _ = convert(tiny_vit(), BinarizeOptions(act_bits=act_bits))
    freeze(new)
    new.eval()
    x = torch.randn(6, 3, 16, 16)
    if packed:
        path = to_onnx_packed(new, x[:1], tmp_path / "m.onnx")
        inits = onnx.load(str(path)).graph.initializer
        n_bits = sum(int(np.prod(i.dims)) for i in inits if i.data_type == onnx.TensorProto.UINT8)
        assert n_bits == sum(m.packed_weight.numel() for m in new.modules() if isinstance(m, BinaryLinear))
    else:
        path = to_onnx(new, x[:1], tmp_path / "m.onnx", dynamic_batch=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = new(x).numpy()
    np.testing.assert_allclose(got, expected, atol=ORT_ATOL, rtol=0)


def test_compress_pipeline_writes_packed_artifact_that_reloads(tmp_path):
    from edgekit.loading import load_model
    from edgekit.pipeline import compress

    model = tiny_vit()
    out = tmp_path / "out"
    res = compress(model, "bivit-w1a1", tiny_data(), overrides=["binarize.epochs=1"], out=out, latency=False)
    assert (out / "packed_weights.npz").is_file() and (out / "model.pt2").is_file()
    report = res.report
    assert report.size_bytes.after < report.size_bytes.before / 4
    x = torch.randn(3, 3, 16, 16)
    reloaded = load_model(str(out)).model
    with torch.no_grad():
        expected = res.model(x)
        assert torch.equal(reloaded(x), expected)
        assert torch.equal(restore(tiny_vit(seed=3), out / "packed_weights.npz")(x), expected)
