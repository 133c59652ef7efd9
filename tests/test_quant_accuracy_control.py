"""Accuracy-controlled int8 (as NNCF's quantize_with_accuracy_control): layers go back to float, most
sensitive first, until the drop holds; the best model is returned when it cannot."""

from __future__ import annotations

import pytest
import torch

from edgekit.quant.accuracy_control import quantize_with_max_drop, validation_images
from edgekit.quant.config import PTQConfig
from edgekit.quant.fakequant import QuantWeight

OPTS = PTQConfig(calibration={"method": "minmax", "samples": 64})


def _int8_layers(m) -> int:
    return sum(isinstance(x, QuantWeight) for x in m.modules())


def _penalised(per_layer_pt: float):
    """An evaluator whose accuracy falls by ``per_layer_pt`` points per int8 layer (0.9 in float)."""
    return lambda m: 0.9 - per_layer_pt / 100 * _int8_layers(m)


def test_reverts_the_most_sensitive_layers_until_the_drop_holds(digits):
    from edgekit import models

    model = models.create("convnet")
    x, y = digits.calib.x[:64], digits.calib.y[:64]
    q, rep = quantize_with_max_drop(model, x, y, x[:1], OPTS, max_drop=2.5, evaluate=_penalised(1.0))
    ac = rep["accuracy_control"]
    n = _int8_layers(q)
    assert ac["met"] and ac["drop_pt"] == n <= 2.5  # one point per layer still in int8
    assert len(ac["kept_float"]) == ac["steps"][0]["drop_pt"] - n  # exactly as many reverted as needed
    assert [s["drop_pt"] for s in ac["steps"]] == sorted((s["drop_pt"] for s in ac["steps"]), reverse=True)
    assert set(ac["kept_float"]).isdisjoint(rep["quantized_layers"])


def test_no_revert_when_int8_already_holds(digits):
    from edgekit import models

    model = models.create("convnet")
    x, y = digits.calib.x[:128], digits.calib.y[:128]
    q, rep = quantize_with_max_drop(model, x, y, x[:1], OPTS, max_drop=0.5)
    ac = rep["accuracy_control"]
    assert ac["kept_float"] == [] and len(ac["steps"]) == 1 and ac["met"] == (ac["drop_pt"] <= 0.5)


def test_budget_that_cannot_be_met_returns_the_best_found(digits):
    from edgekit import models

    model = models.create("convnet")
    x, y = digits.calib.x[:64], digits.calib.y[:64]
    q, rep = quantize_with_max_drop(model, x, y, x[:1], OPTS, max_drop=0.1, max_reverted=2, evaluate=_penalised(1.0))
    ac = rep["accuracy_control"]
    assert not ac["met"] and len(ac["kept_float"]) == 2 and ac["drop_pt"] == ac["steps"][-1]["drop_pt"]
    assert ac["drop_pt"] == min(s["drop_pt"] for s in ac["steps"])


@pytest.mark.slow
def test_compress_max_drop_holds_on_4bit_weights(digits):
    """A constructed case that does drop (4-bit weights): the stage keeps layers in float until it holds."""
    import edgekit

    plain = edgekit.compress("convnet", "int8", digits, latency=False, overrides=["quantize.weight_bits=4"])
    res = edgekit.compress("convnet", "int8", digits, latency=False,
                           overrides=["quantize.weight_bits=4", "quantize.max_drop=0.5"])
    ac = res.report.stage("quantize").report["accuracy_control"]
    assert ac["criterion"] == "disagreement" and ac["met"] and ac["drop_pt"] <= ac["drop_bound_pt"] <= 0.5
    first = ac["steps"][0]["bound_pt"]  # the share of changed predictions (the default criterion), plain 4-bit
    assert (first > 0.5) == bool(ac["kept_float"])  # layers went back to float only if plain 4-bit changed more
    assert res.report.accuracy.after >= plain.report.accuracy.after - 0.005


def test_stage_fails_with_the_best_found_when_max_drop_cannot_hold(digits, monkeypatch):
    import edgekit
    from edgekit.errors import EdgekitError
    from edgekit.quant import accuracy_control

    def unmet(*args, **kwargs):
        return None, {"accuracy_control": {"met": False, "drop_pt": 3.2, "kept_float": ["features.0"],
                                           "validation": kwargs["validation_info"]}}

    monkeypatch.setattr(accuracy_control, "quantize_with_max_drop", unmet)
    with pytest.raises(EdgekitError, match=r"max_drop 0.5 pt cannot be met: the best found drops 3.2 pt \(drop judged at "
                       r"3.2 pt\) on the 1258 train validation images with 1 layer\(s\) in float \(features.0\)"):
        edgekit.compress("convnet", "int8", digits, latency=False, overrides=["quantize.max_drop=0.5"])


class _Residual(torch.nn.Module):
    """A small net with a residual add, written the usual way (not from the zoo)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + self.body(h)
        return self.head(h.mean((2, 3)))


def _add_quantized(m) -> bool:
    from edgekit.quant.fakequant import ActFakeQuant
    from edgekit.quant.ptq import graph_of

    g = graph_of(m)
    if not isinstance(g, torch.fx.GraphModule):  # the float model
        return False
    mods = dict(g.named_modules())
    return any(n.op == "call_function" and "add" in n.name and any(
        u.op == "call_module" and isinstance(mods.get(u.target), ActFakeQuant) for u in n.users)
        for n in g.graph.nodes)


def test_a_drop_from_a_weightless_op_is_found_and_needless_reverts_go_back_to_int8():
    """The drop comes only from the residual add's output quantizer: reverting weight layers does not help, so
    the control goes on to the add, then re-quantizes the layers it had kept in float for nothing."""
    torch.manual_seed(0)
    model = _Residual().eval()
    x = torch.randn(32, 3, 8, 8)
    y = torch.randint(0, 10, (32,))
    q, rep = quantize_with_max_drop(model, x, y, x[:1], OPTS, max_drop=0.5,
                                    evaluate=lambda m: 0.9 - 0.01 * _add_quantized(m))
    ac = rep["accuracy_control"]
    assert ac["steps"][0]["drop_pt"] == pytest.approx(1.0)
    assert ac["met"] and ac["drop_pt"] == pytest.approx(0.0) and len(ac["kept_float"]) == 1
    assert ac["kept_float"][0].startswith("add") and not _add_quantized(q)
    tried = ac["steps"][-1]["kept_float"]
    assert len(tried) > 1 and sorted(ac["requantized"]) == sorted(tried[:-1])  # weight layers first, not needed
    assert _int8_layers(q) == 3 and ac["validation_images"] == 32 and ac["resolution_pt"] == pytest.approx(3.125)


def test_the_drop_is_measured_on_the_validation_images_when_given(digits):
    """validation=(x, y): the drop is measured there, not on the calibration images (which the model was
    calibrated on), and the report says so."""
    from edgekit import models
    from edgekit.outputs import logits

    def top1(m, xs, ys):
        with torch.no_grad():
            return float((logits(m.eval()(xs)).argmax(1) == ys).float().mean())

    model = models.create("convnet")
    x, y = digits.calib.x[:64], digits.calib.y[:64]
    vx, vy = digits.train.x[:50], digits.train.y[:50]
    q, rep = quantize_with_max_drop(model, x, y, x[:1], OPTS, max_drop=0.5, validation=(vx, vy))
    ac = rep["accuracy_control"]
    assert ac["validation_images"] == 50 and ac["resolution_pt"] == pytest.approx(2.0)
    assert ac["validation"]["held_out"] and ac["met"] == (ac["drop_pt"] <= 0.5)
    assert ac["accuracy_float"] == pytest.approx(top1(model, vx, vy))
    assert ac["accuracy_int8"] == pytest.approx(top1(q, vx, vy))


def _digests(x):
    from edgekit.quant.accuracy_control import _digest

    return {_digest(img) for img in x}


def test_validation_images_default_to_training_images_held_out_from_calibration(digits):
    from edgekit.data import DataBundle, Split

    vx, vy, info = validation_images(digits)  # every training image (1258 < the 2000 asked for)
    assert info == {"set": "train", "images": 1258, "held_out": True, "requested": 2000, "calibration_images_skipped": 0}
    assert torch.equal(vx, digits.train.x) and torch.equal(vy, digits.train.y)
    vx, vy, info = validation_images(digits, samples=400)
    assert info["images"] == 400 and torch.equal(vx, digits.train.x[:400])
    assert _digests(vx).isdisjoint(_digests(digits.calib.x))
    # a train split that holds the calibration images (separate train source: calibration is drawn from it)
    cal, tr = digits.calib, digits.train
    mixed = DataBundle("mixed", Split(torch.cat([cal.x[:30], tr.x[:20]]), torch.cat([cal.y[:30], tr.y[:20]])),
                       Split(cal.x[:30], cal.y[:30]), digits.test, 10, digits.input_shape)
    vx, vy, info = validation_images(mixed, samples=25)
    assert info["images"] == 20 and info["calibration_images_skipped"] == 30
    assert torch.equal(vx, tr.x[:20]) and torch.equal(vy, tr.y[:20])
    vx, vy, info = validation_images(mixed, "calibration", calib_used=12)
    assert info == {"set": "calibration", "images": 12, "held_out": False} and torch.equal(vy, cal.y[:12])


def test_no_labeled_held_out_images_is_a_user_error(digits):
    from edgekit.data import DataBundle, Split
    from edgekit.errors import UserInputError

    cal = digits.calib
    unlabeled = DataBundle("u", Split(digits.train.x[:8], None), cal, digits.test, 10, digits.input_shape)
    only_calib = DataBundle("c", Split(cal.x[:8], cal.y[:8]), cal, digits.test, 10, digits.input_shape)
    for bundle, why in ((unlabeled, "no labels"), (only_calib, "only calibration images")):
        with pytest.raises(UserInputError, match=f"data {bundle.name!r} has {why}: .*max_drop_validation=calibration"):
            validation_images(bundle)


def test_cli_max_drop_without_held_out_images_exits_2(tmp_path, cli):
    """Every image is calibration or test (train fraction 0): the default held-out validation has nothing to
    measure on, so the CLI says how to choose instead of judging on the calibration images."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((20, 3, 32, 32)).astype(np.float32), y=np.arange(20) % 10)
    r = cli("compress", "convnet", "--data", str(tmp_path / "d.npz"), "--max-drop", "0.5", "--no-latency",
            "--out", str(tmp_path / "o"), "--set", "data.split.train=0", "--set", "data.split.calibration=0.5",
            "--set", "data.split.test=0.5")
    assert r.returncode == 2, r.stderr[-800:]
    assert "no training images" in r.stderr and "quantize.max_drop_validation=calibration" in r.stderr
    assert not (tmp_path / "o").exists()


