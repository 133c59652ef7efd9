"""Sweep results: one typed record per cell, the Pareto front, the ranking under constraints, the plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgekit.errors import UserInputError
from edgekit.records import Record

OBJECTIVES = {"latency": "latency_ms", "energy": "energy_mj", "size": "file_bytes"}


@dataclass
class SweepCell(Record):
    """One (recipe, target, device) cell: what it cost and what it kept."""

    recipe: str
    target: str
    device: str
    state: str  # works | ready, not validated | refused | failed | not profiled
    error: str | None = None
    precision: str | None = None
    accuracy: float | None = None  # top-1 of the compressed model (PyTorch, test split)
    accuracy_drop_pt: float | None = None  # before - after, in points
    latency_ms: float | None = None
    latency_ci95_ms: list[float] | None = None
    latency_kind: str | None = None  # native | emulated
    energy_mj: float | None = None
    file_bytes: int | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)  # per step kind: read from the cache?


@dataclass
class SweepResult(Record):
    """``sweep.json``: the model, the grid, every cell, and how long the run took (and what it reused)."""

    SCHEMA_VERSION: ClassVar[int] = 1

    model: str
    recipes: list[str]
    targets: list[str]
    devices: list[str]
    cells: list[SweepCell]
    wall_s: float
    steps_run: dict[str, int]
    steps_cached: dict[str, int]

    @classmethod
    def _build(cls, fields: dict[str, Any]) -> "SweepResult":
        fields["cells"] = [SweepCell.from_dict(c, "sweep.cells") for c in fields.get("cells", [])]
        return cls(**fields)


def parse_size(text: str | None) -> int | None:
    if text is None:
        return None
    units = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise UserInputError(f"--max-size {text!r}: expected a positive size such as 4MB, 512KB or 2MiB")
    return int(value * units[unit])


def ranked(cells: list[SweepCell], objective: str, max_drop: float | None = None, max_size: int | None = None) -> list[SweepCell]:
    """The working cells that meet the constraints, best first by ``objective``."""
    if objective not in OBJECTIVES:
        raise UserInputError(f"--objective {objective!r}; accepted: {', '.join(OBJECTIVES)}")
    key = OBJECTIVES[objective]
    ok = [c for c in cells if c.state == "works" and getattr(c, key) is not None]
    if max_drop is not None:
        ok = [c for c in ok if c.accuracy_drop_pt is not None and c.accuracy_drop_pt <= max_drop]
    if max_size is not None:
        ok = [c for c in ok if c.file_bytes is not None and c.file_bytes <= max_size]
    return sorted(ok, key=lambda c: (getattr(c, key), -(c.accuracy or 0.0)))


def pareto(cells: list[SweepCell], cost: str) -> list[SweepCell]:
    """Cells no other cell beats on both accuracy (higher) and ``cost`` (lower); sorted by cost."""
    pts = [c for c in cells if c.state == "works" and c.accuracy is not None and getattr(c, cost) is not None]
    front = []
    for c in pts:
        dominated = any(
            o is not c and o.accuracy >= c.accuracy and getattr(o, cost) <= getattr(c, cost)
            and (o.accuracy > c.accuracy or getattr(o, cost) < getattr(c, cost))
            for o in pts
        )
        if not dominated:
            front.append(c)
    return sorted(front, key=lambda c: getattr(c, cost))


def plot(result: SweepResult, out_dir: Path) -> list[Path]:
    """Accuracy vs latency (and vs energy where measured) per device, the Pareto front marked; PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for device in result.devices:
        cells = [c for c in result.cells if c.device == device]
        for cost, label in (("latency_ms", "latency (ms, median)"), ("energy_mj", "energy per inference (mJ)")):
            pts = [c for c in cells if c.state == "works" and c.accuracy is not None and getattr(c, cost) is not None]
            if not pts:
                continue
            kind = {c.latency_kind for c in pts if c.latency_kind} or {"native"}
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for t in sorted({c.target for c in pts}):
                sub = [c for c in pts if c.target == t]
                ax.scatter([getattr(c, cost) for c in sub], [c.accuracy * 100 for c in sub], label=t, alpha=0.8)
                for c in sub:
                    ax.annotate(c.recipe, (getattr(c, cost), c.accuracy * 100), fontsize=7, alpha=0.7)
            front = pareto(pts, cost)
            ax.plot([getattr(c, cost) for c in front], [c.accuracy * 100 for c in front], "k--", lw=1, label="Pareto front")
            ax.set_xlabel(label + (" — emulated" if "emulated" in kind else ""))
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_title(f"{result.model} on {device}")
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out_dir / f"pareto-{device}-{cost.split('_')[0]}.png"
            tmp = path.with_name(f".{path.name}.tmp")
            fig.savefig(tmp, dpi=110, format="png")
            plt.close(fig)
            tmp.replace(path)  # atomic: a plot is whole or absent
            written.append(path)
    return written
