"""Support matrix, generated from the registries: every zoo model x every export target x its precisions.

onnx / openvino / tvm: export and validate numerically against PyTorch (fp32 and fp16; int8 has its own
tests in test_export_targets.py). coreml: export and pass the Linux structural checks (fp16; numeric only on
macOS). tensorrt: skipped without tensorrt + GPU, with the reason. When EDGEKIT_EXPORT_MATRIX_LOG is set, each
result is appended there as one JSON line; ``python -m edgekit.exporters.matrix`` turns it into docs/targets.md.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm is imported: one thread per xdist worker

import pytest

import edgekit.models as zoo
from edgekit.exporters.base import capabilities, target_names

NUMERIC = ("onnx", "openvino", "tvm")
MATRIX_PRECISIONS = {"onnx": ("fp32", "fp16"), "openvino": ("fp32", "fp16"), "tvm": ("fp32", "fp16"), "coreml": ("fp16",)}
MATRIX_OPTIONS = {"tvm": {"llvm_opt_level": 1}}  # halves TVM compile time; numerics are unchanged
VALIDATION_SAMPLES = 16
LOG = os.environ.get("EDGEKIT_EXPORT_MATRIX_LOG")


def _cases():
    for target in target_names():
        precisions = MATRIX_PRECISIONS.get(target, capabilities(target).precisions)
        for precision in precisions:
            for name in zoo.names():
                yield pytest.param(name, target, precision, id=f"{name}-{target}-{precision}")


_models: dict[str, object] = {}


def _randomize(model):
    """No checkpoint: random init often gives near-constant outputs (BN at defaults, zero-init gammas/heads),
    which would make validation vacuous. Randomize BN statistics/affines and all-zero parameters."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
                if mod.weight is not None:
                    mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
        for p in model.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _model(name: str):
    if name not in _models:
        info = zoo.info(name)
        trained = info.checkpoint.is_file()
        _models[name] = zoo.create(name, pretrained=trained) if trained else _randomize(zoo.create(name, pretrained=False))
    return _models[name]


def _record(row: dict) -> None:
    if LOG:
        with open(LOG, "a") as fh:  # O_APPEND: one short line per write, safe across xdist workers
            fh.write(json.dumps(row) + "\n")


@pytest.mark.parametrize("name,target,precision", list(_cases()))
def test_export_matrix(name, target, precision, tmp_path):
    from edgekit.exporters import export
    from edgekit.exporters.tensorrt import gpu_available

    row = {"model": name, "target": target, "precision": precision,
           "weights": "checkpoint" if zoo.info(name).checkpoint.is_file() else "random init, BN randomized"}
    if target == "tensorrt":
        ok, why = gpu_available()
        if not ok:
            _record({**row, "status": "skipped", "reason": why})
            pytest.skip(f"tensorrt engine build needs tensorrt and an NVIDIA GPU: {why}")
    t0 = time.perf_counter()
    try:
        art = export(_model(name), target, precision, out=tmp_path / "art", validation_samples=VALIDATION_SAMPLES,
                     **MATRIX_OPTIONS.get(target, {}))
    except Exception as exc:
        _record({**row, "status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"})
        raise
    rep = art.report
    out = rep.outputs.get("output", {})
    _record({
        **row, "status": "passed" if rep.passed else "failed", "numeric": rep.numeric,
        "cosine": out.get("cosine"), "rel_err": out.get("rel_err"), "top1_agreement": rep.top1_agreement,
        "skipped": rep.skipped, "seconds": round(time.perf_counter() - t0, 2),
        "export_seconds": art.manifest["export_seconds"], "failures": rep.failures,
    })
    assert rep.passed, rep.summary()
    if target in NUMERIC:
        assert rep.numeric and rep.outputs, "onnx/openvino/tvm must be validated numerically here"
    if target == "coreml":
        names = {c["name"] for c in rep.checks}
        assert {"package loads", "input name/shape/dtype", "output shape/dtype", "ops are CoreML MIL ops"} <= names
    manifest = json.loads((art.directory / "manifest.json").read_text())
    assert manifest["target"] == target and manifest["precision"] == precision
    assert "reference.npz" in manifest["files"] and manifest["model_file"] in {p.split("/")[0] for p in manifest["files"]}