def test_compress_max_drop_reports_the_held_out_validation_set(digits, monkeypatch):
    """The stage hands the control held-out training images by default (or the calibration images when chosen),
    and the report records which and how many."""
    import edgekit
    from edgekit.quant import accuracy_control

    seen = {}
    real = accuracy_control.quantize_with_max_drop

    def spy(model, calib, labels, example, opts, max_drop, max_reverted=None, **kw):
        seen["calib"], seen["val"], seen["unlabeled"] = calib, kw["validation"][0], kw["unlabeled"]
        seen["requantize"] = kw["requantize"]
        return real(model, calib, labels, example, opts, max_drop, max_reverted, evaluate=lambda m: 0.9, **kw)

    monkeypatch.setattr(accuracy_control, "quantize_with_max_drop", spy)
    res = edgekit.compress("convnet", "int8", digits, latency=False, overrides=["quantize.max_drop=0.5"])
    ac = res.report.stage("quantize").report["accuracy_control"]
    assert ac["validation"]["set"] == "train" and ac["validation"]["images"] == ac["validation_images"] == 1258
    assert _digests(seen["val"]).isdisjoint(_digests(seen["calib"]))
    assert torch.equal(seen["unlabeled"], digits.calib.x)  # the default criterion also counts changes there
    assert seen["requantize"] == ac["requantize"] == "bonferroni"  # the stage's default backward pass
    res = edgekit.compress("convnet", "int8", digits, latency=False,
                           overrides=["quantize.max_drop=0.5", "quantize.max_drop_validation=calibration",
                                      "quantize.max_drop_confidence=1", "quantize.max_drop_requantize=same"])
    ac = res.report.stage("quantize").report["accuracy_control"]
    assert ac["validation"] == {"set": "calibration", "images": len(digits.calib), "held_out": False}
    assert seen["requantize"] == ac["requantize"] == "same"
    assert ac["confidence_z"] == 1.0
    assert torch.equal(seen["val"], seen["calib"]) and seen["unlabeled"] is None


