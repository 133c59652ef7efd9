"""Test and benchmark helpers, kept out of the wheel: small ONNX and OpenVINO artifacts (artifact contract)."""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.devices.artifact import sha256_file


def make_onnx_artifact(out_dir: str | Path, shape: tuple[int, int, int] = (3, 16, 16), width: int = 8,
                       classes: int = 10, seed: int = 0, n_ref: int = 4, dynamic_batch: bool = True) -> Path:
    """A tiny conv net exported to ONNX (torch.onnx, dynamo=False) with manifest.json and reference.npz."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(shape[0], width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes),
    ).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, *shape)
    torch.onnx.export(model, (x,), str(out_dir / "model.onnx"), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
                      opset_version=17, dynamo=False)
    inputs = torch.randn(n_ref, *shape)
    with torch.no_grad():
        outputs = model(inputs)
    np.savez(out_dir / "reference.npz", inputs=inputs.numpy().astype(np.float32),
             outputs=outputs.numpy().astype(np.float32))
    files = {name: sha256_file(out_dir / name) for name in ("model.onnx", "reference.npz")}
    manifest = {"target": "onnx", "model_file": "model.onnx", "files": files, "input_name": "input",
                "input_shape": [1, *shape], "precision": "fp32", "dynamic_batch": dynamic_batch}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir


def make_openvino_artifact(onnx_artifact: str | Path, out_dir: str | Path) -> Path:
    """The same model as OpenVINO IR (model.xml/.bin), with the ONNX artifact's reference.npz."""
    import shutil

    import openvino as ov

    src, out_dir = Path(onnx_artifact), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(src / "model.onnx")), str(out_dir / "model.xml"), compress_to_fp16=False)
    shutil.copy(src / "reference.npz", out_dir / "reference.npz")
    manifest = json.loads((src / "manifest.json").read_text())
    manifest.update(target="openvino", model_file="model.xml",
                    files={n: sha256_file(out_dir / n) for n in ("model.xml", "model.bin", "reference.npz")})
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir
