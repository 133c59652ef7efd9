"""profile.json, the rich table and the PNG plots (latency histogram, power over time)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any



def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def write_profile(result: dict, out_dir: str | Path, force: bool = False, plots: bool = True) -> Path:
    """Write profile.json (+ plots) into ``out_dir`` atomically (refused if it exists without force)."""
    from edgekit.artifacts import atomic_output_dir

    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, force=force) as tmp:
        (tmp / "profile.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        if plots:
            write_plots(result, tmp)
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
    """A rich Table: one column per device, one row per figure (fits a narrow terminal)."""
    from rich.table import Table

    table = Table(title="edgekit profile")
    table.add_column("")
    for name in results:
        table.add_column(name, justify="right")
    rows: dict[str, list[str]] = {k: [] for k in (
        "runtime", "status", "latency median ms", "latency p90 / p99 ms", "latency min / max ms", "runs",
        "throughput inf/s", "power W total", "power W above idle", "energy mJ/inf (above idle)", "inf/J",
        "validation")}
    for r in results.values():
        if isinstance(r, Exception):
            for k in rows:
                rows[k].append("[red]error[/red]" if k == "status" else "-")
            continue
        lat = r.get("latency_ms") or {}
        pw = r.get("power_w") or {}
        en = r.get("energy_mj_per_inference") or {}
        val = r.get("validation") or {}
        vtxt = val.get("status", "-")
        if "cosine_min" in val:
            vtxt += f" (cos {val['cosine_min']:.5f}, max|d| {val['max_abs']:.2g})"
        rows["runtime"].append(f"{r['runtime']['name']} {r['runtime'].get('version') or ''}".strip())
        rows["status"].append(r["status"] if r["status"] == "ok" else f"[yellow]{r['status']}[/yellow]")
        rows["latency median ms"].append(_fmt(lat.get("median"), ".4f"))
        rows["latency p90 / p99 ms"].append(f"{_fmt(lat.get('p90'), '.4f')} / {_fmt(lat.get('p99'), '.4f')}")
        rows["latency min / max ms"].append(f"{_fmt(lat.get('min'), '.4f')} / {_fmt(lat.get('max'), '.4f')}")
        rows["runs"].append(f"{r['samples']['n']} ({r['samples']['stop_reason']})")
        rows["throughput inf/s"].append(_fmt(r.get("throughput_ips"), ".1f"))
        rows["power W total"].append(r["power_status"] if not pw else _fmt(pw.get("total"), ".2f"))
        rows["power W above idle"].append(_fmt(pw.get("above_idle"), ".2f"))
        rows["energy mJ/inf (above idle)"].append(
            f"{_fmt(en.get('total'), '.4f')} ({_fmt(en.get('above_idle'), '.4f')})" if en else "-")
        rows["inf/J"].append(_fmt((r.get("inferences_per_joule") or {}).get("total"), ".1f"))
        rows["validation"].append(vtxt)
    for k, vals in rows.items():
        table.add_row(k, *vals)
    return table
