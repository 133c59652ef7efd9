"""Graph capture (edgekit.capture) and model outputs (edgekit.outputs) on third-party-style models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from edgekit.capture import EXPORT, FX, FixedBatch, capture, explain_export_error, layers_as_modules
from edgekit.errors import UserInputError
from edgekit.outputs import SelectOutput, choose, logits, select_output, tensor_leaves
from tests import thirdparty_models as tp

EXACT = 1e-5  # captured graph vs eager: the same ATen ops in the same order (float32)


@pytest.mark.parametrize("m", tp.params(tp.ALL))
def test_capture_runs_what_fx_cannot_trace(m):
    model = m.build()
    tp.assert_fx_fails(model)
    wrapped, choice = select_output(model, (tp.example(),), m.logits or None)
    assert choice.path == m.logits
    cap = capture(wrapped, (tp.example(1),), fx=True)
    assert cap.method == EXPORT and cap.fx_error
    assert isinstance(cap.graph_module, torch.fx.GraphModule)
    x = tp.example(3, seed=1)  # another batch size than the capture's example
    with torch.no_grad():
        ref, got = wrapped(x), cap.runnable()(x)
    assert got.shape == (3, tp.NUM_CLASSES)
    assert float((got - ref).abs().max()) <= EXACT
    # every conv / linear op maps back to a module of the user's model
    user = dict(model.named_modules())
    ops = [n for n in cap.nodes() if n.op == "call_function" and n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)]
    assert ops and all(cap.module_path(n) in user for n in ops)


def test_fx_fast_path_is_kept_for_traceable_models():
    from tests.models import my_resnet

    cap = capture(my_resnet().eval(), (tp.example(1),), fx=True)
    assert cap.method == FX and cap.fx_error is None


def test_fixed_batch_model_is_captured_at_batch_one_and_runs_any_batch():
    model = tp.MODELS["swin_tiny"].build()  # int(windows.shape[0] / n) pins the batch size
    cap = capture(model, (tp.example(1),))
    assert cap.batch_size == 1 and cap.summary()["batch_size"] == 1
    runner = cap.runnable()
    assert isinstance(runner, FixedBatch)
    x = tp.example(4, seed=2)
    with torch.no_grad():
        assert float((runner(x) - model(x)).abs().max()) <= EXACT


def test_layers_as_modules_names_layers_after_the_users_modules():
    model = tp.MODELS["mha_vit"].build()
    cap = capture(model, (tp.example(1),))
    names = layers_as_modules(cap)
    assert "blocks.0.attn.in_proj" in names and "blocks.0.attn.out_proj" in names and "head" in names
    assert isinstance(cap.graph_module.get_submodule("blocks.0.attn.in_proj"), nn.Linear)
    x = tp.example(2, seed=3)
    with torch.no_grad():
        assert float((cap.graph_module(x) - model(x)).abs().max()) <= EXACT


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        if x.mean() > 0:  # control flow on a tensor's value: no graph can hold this
            x = x * 2
        return self.fc(x.flatten(1))


def test_uncapturable_model_gets_one_clear_error_with_file_and_line():
    with pytest.raises(UserInputError) as err:
        capture(DataDependent().eval(), (tp.example(1),), fx=True, what="quantize")
    msg = str(err.value)
    assert msg.startswith("quantize: torch.export cannot capture DataDependent")
    assert "control flow on a tensor's values" in msg and "torch.where" in msg
    assert f"{__file__}:" in msg  # the user's file:line


def test_explain_names_the_user_frame_when_the_message_has_none():
    class NumpyInForward(nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy() * 2)

    try:
        torch.export.export(NumpyInForward(), (torch.randn(2, 3),), strict=False)
    except Exception as exc:  # noqa: BLE001
        msg = explain_export_error(exc, NumpyInForward())
    else:
        pytest.skip("this torch exports .numpy()")
    assert "NumpyInForward" in msg and "To fix:" in msg


def _swin_after_torchscript_export(tmp_path):
    """transformers' Swin whose last stage's window covers its whole map (8x8 with window 8, as Swin-T's 7x7 with
    window 7), exported once to ONNX by TorchScript: ``set_shift_and_window_size`` then leaves a 0-d tensor in
    ``window_size`` and the next ``torch.export`` of the instance fails on ``min(...) <= self.window_size``."""
    from edgekit.exporters.torch2onnx import to_onnx

    factory = tp._hf("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=2, embed_dim=16,
                     depths=[1, 1], num_heads=[1, 2], window_size=8, mlp_ratio=2.0)
    pytest.importorskip("transformers")
    model = factory()
    to_onnx(model, tp.example(1), tmp_path / "swin.onnx", exporter="torchscript")
    block = model.swin.encoder.layers[1].blocks[0]
    assert isinstance(block.window_size, torch.Tensor)  # what the TorchScript trace did to the model
    return model, "swin.encoder.layers.1.blocks.0.window_size"


def test_swin_captures_after_a_torchscript_export(tmp_path):
    model, attr = _swin_after_torchscript_export(tmp_path)
    with pytest.raises(Exception, match="data-dependent") as err:  # the failure this capture works around
        torch.export.export(model, (tp.example(2),), strict=False)
    assert "modeling_swin.py:" in explain_export_error(err.value, model)  # the library's file:line is named
    cap = capture(SelectOutput(model, "logits"), (tp.example(1),))  # no eager forward first (it resets window_size)
    assert cap.summary()["tensor_attributes_as_numbers"] == [attr] and cap.output == "logits"
    assert isinstance(model.swin.encoder.layers[1].blocks[0].window_size, torch.Tensor)  # restored
    x = tp.example(3, seed=4)
    with torch.no_grad():
        assert float((cap.runnable()(x) - model(x).logits).abs().max()) <= EXACT


class TensorConfig(nn.Module):
    """Keeps a config number as a 0-d tensor attribute and branches on it (not a parameter or buffer)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)
        self.min_width = torch.tensor(16)

    def forward(self, x):
        if x.shape[-1] >= self.min_width:
            x = x[..., ::2]
        return self.fc(torch.cat([x, x], -1).flatten(1))


