"""``inspect``: what a model or an artifact holds — params, MACs, size on disk, and a per-layer table."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from edgekit.errors import UserInputError


def _dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _optional(module: str, attr: str):
    """An optional per-layer column provided by a stage package (None while it has not landed)."""
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def inspect_model(spec: str | None = None, arch: str | None = None, trust_pickle: bool = False, timing: bool = False) -> dict[str, Any]:
    """Describe MODEL (anything ``load_model`` takes) or an exported artifact directory."""
    from edgekit.artifacts import read_manifest
    from edgekit.loading import load_model
    from edgekit.metrics import count_macs, count_params, layer_table, storage_bytes
    from edgekit.pipeline import LAYERS_FILE

    path = Path(spec) if spec else None
    if path is not None and path.is_dir() and (path / "manifest.json").is_file():
        manifest = read_manifest(path)
        if manifest.get("kind") != "compressed-model":
            return {
                "kind": "artifact",
                "path": str(path),
                "target": manifest.get("target"),
                "precision": manifest.get("precision"),
                "size_on_disk": _dir_size(path),
                "files": {k: (path / k).stat().st_size for k in manifest.get("files", {}) if (path / k).exists()},
                "manifest": {k: v for k, v in manifest.items() if k not in ("files",)},
            }
    loaded = load_model(spec, arch=arch, trust_pickle=trust_pickle)
    shape = loaded.input_shape or (3, 32, 32)
    example = torch.randn(1, *shape)
    saved_layers = path / LAYERS_FILE if path is not None and path.is_dir() else None
    try:
        if saved_layers is not None and saved_layers.is_file():
            # a torch.export program has lost its module structure: compress saved the live model's table
            total, rows = count_macs(loaded.model, example), json.loads(saved_layers.read_text())
        else:
            total, rows = layer_table(loaded.model, example)
    except Exception as exc:  # noqa: BLE001
        raise UserInputError(f"model {loaded.name} does not run on an input of shape {tuple(example.shape)}: {exc}") from None
    info: dict[str, Any] = {
        "kind": "model",
        "model": loaded.name,
        "source": loaded.source,
        "input_shape": list(shape),
        "params": count_params(loaded.model),
        "macs": total,
        "size_bytes": storage_bytes(loaded.model),
        "size_on_disk": _dir_size(Path(loaded.source)) if Path(loaded.source).exists() else None,
        "layers": rows,
    }
    pattern = _optional("edgekit.prune.nm", "describe_pattern")
    if pattern is not None:
        by_layer = {r["layer"]: r for r in pattern(loaded.model)}
        for row in rows:
            p = by_layer.get(row["name"])
            if p is not None and p.get("n") is not None:
                row["nm"] = f"{p['n']}:{p['m']}"
    if timing:
        macps = _optional("edgekit.ops.profile", "layer_macps")
        if macps is not None:
            by_name = {r["name"]: r for r in macps(loaded.model, example)}
            for row in rows:
                r = by_name.get(row["name"])
                if r is not None:
                    row["ms"] = r["seconds"] * 1e3
                    row["gmacps"] = r["macps"] / 1e9 if r.get("macps") else None
    return info
