"""A packed detector output in int8 (quant/placement_tail.py): per branch one grid across the levels (ONNX Runtime
placement), and the ONNX tail rewritten to concatenate the integer tensors and dequantize once per channel, with
the same values (tolerance 0: bit-identical on ONNX Runtime). Classifier graphs are left as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

from edgekit.exporters.torch2onnx import to_onnx
from edgekit.quant.config import PTQConfig
from edgekit.quant.fakequant import ActFakeQuant
from edgekit.quant.placement_tail import integer_output_tail, integer_output_tail_file, joint_output_grids
from edgekit.quant.ptq import quantize_ptq


class TwoLevels(nn.Module):
    """The zoo detector's head shape: per level a tower, a 5-channel box conv and a C-channel class conv
    concatenated on the channels, flattened; the levels concatenated on the anchors."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.down = nn.Conv2d(8, 8, 3, 2, 1)
        self.tower = nn.ModuleList(nn.Conv2d(8, 8, 3, 1, 1) for _ in range(2))
        self.reg = nn.ModuleList(nn.Conv2d(8, 5, 1) for _ in range(2))
        self.cls = nn.ModuleList(nn.Conv2d(8, classes, 1) for _ in range(2))
        with torch.no_grad():
            for c in self.cls:
                c.weight.mul_(4.0)  # logits on a wider range than the box outputs

    def forward(self, x):
        p3 = torch.relu(self.stem(x))
        feats = [p3, torch.relu(self.down(p3))]
        levels = []
        for i, f in enumerate(feats):
            t = torch.relu(self.tower[i](f))
            levels.append(torch.cat([self.reg[i](t), self.cls[i](t)], 1).flatten(2))
        return torch.cat(levels, 2)


def _quantize(model, x, target):
    cfg = PTQConfig(target=target, calibration={"method": "minmax", "samples": len(x)}, bias_correction=False)
    return quantize_ptq(model, x, x[:1], cfg)[0]


def _output_quantizers(q) -> list[nn.Module]:
    """The quantizer module after each 1x1 head conv, in graph order (reg0, cls0, reg1, cls1)."""
    mods = dict(q.named_modules(remove_duplicate=False))
    found = []
    for n in q.graph.nodes:
        if n.op == "call_module" and isinstance(mods.get(n.target), ActFakeQuant) and n.args[0].op == "call_module" \
                and n.args[0].target.split(".")[0] in ("reg", "cls"):
            found.append(mods[n.target])
    return found


@pytest.fixture(scope="module")
def model_x():
    torch.manual_seed(0)
    return TwoLevels().eval(), torch.randn(32, 3, 16, 16)


def _ort(path, x):
    from edgekit.exporters.runtimes import ort_session

    sess = ort_session(path, 1)
    return np.stack([sess.run(None, {"input": x[i : i + 1].numpy()})[0] for i in range(len(x))])


def test_levels_share_one_grid_per_branch_on_the_ort_placement(model_x):
    model, x = model_x
    reg0, cls0, reg1, cls1 = _output_quantizers(_quantize(model, x, "onnxruntime"))
    assert reg0 is reg1 and cls0 is cls1 and reg0 is not cls0  # one module per branch, called on both levels
    assert reg0.scale_f != cls0.scale_f  # branches keep their own grids
    sep = _output_quantizers(_quantize(model, x, "tensorrt"))  # a placement without the rule: four quantizers
    assert len({id(m) for m in sep}) == 4


@pytest.mark.parametrize("target, dequantizes", [("onnxruntime", 1), ("tensorrt", 2)])
def test_integer_output_tail_is_exact(model_x, tmp_path, target, dequantizes):
    """Shared level grids: integer concat of everything, one per-channel DequantizeLinear; separate grids (the
    tensorrt placement): an integer concat per level, a DequantizeLinear per level, a float level concat. Both
    give ONNX Runtime's outputs of the unrewritten graph bit for bit."""
    import onnx

    from edgekit.quant.qdq import ort_optimized_op_types

    model, x = model_x
    q = _quantize(model, x, target)
    before = to_onnx(q, x[:1], tmp_path / "before.onnx")
    after = tmp_path / "after.onnx"
    after.write_bytes(before.read_bytes())
    assert integer_output_tail_file(after) > 0
    tail = onnx.load(str(after)).graph.node
    dq = [n for n in tail if n.op_type == "DequantizeLinear" and n.name.startswith("tail_dequantize")]
    assert len(dq) == dequantizes, [n.op_type for n in tail[-8:]]
    assert np.array_equal(_ort(before, x[:8]), _ort(after, x[:8]))  # tolerance 0
    if target == "onnxruntime":  # what ONNX Runtime runs: 4 head DQs + 3 float concats before, 1 DQ after
        ops_before, ops_after = ort_optimized_op_types(before, 1), ort_optimized_op_types(after, 1)
        assert ops_before["DequantizeLinear"] == 4 and ops_after["DequantizeLinear"] == 1, (ops_before, ops_after)
        assert ops_after["QLinearConv"] == ops_before["QLinearConv"] == 8  # the convs' kernels are untouched


def test_classifier_graphs_are_left_unchanged(tmp_path):
    """No packed multi-branch output: no tie at PTQ, no rewrite of the ONNX (the zoo classifiers' int8 graphs)."""
    import onnx

    from edgekit import models as zoo
    from edgekit.quant.ptq import trace

    model, x = zoo.create("convnet", pretrained=False).eval(), torch.randn(16, 3, 32, 32)
    gm, _ = trace(model, x[:1])
    assert joint_output_grids(gm, [n.name for n in gm.graph.nodes]) == {}
    path = to_onnx(_quantize(model, x, "onnxruntime"), x[:1], tmp_path / "cls.onnx")
    m = onnx.load(str(path))
    assert integer_output_tail(m) == 0 and m == onnx.load(str(path))


def test_ends_first_keeps_the_stem_float(model_x, tmp_path):
    """``quantize.ends: first`` (recipe int8-detect): the conv that reads the image stays float (ONNX Runtime runs
    it as its float Conv), every other conv stays int8; on a CNN nothing else changes."""
    from edgekit.quant.placement_ends import float_ends
    from edgekit.quant.ptq import trace
    from edgekit.quant.qdq import ort_optimized_op_types

    model, x = model_x
    gm, _ = trace(model, x[:1])
    assert float_ends(gm, "first") == ["stem"] and float_ends(gm, "auto") == []
    cfg = PTQConfig(ends="first", calibration={"method": "minmax", "samples": len(x)}, bias_correction=False)
    q, report = quantize_ptq(model, x, x[:1], cfg)
    assert report["float_ends"] == ["stem"], report["float_ends"]
    ops = ort_optimized_op_types(to_onnx(q, x[:1], tmp_path / "q.onnx"), 1)
    assert ops.get("QLinearConv") == 7 and ops.get("Conv", 0) + ops.get("FusedConv", 0) == 1, ops