def test_tensor_config_attributes_are_captured_as_numbers_by_every_capture():
    from edgekit.prune.capture import capture_graph

    model = TensorConfig().eval()
    cap = capture(model, (tp.example(1),))
    assert cap.summary()["tensor_attributes_as_numbers"] == ["min_width"] and isinstance(model.min_width, torch.Tensor)
    x = tp.example(3, seed=5)
    with torch.no_grad():
        assert float((cap.runnable()(x) - model(x)).abs().max()) <= EXACT
    graph = capture_graph(model, (tp.example(1),))
    assert graph.summary()["method"] == EXPORT and graph.numbers == ("min_width",)


# ----------------------------------------------------------------------------------------------- outputs


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    aux: torch.Tensor | None = None


def test_tensor_leaves_and_choose():
    t = torch.zeros(2, 10)
    value = {"feats": torch.zeros(2, 4), "out": Out(t, None), "extra": (torch.ones(1), None)}
    assert [p for p, _ in tensor_leaves(value)] == ["feats", "out.logits", "extra.0"]
    assert choose(value).path == "out.logits"  # a leaf called logits wins over the first tensor
    assert choose({"feats": t, "extra": [t]}).path == "feats"  # otherwise the first tensor
    c = choose(value, "logits")
    assert c.path == "out.logits" and c.named and c.shape == (2, 10)
    assert logits(value, "out.logits") is t
    with pytest.raises(UserInputError, match="'nope' is not among them.*'feats', 'out.logits', 'extra.0'"):
        choose(value, "nope")
    with pytest.raises(UserInputError, match="no tensor"):
        choose({"a": None})


def test_select_output_wraps_only_when_needed():
    model = tp.MODELS["dict_resnet"].build()
    wrapped, choice = select_output(model, (tp.example(),), "logits")
    assert isinstance(wrapped, SelectOutput) and wrapped.model is model
    assert "named by --output" in choice.describe() and choice.to_dict()["leaves"] == ["features", "logits"]
    plain = tp.MODELS["mha_vit"].build()
    same, c2 = select_output(plain, (tp.example(),))
    assert same is plain and not c2.wrapped
    with pytest.raises(UserInputError, match="single tensor"):
        select_output(plain, (tp.example(),), "logits")


def test_predict_accepts_tuple_and_dict_outputs():
    from edgekit.training import predict

    for name in ("mobilenet_v2", "shape_resnet"):
        model = tp.MODELS[name].build()
        out = predict(model, tp.example(5))
        assert out.shape == (5, tp.NUM_CLASSES)


def test_a_fixed_batch_model_is_captured_through_its_body_and_quantizes():
    from edgekit.quant.config import PTQConfig
    from edgekit.quant.ptq import quantize_ptq

    model = tp.MODELS["swin_tiny"].build()
    fixed = capture(model, (tp.example(1),)).runnable()  # what a pruned fixed-batch model looks like
    cap = capture(fixed, (tp.example(1),), fx=True)
    assert cap.batch_size == 1 and cap.method == FX  # its body is a GraphModule: fx traces it
    q, rep = quantize_ptq(fixed, tp.example(4, seed=1), tp.example(1), PTQConfig(calibration={"method": "minmax", "samples": 4}))
    assert isinstance(q, FixedBatch) and rep["capture"]["batch_size"] == 1 and rep["quantized_layers"]
    assert q(tp.example(3)).shape == (3, tp.NUM_CLASSES)
