"""A TVM artifact (Relax VM library from the exporter) profiles locally and validates on the runner."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.devices import read_artifact
from edgekit.devices.profile import ProfileOptions, profile
from edgekit.devices.spec import LocalDevice

pytest.importorskip("tvm")


def test_profile_tvm_artifact(tmp_path):
    from edgekit.exporters import export

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    art = export(model, "tvm", "fp32", out=tmp_path / "tvm", example_inputs=torch.randn(1, 3, 16, 16), validation_samples=8)
    assert art.report.passed
    r = profile(read_artifact(tmp_path / "tvm"), LocalDevice(name="local"),
                ProfileOptions(budget_s=0.5, warmup_s=0.05, warmup_runs=3, idle_s=0.0, min_runs=20, threads=1))
    assert r.status == "ok" and r.runtime.name == "tvm"
    assert r.samples.n >= 20 and r.latency_ms.median > 0
    assert r.validation.status == "passed" and r.validation.max_abs < 1e-4


def test_scheduled_pipeline_matches_torch(tmp_path):
    """exporters.tvm_schedule (zero-trial heuristic schedules + fast erf) computes what the model computes:
    a transformer-ish stack (matmul, GELU, LayerNorm, softmax) within 1e-5 of PyTorch."""
    import numpy as np

    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.exporters.tvm import host_target, import_onnx, load_vm
    from edgekit.exporters.tvm_schedule import compile_scheduled

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.norm = nn.Linear(32, 64), nn.Linear(64, 32), nn.LayerNorm(32)

        def forward(self, x):
            h = self.norm(self.fc2(nn.functional.gelu(self.fc1(x))))
            return torch.softmax(h @ h.transpose(-2, -1), dim=-1) @ h

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 17, 32)
    onnx_path = to_onnx(model, x, tmp_path / "m.onnx")
    compile_scheduled(import_onnx(onnx_path, x.shape), host_target()).export_library(str(tmp_path / "m.so"))
    with torch.no_grad():
        ref = model(x).numpy()
    got = load_vm(tmp_path / "m.so", threads=1)(x.numpy())
    assert np.abs(got - ref).max() <= 1e-5


def _small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.GELU(), nn.Flatten(), nn.LayerNorm(256), nn.Linear(256, 4)).eval()
    return model, torch.randn(1, 3, 16, 16)


@pytest.mark.slow
def test_tvm_schedule_heuristic_export(tmp_path):
    """-O schedule=heuristic exports a library that passes validation and says so in the manifest."""
    import json

    from edgekit.exporters import export

    model, x = _small()
    art = export(model, "tvm", "fp32", out=tmp_path / "h", example_inputs=x, validation_samples=8, schedule="heuristic")
    assert art.report.passed
    assert json.loads((tmp_path / "h" / "manifest.json").read_text())["tvm_schedule"] == "heuristic"


def test_tvm_tune_cross_device_refused(tmp_path):
    """-O tune needs candidates timed on the device: an aarch64 target is refused by name before any work."""
    from edgekit.errors import UserInputError
    from edgekit.exporters import export

    model, x = _small()
    with pytest.raises(UserInputError, match="aarch64"):
        export(model, "tvm", "fp32", out=tmp_path / "t", example_inputs=x, validation_samples=8, tune=8, device="aarch64")
    assert not (tmp_path / "t" / "model.so").exists()


@pytest.mark.slow
def test_tvm_tune_caches_and_reuses(tmp_path):
    """-O tune=N runs MetaSchedule, stores its database under a key of the model's kernels and the target, and
    a second export of the same structure (other weights) searches nothing and reuses it; both validate and
    the tuned library profiles."""
    import json

    from edgekit.exporters import export

    model, x = _small()
    cache = tmp_path / "cache"
    art = export(model, "tvm", "fp32", out=tmp_path / "a", example_inputs=x, validation_samples=8, tune=4,
                 tune_cache=str(cache))
    assert art.report.passed
    info = json.loads((tmp_path / "a" / "manifest.json").read_text())["tvm_tune"]
    assert info["trials_searched_now"] == 4 and not info["reused"] and info["tasks"] >= 2
    records = (cache / info["key"] / "database_tuning_record.json").read_text().splitlines()
    # every task's zero-trial schedule is measured into the database first (the search has to beat it), then
    # the 4 trials' candidates
    assert 1 <= info["heuristic_seeded"] <= info["tasks"]
    assert len(records) >= info["heuristic_seeded"] + 1
    torch.manual_seed(1)
    other, _ = _small()
    for p in other.parameters():
        p.data.normal_()
    art2 = export(other, "tvm", "fp32", out=tmp_path / "b", example_inputs=x, validation_samples=8, tune=4,
                  tune_cache=str(cache))
    info2 = json.loads((tmp_path / "b" / "manifest.json").read_text())["tvm_tune"]
    assert art2.report.passed and info2["key"] == info["key"]
    assert info2["reused"] and info2["trials_searched_now"] == 0 and info2["search_s_now"] == 0
    assert (cache / info["key"] / "database_tuning_record.json").read_text().splitlines() == records
    r = profile(read_artifact(tmp_path / "b"), LocalDevice(name="local"),
                ProfileOptions(budget_s=0.3, warmup_s=0.05, warmup_runs=2, idle_s=0.0, min_runs=10, threads=1))
    assert r.status == "ok" and r.validation.status == "passed"


def test_tune_fills_integer_inputs_with_ones():
    """MetaSchedule times each candidate on filled input buffers; random integers crashed the measuring process
    (SIGFPE) while tuning I-ViT's integer graph, whose kernels divide by values computed from their inputs.
    Integer buffers are filled with ones (never a zero divisor nor an index out of range), float buffers stay
    random."""
    import numpy as np
    import tvm

    from edgekit.exporters.tvm_tune import _measure_fill

    fill = _measure_fill(tvm)
    for dtype in ("int8", "uint8", "int32", "int64"):
        buf = tvm.runtime.empty((4, 8), dtype)
        fill(buf)
        assert (buf.numpy() == 1).all(), dtype
    floats = tvm.runtime.empty((64,), "float32")
    fill(floats)
    assert np.unique(floats.numpy()).size > 32  # random, not a constant


def test_search_covers_the_kernels_that_take_the_time():
    """The budget goes to the kernels making up 90% of the seeded time x weight, or to more of them while each
    gets 64 trials; a kernel without a seeded time is always searched."""
    from types import SimpleNamespace

    from edgekit.exporters.tvm_tune import select_tasks

    tasks = [SimpleNamespace(name=n, weight=w) for n, w in
             [("mm", 12), ("ln", 24), ("copy", 12), ("tiny", 1), ("odd", 1)]]
    us = {"mm": 200.0, "ln": 20.0, "copy": 5.0, "tiny": 1.0}  # "odd": no seeded time
    key = lambda t: t.name  # noqa: E731
    pick = lambda trials: [t.name for t in select_tasks(tasks, us, trials, key=key)]  # noqa: E731
    # time x weight: mm 2400, ln 480, copy 60, tiny 1 (of 2941): mm + ln = 98% >= 90%
    assert pick(64) == ["mm", "ln", "odd"]
    assert pick(4 * 64) == ["mm", "ln", "copy", "odd"]  # the budget gives 4 kernels 64 trials each
    assert pick(100 * 64) == ["mm", "ln", "copy", "tiny", "odd"]
    assert [t.name for t in select_tasks(tasks, {}, 8, key=key)] == ["mm", "ln", "copy", "tiny", "odd"]
