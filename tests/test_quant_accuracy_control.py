"""Accuracy-controlled int8 (as NNCF's quantize_with_accuracy_control): layers go back to float, most
sensitive first, until the drop holds; the best model is returned when it cannot."""

from __future__ import annotations

import pytest
import torch

from edgekit.quant.accuracy_control import quantize_with_max_drop
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
    assert ac["met"] and ac["drop_pt"] <= 0.5
    first = ac["steps"][0]["drop_pt"]
    assert (first > 0.5) == bool(ac["kept_float"])  # layers went back to float only if plain 4-bit dropped more
    assert res.report.accuracy.after >= plain.report.accuracy.after - 0.005


def test_stage_fails_with_the_best_found_when_max_drop_cannot_hold(digits, monkeypatch):
    import edgekit
    from edgekit.errors import EdgekitError
    from edgekit.quant import accuracy_control

    def unmet(*args, **kwargs):
        return None, {"accuracy_control": {"met": False, "drop_pt": 3.2, "kept_float": ["features.0"]}}

    monkeypatch.setattr(accuracy_control, "quantize_with_max_drop", unmet)
    with pytest.raises(EdgekitError, match=r"max_drop 0.5 pt cannot be met: the best found drops 3.2 pt .* 1 layer\(s\) in float \(features.0\)"):
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
    assert ac["split"].startswith("validation") and ac["met"] == (ac["drop_pt"] <= 0.5)
    assert ac["accuracy_float"] == pytest.approx(top1(model, vx, vy))
    assert ac["accuracy_int8"] == pytest.approx(top1(q, vx, vy))
