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
