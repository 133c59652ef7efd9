"""N:M sparsity: masks, eligibility, SR-STE / MDGF / SDGF rules, and the pattern surviving fusion and export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import edgekit.models as zoo
from edgekit.data import load_data
from edgekit.prune import nm
from edgekit.stages import StageContext, get_stage


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (1, 8), (2, 8), (4, 16)])
def test_mask_keeps_n_largest_along_input_channels(n, m):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 32, 3, 3, generator=g)
    mask = nm.nm_mask(w, n, m)
    for o in range(8):
        for i in range(3):
            for j in range(3):
                col = w[o, :, i, j]
                for c in range(0, 32, m):
                    grp, mk = col[c : c + m], mask[o, c : c + m, i, j]
                    assert int(mk.sum()) == n
                    assert set(torch.topk(grp.abs(), n).indices.tolist()) == set(torch.nonzero(mk).flatten().tolist())
    lin = torch.randn(16, 32, generator=g)
    lm = nm.nm_mask(lin, n, m)
    assert torch.all(lm.reshape(16, -1, m).sum(-1) == n)
    assert nm.check_pattern(lin * lm, n, m) and not nm.check_pattern(lin, n, m)


def test_eligibility_asp_rules():
    assert nm.eligibility(nn.Conv2d(32, 32, 3, groups=32)) == (False, "depthwise conv")
    assert nm.eligibility(nn.Linear(16, 10))[1] == "out 10 % 8 != 0"
    assert nm.eligibility(nn.Linear(24, 16))[1] == "in 24 % 16 != 0"
    assert nm.eligibility(nn.Conv2d(3, 16, 3))[0] is False
    assert nm.eligibility(nn.Conv2d(32, 64, 1)) == (True, "")
    assert nm.eligibility(nn.Linear(24, 16), m=4, rule="any") == (True, "")


def test_srste_gradient_formula():
    w = torch.randn(8, 16, requires_grad=True)
    sched = nm.Schedule(2, 4, "srste", lam=0.1)
    out = nm.NMWeight(sched)(w)
    g = torch.randn(8, 16)
    out.backward(g)
    mask = nm.nm_mask(w, 2, 4)
    torch.testing.assert_close(out, (w * mask).detach())
    torch.testing.assert_close(w.grad, g + 0.1 * (1 - mask) * w.detach())


def test_mdgf_alpha_and_forward():
    lin = nm.Schedule(2, 4, "mdgf", decay="linear", rate=1e-3, dense_steps=10, total_steps=2000, final_steps=100)
    assert lin.alpha(5) == 1.0 and lin.alpha(10 + 500) == pytest.approx(0.5) and lin.alpha(10 + 5000) == 0.0
    ex = nm.Schedule(2, 4, "mdgf", decay="exp", rate=2e-4)
    assert ex.alpha(1000) == pytest.approx(math.exp(-0.2))
    w = torch.randn(8, 16, requires_grad=True)
    ex.step = 1000
    out = nm.NMWeight(ex)(w)
    mask = nm.nm_mask(w, 2, 4)
    a = math.exp(-0.2)
    torch.testing.assert_close(out, (w * (mask + (1 - mask) * a)).detach())
    out.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones_like(w))  # dense gradient
    lin.step = 1950  # final phase: plain W * M with a masked gradient
    w.grad = None
    out = nm.NMWeight(lin)(w)
    out.sum().backward()
    torch.testing.assert_close(w.grad, nm.nm_mask(w, 2, 4))


def test_sdgf_frames_and_schedule():
    assert nm.sdgf_frames(1, 8, "sparsify") == [(7, 8), (4, 8), (2, 8), (1, 8)]
    assert nm.sdgf_frames(1, 8, "fine") == [(8, 64), (4, 32), (2, 16), (1, 8)]
    s = nm.Schedule(1, 8, "sdgf", dense_steps=100, total_steps=500, frames=nm.sdgf_frames(1, 8, "sparsify"))
    assert [s.frame(t) for t in (0, 150, 199, 200, 350, 499)] == [(7, 8), (7, 8), (7, 8), (4, 8), (2, 8), (1, 8)]


def test_describe_pattern_dense_and_sparse():
    lin = nn.Linear(32, 16)
    assert nm.describe_pattern(lin)[0]["n"] is None
    with torch.no_grad():
        lin.weight.mul_(nm.nm_mask(lin.weight, 1, 8))
    row = nm.describe_pattern(lin)[0]
    assert (row["n"], row["m"]) == (1, 8) and row["sparsity"] == pytest.approx(0.875)
    assert nm.compressed_bytes(lin.weight, 2, 4) == 16 * 32 // 4 * 2 * 2 + 16 * 32 // 4 * 2 * 2 // 8


def _small_data():
    data = load_data()
    data.train.x, data.train.y = data.train.x[:128], data.train.y[:128]
    data.test.x, data.test.y = data.test.x[:64], data.test.y[:64]
    return data


def test_sparsify_stage_survives_fusion_and_onnx(tmp_path):
    pytest.importorskip("onnx")
    import onnx
    from onnx import numpy_helper

    from edgekit.fusion import fuse

    fn, cfg_cls = get_stage("sparsify")
    model = zoo.create("convnet")
    x = torch.randn(1, 3, 32, 32)
    ctx = StageContext(_small_data(), model, (x,))
    sparse, report = fn(model, cfg_cls(n=2, m=4, method="srste", finetune={"epochs": 1, "lr": 1e-3}), ctx)
    skipped = {s["layer"]: s["reason"] for s in report["skipped"]}
    assert skipped["features.0.0"] == "in 3 % 16 != 0" and skipped["head"] == "out 10 % 8 != 0"
    assert len(report["layers"]) == 5 and all((r["n"], r["m"]) == (2, 4) for r in report["per_layer"])
    assert ctx.state["sparsity"]["n"] == 2
    fused, _ = fuse(sparse)
    rows = {r["layer"]: r for r in nm.describe_pattern(fused)}
    assert all(rows[name]["n"] == 2 and rows[name]["m"] == 4 for name in report["layers"])
    path = tmp_path / "s.onnx"
    torch.onnx.export(fused, (x,), str(path), dynamo=False, input_names=["input"])
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    sparse_ws = [w for w in weights if w.ndim == 4 and nm.check_pattern(torch.from_numpy(w.copy()), 2, 4)]
    assert len(sparse_ws) == 5


def test_sparsify_pattern_survives_int8_qdq(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from edgekit.exporters.onnx import quantize_static_qdq

    model = zoo.create("convnet")
    layers, _ = nm.eligible_layers(model, 4)
    nm.apply_masks(model, layers, 2, 4)
    x = torch.randn(1, 3, 32, 32)
    fp32, int8 = tmp_path / "f.onnx", tmp_path / "q.onnx"
    torch.onnx.export(model, (x,), str(fp32), dynamo=False, input_names=["input"])
    calib = load_data().calib.x[:8].numpy()
    quantize_static_qdq(fp32, int8, calib)
    q = onnx.load(str(int8))
    ints = [numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    sparse = [w for w in ints if nm.check_pattern(torch.from_numpy(w.astype(np.float32)), 2, 4)]
    assert len(sparse) == len(layers) == 5
