"""profile.json, the rich table and the PNG plots (latency histogram, power over time).

Emulated latency is labelled "emulated" wherever it is shown (table cells, plot titles and axes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.devices.record import Profile

def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def write_profile(result: Profile, out_dir: str | Path, force: bool = False, plots: bool = True) -> Path:
    """Write profile.json (+ plots) into ``out_dir`` atomically (refused if it exists without force)."""
    from edgekit.artifacts import atomic_output_dir

    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, force=force) as tmp:
        (tmp / "profile.json").write_text(result.to_json() + "\n")
        if plots:
            write_plots(result, tmp)
    return out_dir


def write_plots(result: Profile, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    samples = result.samples.latency_ms
    kind = " (emulated)" if result.emulated else ""
    if samples and result.latency_ms:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(samples, bins=min(60, max(10, len(samples) // 10)), color="#3b7dd8")
        med = result.latency_ms.median
        ax.axvline(med, color="k", linestyle="--", label=f"median {med:.3f} ms{kind}")
        ax.set_xlabel(f"latency (ms){kind}")
        ax.set_ylabel("runs")
        ax.set_title(f"{result.artifact.name} on {result.device.name} ({result.runtime.name}){kind}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "latency_hist.png", dpi=100)
        plt.close(fig)
        written.append(out_dir / "latency_hist.png")
    trace = result.power_trace or {}
    if any(trace.values()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, pts in trace.items():
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
        idle = result.power_w.idle if result.power_w else None
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


def render_table(results: dict[str, Profile | Exception]):
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
        lat = r.latency_ms
        pw, en, ipj, val = r.power_w, r.energy_mj_per_inference, r.inferences_per_joule, r.validation
        emu = " [yellow]emulated[/]" if r.emulated else ""
        vtxt = val.status
        if val.cosine_min is not None:
            vtxt += f" (cos {val.cosine_min:.5f}, max|d| {_fmt(val.max_abs, '.2g')})"
        rows["runtime"].append(f"{r.runtime.name} {r.runtime.version or ''}".strip())
        rows["status"].append(r.status if r.status == "ok" else f"[yellow]{r.status}[/yellow]")
        rows["latency median ms"].append(_fmt(lat and lat.median, ".4f") + emu)
        rows["latency p90 / p99 ms"].append(f"{_fmt(lat and lat.p90, '.4f')} / {_fmt(lat and lat.p99, '.4f')}{emu}")
        rows["latency min / max ms"].append(f"{_fmt(lat and lat.min, '.4f')} / {_fmt(lat and lat.max, '.4f')}{emu}")
        rows["runs"].append(f"{r.samples.n} ({r.samples.stop_reason})")
        rows["throughput inf/s"].append(_fmt(r.throughput_ips, ".1f") + emu)
        rows["power W total"].append(r.power_status if not pw else _fmt(pw.total, ".2f"))
        rows["power W above idle"].append(_fmt(pw and pw.above_idle, ".2f"))
        rows["energy mJ/inf (above idle)"].append(
            f"{_fmt(en.total, '.4f')} ({_fmt(en.above_idle, '.4f')})" if en else "-")
        rows["inf/J"].append(_fmt(ipj and ipj.total, ".1f"))
        rows["validation"].append(vtxt)
    for k, vals in rows.items():
        table.add_row(k, *vals)
    kinds = {r.latency_kind for r in results.values() if not isinstance(r, Exception)}
    if kinds == {"emulated", "native"}:
        table.caption = "emulated and native latencies are side by side here but not comparable"
    return table
