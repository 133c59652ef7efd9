"""What a target's preflight sees of the model it is asked to export: :class:`ExportSource`.

For a compress output directory it carries the recipe that made the model (name and stage configs from the
output's manifest, how many layers an N:M stage sparsified from its report), so a target can refuse before any
work with the recipe that would work (TensorRT: ``int8`` -> ``int8-sym``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


@dataclass
class ExportSource:
    """What the target's :meth:`Exporter.preflight` sees: the module, its name and, for a compress output,
    the recipe that made it (name and stage configs as written in its manifest)."""

    model: nn.Module
    name: str
    recipe: str | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None  # the compress output directory, when the model came from one

    def stage(self, kind: str) -> dict[str, Any] | None:
        """The config of the first stage ``kind`` (``quantize``, ``sparsify``, ...) of the recipe, if any."""
        for st in self.stages:
            if isinstance(st, dict) and kind in st:
                return st[kind] or {}
        return None

    def nm(self) -> tuple[int, int] | None:
        """(n, m) of an N:M sparsify stage in the recipe, else None."""
        st = self.stage("sparsify")
        return (int(st.get("n", 2)), int(st.get("m", 4))) if st is not None else None

    def nm_layers_expected(self) -> int | None:
        """How many layers the sparsify stage made N:M (from the compress output's report.json)."""
        if self.path is None or self.nm() is None:
            return None
        try:
            report = json.loads((self.path / "report.json").read_text())
        except (OSError, ValueError):
            return None
        for st in report.get("stages", []):
            if isinstance(st, dict) and st.get("name") == "sparsify":
                return len((st.get("report") or {}).get("per_layer") or [])
        return None

    def compress_command(self, recipe: str) -> str:
        return f"edgekit compress {self.name} --recipe {recipe}"


def compress_recipe(model_or_path: Any) -> tuple[str | None, list[dict[str, Any]], Path | None]:
    """Recipe name and stages of a compress output directory (from its manifest), else (None, [], None)."""
    if not isinstance(model_or_path, (str, Path)) or not Path(model_or_path).is_dir():
        return None, [], None
    try:
        manifest = json.loads((Path(model_or_path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None, [], None
    recipe = manifest.get("recipe") if isinstance(manifest, dict) else None
    if not isinstance(recipe, dict):
        return None, [], None
    stages = recipe.get("stages") if isinstance(recipe.get("stages"), list) else []
    name = recipe.get("name") if isinstance(recipe.get("name"), str) else None
    return name, stages, Path(model_or_path)


def digest(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
