"""Where channel pruning shows up in latency: per dependency group and per allocation (issue 12, MobileNetV2).

    python -m benchmarks.prune_allocation --phase build [--workdir DIR]      # under chrt -i 0: prune + export
    python -m benchmarks.prune_allocation --phase time [--workdir DIR] [--runs 150]   # under the bench lock
    python -m benchmarks.prune_allocation --phase report [--workdir DIR] [--note TEXT]  # the section from time.json

The `prune-50` target of issue 12 (latency reduction >= 0.8x the MAC reduction) is met on ResNet-50 and ViT-S
and missed on MobileNetV2 (docs/benchmarks.md, `thirdparty_vs_peers`). This study asks whether another choice of
*which* channels to remove would meet it. On the third-party ``transformers`` MobileNetV2 (224, random init,
latency only) the build phase writes:

- one ONNX file per dependency group with only that group pruned (half its channels, counts at multiples of 8,
  L1 importance): the group's marginal latency saving against its MAC saving, ``dLat / dMAC``;
- allocations over the whole model: prune-50 as shipped (every group at 0.5) and ``scope="depthwise"`` at
  0.5-0.8 (the expanded channels of each inverted-residual block: its expand 1x1 output, the depthwise 3x3 and
  the reduce 1x1 input; the residual-stream groups, whose 1x1 convs lose MACs on both sides, stay whole).

The time phase times every file on ONNX Runtime and OpenVINO (2 threads, ORT spinning off), all variants of a
runtime interleaved in a random order each round, medians; and the dense model's kernel time (the runtime's own
per-node profile) beside its wall time: what a call spends outside kernels does not shrink with channels.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._report import command_line, machine_note, markdown_table, write_section  # noqa: E402
from benchmarks.thirdparty_vs_peers import build, interleaved, ort_kernel_ms, ov_kernel_ms, uptime, variant_runner  # noqa: E402

SECTION = "prune_allocation"
RUNTIMES = ("onnxruntime", "openvino")
DEPTHWISE_RATIOS = (0.5, 0.6, 0.7, 0.8)


def _example() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def build_phase(workdir: Path) -> dict[str, Any]:
    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.metrics import count_macs
    from edgekit.prune.structured import holds_depthwise, make_plan, prune

    x = _example()
    model = build("mobilenetv2")
    rec: dict[str, Any] = {"macs": {"dense": count_macs(model, x)}, "groups": {}, "allocations": {}}
    workdir.mkdir(parents=True, exist_ok=True)
    to_onnx(model, x, workdir / "dense.onnx")
    plan_kw = dict(ratio=0.5, round_to=8, ignore=["classifier*"])
    groups = make_plan(build("mobilenetv2"), (x,), **plan_kw).graph.groups
    depthwise = [gi for gi, g in enumerate(groups) if holds_depthwise(model, g)]
    variants: dict[str, Any] = {f"g{gi}": gi for gi in range(len(groups))}
    variants["prune-50"] = "all"
    variants.update({f"depthwise-{r:.1f}": r for r in DEPTHWISE_RATIOS})
    for key, what in variants.items():
        if what == "all":  # prune-50 as shipped
            pruned, _ = prune(build("mobilenetv2"), (x,), **plan_kw)
        elif isinstance(what, float):  # depthwise groups only, at ratio `what`
            pruned, _ = prune(build("mobilenetv2"), (x,), ratio=what, round_to=8, ignore=["classifier*"],
                              scope="depthwise")
            rec["allocations"][key] = {"ratio": what, "groups": len(depthwise)}
        else:  # one group alone
            plan = make_plan(build("mobilenetv2"), (x,), **plan_kw)
            roots = {u.root for u in plan.graph.groups[what].units}
            plan.remove = [u for u in plan.remove if u.root in roots]
            g = groups[what]
            rec["groups"][key] = {"first_layer": g.layers[0], "units": len(g.units), "depthwise": what in depthwise,
                                  "removed": len(plan.remove)}
            pruned, _ = prune(build("mobilenetv2"), (x,), plan=plan)
        rec["macs"][key] = count_macs(pruned, x)
        to_onnx(pruned.eval(), x, workdir / f"{key}.onnx")
        print(f"{key}: MACs x{rec['macs'][key] / rec['macs']['dense']:.3f}", flush=True)
    rec["allocations"]["prune-50"] = {"ratio": 0.5, "groups": len(groups)}
    (workdir / "build.json").write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def time_phase(workdir: Path, runs: int) -> dict[str, Any]:
    rec = json.loads((workdir / "build.json").read_text())
    x = _example().numpy()
    keys = list(rec["macs"])
    out: dict[str, Any] = {"runs": runs, "ms": {}, "kernel_ms": {}, "uptime": {}, "command": command_line()}
    for rt in RUNTIMES:
        before = uptime()
        samples = interleaved({k: variant_runner(workdir / f"{k}.onnx", x, rt) for k in keys}, runs, warmup=5)
        out["ms"][rt] = {k: float(np.median(v)) for k, v in samples.items()}
        kern = ort_kernel_ms if rt == "onnxruntime" else ov_kernel_ms
        out["kernel_ms"][rt] = {k: kern(workdir / f"{k}.onnx", x, 50) for k in ("dense", "prune-50")}
        out["uptime"][rt] = [before, uptime()]
    (workdir / "time.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def _ratio(dl: float, dm: float) -> str:
    return f"{dl / dm:.2f}" if dm > 0 else "-"


def report(rec: dict[str, Any], t: dict[str, Any]) -> str:
    macs, ms = rec["macs"], t["ms"]
    dm = {k: 1 - macs[k] / macs["dense"] for k in macs}
    dl = {rt: {k: 1 - ms[rt][k] / ms[rt]["dense"] for k in ms[rt]} for rt in RUNTIMES}
    grows = []
    for k, g in rec["groups"].items():
        grows.append([k, g["first_layer"].replace("mobilenet_v2.", ""), g["units"],
                      "depthwise (expanded)" if g["depthwise"] else "stream / other", f"{dm[k]:.3f}"]
                     + [v for rt in RUNTIMES for v in (f"{dl[rt][k]:+.3f}", _ratio(dl[rt][k], dm[k]))])
    arows = []
    for k in ("prune-50", *[f"depthwise-{r:.1f}" for r in DEPTHWISE_RATIOS]):
        if k in macs:
            arows.append([k, f"{macs[k] / macs['dense']:.3f}"]
                         + [v for rt in RUNTIMES for v in (f"{ms[rt][k]:.2f}", f"{ms[rt][k] / ms[rt]['dense']:.3f}",
                                                           _ratio(dl[rt][k], dm[k]))])
    kern = t["kernel_ms"]
    krows = [[rt, f"{ms[rt]['dense']:.2f}", f"{kern[rt]['dense']:.2f}", f"{ms[rt]['dense'] - kern[rt]['dense']:.2f}",
              f"{ms[rt]['prune-50']:.2f}", f"{kern[rt]['prune-50']:.2f}"] for rt in RUNTIMES]
    loads = "; ".join(f"{rt}: before `{a}`, after `{b}`" for rt, (a, b) in t["uptime"].items())
    lines = [
        "## Where channel pruning shows up in latency: MobileNetV2 per group and per allocation (issue 12)",
        "",
        f"`{t.get('command') or command_line()}` (the files: `python -m benchmarks.prune_allocation --phase build`, under `chrt -i 0`)  ",
        f"{machine_note()}. Medians of {t['runs']} interleaved rounds per runtime (every file once per round, random "
        f"order), batch 1, 2 threads, ONNX Runtime spinning off. `uptime`: {loads}.",
        "",
        "`transformers` MobileNetV2 1.0 at 224, random init (latency only), dependency groups of edgekit's graph "
        "(classifier ignored), L1 importance, channel counts at multiples of 8. `dMAC` / `dLat` = 1 - pruned / dense; "
        "`lat/MAC` = dLat / dMAC (the issue's target: >= 0.8 for the whole model).",
        "",
        "### One group at a time (half its channels removed, the rest dense)",
        "",
        markdown_table(["variant", "first layer", "units", "kind", "dMAC", "ORT dLat", "ORT lat/MAC", "OV dLat",
                        "OV lat/MAC"], grows),
        "",
        "### Allocations over the whole model",
        "",
        markdown_table(["allocation", "MACs x", "ORT ms", "ORT latency x", "ORT lat/MAC", "OV ms", "OV latency x",
                        "OV lat/MAC"], arows),
        "",
        "### Wall time vs kernel time (the runtime's own per-node profile, sum of each node's median)",
        "",
        markdown_table(["runtime", "dense wall ms", "dense kernels ms", "outside kernels ms", "prune-50 wall ms",
                        "prune-50 kernels ms"], krows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=("build", "time", "report", "all"), default="all",
                   help="report: write the section again from the workdir's time.json (e.g. with another --note)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/edgekit-prune-allocation"))
    p.add_argument("--runs", type=int, default=150)
    p.add_argument("--note", action="append", default=[], help="a paragraph appended to the section")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.phase in ("build", "all"):
        build_phase(args.workdir)
    if args.phase in ("time", "report", "all"):
        rec = json.loads((args.workdir / "build.json").read_text())
        t = time_phase(args.workdir, args.runs) if args.phase != "report" else \
            json.loads((args.workdir / "time.json").read_text())
        md = report(rec, t)
        md += "".join(f"\n{n}\n" for n in args.note)
        print(md)
        if not args.no_write:
            write_section(SECTION, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
