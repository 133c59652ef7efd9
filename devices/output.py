"""profile.json, the rich table and the PNG plots (latency histogram, power over time)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgekit.errors import UserInputError


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def write_profile(result: dict, out_dir: str | Path, force: bool = False, plots: bool = True) -> Path:
    """Write profile.json (+ plots) into ``out_dir`` atomically: a temp dir renamed into place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserInputError(f"output directory {out_dir} exists (use --force to replace it, or --out)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        (tmp / "profile.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        if plots:
            write_plots(result, tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def write_plots(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    samples = result.get("samples", {}).get("latency_ms") or []
    if samples:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(samples, bins=min(60, max(10, len(samples) // 10)), color="#3b7dd8")
        med = result["latency_ms"]["median"]
        ax.axvline(med, color="k", linestyle="--", label=f"median {med:.3f} ms")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("runs")
        ax.set_title(f"{result['artifact']['name']} on {result['device']['name']} ({result['runtime']['name']})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "latency_hist.png", dpi=100)
        plt.close(fig)
        written.append(out_dir / "latency_hist.png")
    trace = result.get("power_trace") or {}
    if any(trace.values()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, pts in trace.items():
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
        idle = (result.get("power_w") or {}).get("idle")
        if idle is not None:
            ax.axhline(idle, color="gray", linestyle=":", label=f"idle {idle:.2f} W")
        ax.axvline(0, color="k", linewidth=0.8)
        ax.set_xlabel("time from measurement start (s)")
        ax.set_ylabel("power (W)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "power.png", dpi=100)
        plt.close(fig)
        written.append(out_dir / "power.png")
    return written


def render_table(results: dict[str, dict | Exception]):
    """A rich Table: one row per device."""
    from rich.table import Table

    table = Table(title="edgekit profile")
    for col in ("device", "runtime", "status", "median ms", "p90 ms", "p99 ms", "min/max ms", "inf/s",
                "power W (above idle)", "mJ/inf", "validation"):
        table.add_column(col)
    for name, r in results.items():
        if isinstance(r, Exception):
            table.add_row(name, "-", "[red]error[/red]", *["-"] * 7, str(r)[:60])
            continue
        lat = r.get("latency_ms") or {}
        pw = r.get("power_w")
        power = r["power_status"] if pw is None else f"{_fmt(pw['total'], '.2f')} ({_fmt(pw['above_idle'], '.2f')})"
        energy = r.get("energy_mj_per_inference") or {}
        val = r.get("validation") or {}
        vtxt = val.get("status", "-")
        if "cosine_min" in val:
            vtxt += f" cos {val['cosine_min']:.5f}"
        rt = f"{r['runtime']['name']} {r['runtime'].get('version') or ''}".strip()
        status = r["status"] if r["status"] == "ok" else f"[yellow]{r['status']}[/yellow]"
        table.add_row(name, rt, status, _fmt(lat.get("median")), _fmt(lat.get("p90")), _fmt(lat.get("p99")),
                      f"{_fmt(lat.get('min'))}/{_fmt(lat.get('max'))}", _fmt(r.get("throughput_ips"), ".1f"),
                      power, _fmt(energy.get("total"), ".3f") if energy else "-", vtxt)
    return table