def test_confidence_judges_the_drop_at_its_upper_bound():
    """confidence z: the budget holds at drop + z * sqrt(flipped) / n, so a model whose measured drop is within
    budget but whose validation predictions flipped keeps reverting (z = 0: the measured drop, no revert)."""
    from edgekit.outputs import logits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(512, 10)).eval()
    x = torch.randn(48, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the float model gets right: every flip is a loss
    opts = OPTS.model_copy(update={"weight_bits": 4})
    _, plain = quantize_with_max_drop(model, x, y, x[:1], opts, max_drop=50.0, validation=(x, y))
    q, strict = quantize_with_max_drop(model, x, y, x[:1], opts, max_drop=50.0, validation=(x, y), confidence=200.0)
    p, s = plain["accuracy_control"], strict["accuracy_control"]
    first = s["steps"][0]
    assert p["met"] and p["kept_float"] == [] and p["drop_bound_pt"] == p["drop_pt"] and p["confidence_z"] == 0.0
    assert 0 < first["drop_pt"] == p["drop_pt"] <= 50.0 < first["bound_pt"]  # within budget, but images flipped
    assert s["kept_float"] and s["met"]
    with torch.no_grad():
        flipped = int((logits(q(x)).argmax(1) != y).sum())
    assert s["drop_bound_pt"] == pytest.approx(s["drop_pt"] + 200.0 * 100 * flipped ** 0.5 / 48, abs=2e-3)


def _flipping_case():
    """A small float model, images, and labels set so that its 4-bit quantization loses as many validation images
    as it gains: the top-1 drop is 0 while several predictions change."""
    from edgekit.outputs import logits
    from edgekit.quant.ptq import quantize_ptq

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(512, 10)).eval()
    x = torch.randn(64, 3, 8, 8)
    opts = OPTS.model_copy(update={"weight_bits": 4})
    q, _ = quantize_ptq(model, x, x[:1], opts)
    with torch.no_grad():
        pf, pq = logits(model(x)).argmax(1), logits(q(x)).argmax(1)
    flipped = (pf != pq).nonzero().flatten()
    flipped = flipped[: len(flipped) // 2 * 2]
    y = pf.clone()
    y[flipped[1::2]] = pq[flipped[1::2]]  # every other changed image: right after quantization, wrong before
    return model, x, y, opts, len(flipped)


def test_disagreement_keeps_a_layer_float_where_the_drop_sees_nothing():
    """Quantization loses and gains as many images: the labeled drop is 0 (criterion drop: nothing goes back to
    float), while the share of changed predictions is over budget, so the disagreement criterion reverts layers
    until at most that share changes, on the validation and on the unlabeled images each."""
    from edgekit.outputs import logits

    model, x, y, opts, changed = _flipping_case()
    assert changed >= 2  # the construction: 4-bit weights change some predictions of this seed
    budget = 100 * (changed - 1) / 64  # below the share of validation images that change
    extra = x[:16]  # unlabeled images (here copies of validation images), judged on their own
    _, by_drop = quantize_with_max_drop(model, x, y, x[:1], opts, budget, validation=(x, y), criterion="drop")
    q, by_changes = quantize_with_max_drop(model, x, y, x[:1], opts, budget, validation=(x, y),
                                           criterion="disagreement", unlabeled=extra)
    d, c = by_drop["accuracy_control"], by_changes["accuracy_control"]
    assert d["steps"][0]["drop_pt"] == pytest.approx(0.0) and d["met"] and d["kept_float"] == []
    assert c["criterion"] == "disagreement" and c["judged_images"] == 80 and c["confidence_z"] == 0.0
    assert c["steps"][0]["bound_pt"] > budget and c["kept_float"] and c["met"]
    with torch.no_grad():
        on_val = int((logits(model(x)).argmax(1) != logits(q(x)).argmax(1)).sum())
        on_extra = int((logits(model(extra)).argmax(1) != logits(q(extra)).argmax(1)).sum())
    assert c["drop_bound_pt"] == pytest.approx(100 * max(on_val / 64, on_extra / 16), abs=1e-3)
    assert c["drop_bound_pt"] <= budget
    with pytest.raises(Exception, match="accepted: drop, disagreement"):
        quantize_with_max_drop(model, x, y, x[:1], opts, budget, validation=(x, y), criterion="flips")


class _Attention(torch.nn.Module):
    """Self-attention written by hand with a fused qkv projection (as timm's ViT blocks)."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.embed, self.norm, self.head = torch.nn.Linear(dim, dim), torch.nn.LayerNorm(dim), torch.nn.Linear(dim, 10)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm(self.embed(x))).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.head(self.proj(out).mean(1))


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_op_sensitivity_ranks_the_attention_matmul_whose_inputs_are_qkv_slices(target):
    """Both inputs of q @ k^T are slices of the one qkv output quantizer (tied quantizers; on the OpenVINO placement
    no quantizer of their own): the op is still ranked (its quantizers act through their source and its output), so
    the control can return it to float."""
    from edgekit.quant.accuracy_control import op_sensitivity
    from edgekit.quant.ptq import quantize_ptq

    torch.manual_seed(0)
    model = _Attention().eval()
    x = torch.randn(32, 8, 16)
    calibrated, _ = quantize_ptq(model, x, x[:1], OPTS.model_copy(update={"target": target}), do_freeze=False)
    ranked = {r["layer"]: r["sqnr_db"] for r in op_sensitivity(calibrated, x)}
    assert {"matmul", "matmul_1"} <= set(ranked) and all(v < float("inf") for v in ranked.values())


def test_corrected_z_is_the_bonferroni_quantile_of_the_forward_level():
    from statistics import NormalDist

    from edgekit.quant.accuracy_control import corrected_z

    normal = NormalDist()
    for z, trials in ((1.0, 2), (1.0, 27), (1.0, 66), (1.64, 10)):
        assert corrected_z(z, trials) == pytest.approx(normal.inv_cdf(1 - normal.cdf(-z) / trials), abs=1e-4)
    assert corrected_z(1.0, 1) == 1.0 and corrected_z(0.0, 30) == 0.0  # one trial: no correction; z 0: no guard
    assert 1.0 < corrected_z(1.0, 5) < corrected_z(1.0, 50) < 3.0


def _deep_mlp(seed: int):
    torch.manual_seed(seed)
    body = [m for _ in range(6) for m in (torch.nn.Linear(16, 16), torch.nn.ReLU())]
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 16), torch.nn.ReLU(), *body,
                               torch.nn.Linear(16, 10)).eval(), torch.randn(400, 3, 4, 4)


def test_requantizations_are_judged_at_the_bonferroni_corrected_z():
    """The backward pass tries one re-quantization per revert on the same images: each is judged at the corrected z
    (the final model passes that stricter bound), and at least one re-quantization that the forward z alone would
    accept is refused (the same run with requantize=same returns more layers to int8)."""
    from edgekit.outputs import logits
    from edgekit.quant.accuracy_control import corrected_z

    opts = OPTS.model_copy(update={"weight_bits": 4})
    differs = 0
    for seed in range(8):
        model, x = _deep_mlp(seed)
        with torch.no_grad():
            y = ref = model(x).argmax(1)
        runs = {rz: quantize_with_max_drop(model, x[:64], y[:64], x[:1], opts, 2.0, validation=(x, y), confidence=1.0,
                                           criterion="disagreement", requantize=rz) for rz in ("bonferroni", "same")}
        (q, rep), (_, same) = runs["bonferroni"], runs["same"]
        ac, sa = rep["accuracy_control"], same["accuracy_control"]
        forward = ac["steps"][-1]["kept_float"]
        assert forward == sa["steps"][-1]["kept_float"]  # the forward pass is the same
        if not ac["met"] or len(forward) < 2:
            continue
        assert ac["requantize_trials"] == len(forward) - 1
        assert ac["requantize_z"] == pytest.approx(corrected_z(1.0, len(forward) - 1), abs=1e-4) and ac["requantize_z"] > 1
        with torch.no_grad():
            changed = int((logits(q(x)).argmax(1) != ref).sum())
        if ac["requantized"]:  # the last accepted model passed the corrected bound
            assert (changed + ac["requantize_z"] * changed ** 0.5) / 400 * 100 <= 2.0 + 1e-6
        assert ac["drop_bound_pt"] == pytest.approx((changed + changed ** 0.5) / 4, abs=1e-3)  # reported at z = 1
        assert sa["requantize_z"] == 1.0 and ac["requantize"] == "bonferroni"
        differs += len(sa["requantized"]) > len(ac["requantized"])
    assert differs  # some re-quantization passed at z = 1 and not at the corrected z
    with pytest.raises(Exception, match="accepted: same, bonferroni"):
        quantize_with_max_drop(model, x[:64], y[:64], x[:1], opts, 2.0, validation=(x, y), requantize="holm")
