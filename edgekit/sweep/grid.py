"""The grid of a sweep: recipes x targets x devices, each step keyed by the content it depends on.

A step's key is the sha256 of everything that determines its result, so a rerun (or a grid extended by a
recipe, a target or a device) only runs what is new:

* compress: the model's identity (a zoo name and its checkpoint's bytes, a file's bytes, or a
  ``module:factory`` and its source file's bytes), the resolved recipe (every stage's options), the data
  spec, the seed and edgekit's version;
* export: the compress key, the target, the precision and the export options;
* profile: the export key, the device's entry in the devices file and the runtime threads when set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgekit.artifacts import sha256_file
from edgekit.errors import UserInputError


def digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def model_identity(spec: str) -> dict[str, Any]:
    """What identifies the model behind a MODEL spec, for cache keys (its bytes where it has a file)."""
    from edgekit import models

    path = Path(spec)
    if path.is_dir() and (path / "manifest.json").is_file():
        return {"output_dir": sha256_file(path / "manifest.json")}
    if path.is_file():
        return {"file": sha256_file(path)}
    if ":" in spec:
        mod = spec.split(":", 1)[0]
        try:
            found = importlib.util.find_spec(mod)
        except (ImportError, ValueError):
            found = None
        origin = Path(found.origin) if found is not None and found.origin else None
        return {"factory": spec, "source": sha256_file(origin) if origin and origin.is_file() else None}
    if spec in models.names():
        ckpt = models.info(spec).checkpoint
        return {"zoo": spec, "checkpoint": sha256_file(ckpt) if ckpt.is_file() else None}
    raise UserInputError(f"sweep: model {spec!r} is not a zoo model, a module:factory, a file or an output directory")


def parse_recipes(text: str | Sequence[str]) -> list[list[str]]:
    """``"int8,prune-30+int8"`` -> ``[["int8"], ["prune-30", "int8"]]`` (``a+b`` composes, as ``-r a -r b``)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = [[p.strip() for p in item.split("+") if p.strip()] for item in items if item.strip()]
    if not out:
        raise UserInputError("--recipes: give at least one recipe (comma-separated; a+b composes two)")
    return out


def parse_list(text: str | Sequence[str], what: str) -> list[str]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise UserInputError(f"--{what}: give at least one value (comma-separated)")
    if len(set(items)) != len(items):
        raise UserInputError(f"--{what}: {', '.join(items)} names one value twice")
    return items


@dataclass(frozen=True)
class CompressStep:
    recipe: tuple[str, ...]
    key: str
    overrides: tuple[str, ...] = ()  # the sweep's --set overrides that apply to this recipe

    @property
    def label(self) -> str:
        return "+".join(self.recipe)


@dataclass(frozen=True)
class ExportStep:
    compress: CompressStep
    target: str
    key: str


@dataclass(frozen=True)
class ProfileStep:
    export: ExportStep
    device: str
    key: str


@dataclass
class Grid:
    """The steps of a sweep, built once; every step has its content key."""

    model: str
    data: str | None
    seed: int
    overrides: tuple[str, ...]
    compress: list[CompressStep] = field(default_factory=list)
    exports: list[ExportStep] = field(default_factory=list)
    profiles: list[ProfileStep] = field(default_factory=list)


def build_grid(model: str, recipes: list[list[str]], targets: list[str], devices: list[str], *, data: str | None,
               seed: int, overrides: Sequence[str] = (), devices_file: str | None = None, profile_threads: int = 0) -> Grid:
    """Resolve every recipe and device before any work: a bad name fails the whole sweep at once (exit 2)."""
    from edgekit import __version__
    from edgekit.devices.spec import load_devices
    from edgekit.exporters.base import capabilities
    from edgekit.recipe import load_recipe

    if profile_threads < 0:
        raise UserInputError(f"--threads {profile_threads}: give 0 (the runtime's default) or a positive count")
    for t in targets:
        capabilities(t)  # unknown target -> UserInputError naming the accepted ones
    known = load_devices(devices_file)
    for d in devices:
        if d not in known:
            raise UserInputError(f"--devices: unknown device {d!r}; known: {', '.join(sorted(known))} (add one with `edgekit devices add`)")
    ident = model_identity(model)
    grid = Grid(model, data, seed, tuple(overrides))
    used: set[str] = set()
    for names in recipes:
        stages = {st.name for st in load_recipe(names).stages}
        mine = [o for o in overrides if o.split(".", 1)[0] in stages or o.split(".", 1)[0] == "measure"]
        used.update(mine)
        rec = load_recipe(names, mine)
        step = CompressStep(tuple(names), digest("compress", ident, rec.to_dict(), data, seed, __version__), tuple(mine))
        grid.compress.append(step)
        for t in targets:
            ex = ExportStep(step, t, digest("export", step.key, t))
            grid.exports.append(ex)
            for d in devices:
                dev = known[d]
                entry = dev.model_dump(mode="json") if hasattr(dev, "model_dump") else repr(dev)
                extra = [{"threads": profile_threads}] if profile_threads else []  # 0: the runtime default (keys unchanged)
                grid.profiles.append(ProfileStep(ex, d, digest("profile", ex.key, d, entry, *extra)))
    unused = [o for o in overrides if o not in used]
    if unused:
        raise UserInputError(f"--set {unused[0]!r}: no recipe of the sweep has that stage "
                             "(an override applies to each recipe that has the stage it names)")
    return grid
