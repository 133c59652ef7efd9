"""Where channel pruning shows up in latency: per dependency group and per allocation (issue 12, MobileNetV2).

    python -m benchmarks.prune_allocation --phase build [--workdir DIR]      # under chrt -i 0: prune + export
    python -m benchmarks.prune_allocation --phase time [--workdir DIR] [--runs 150]   # under the bench lock
    python -m benchmarks.prune_allocation --phase classes [--workdir DIR]   # under the lock: by layer class
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
The classes phase profiles dense and prune-50 by layer class (1x1 expand, 3x3 depthwise, 1x1 reduce, ...) beside
each class's MACs and activation bytes: whether the kernels' time follows the MACs or the bytes they move.
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
from benchmarks.thirdparty_vs_peers import build, interleaved, node_ms, ort_kernel_ms, ov_kernel_ms, uptime, variant_runner  # noqa: E402

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


# MobileNetV2 layer classes, by the module path the exported node names keep (``/mobilenet_v2/layer.3/expand_1x1/``)
LAYER_CLASSES = (("first_conv", "stem 3x3 conv"), ("expand_1x1", "1x1 expand"), ("conv_3x3", "3x3 depthwise"),
                 ("reduce_1x1", "1x1 reduce"), ("conv_1x1", "last 1x1 conv"), ("classifier", "classifier"))


def layer_class(node_name: str, op: str = "") -> str:
    for token, cls in LAYER_CLASSES:
        if f"/{token}/" in node_name or node_name.endswith(f"/{token}") or f"{token}_" in node_name.split("/")[-1]:
            return cls
    return "layout reorders" if "Reorder" in op or "Reorder" in node_name else "other"


def class_work(path: Path, x: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """``{layer class: {"macs": n, "bytes": n}}`` of the convs / GEMMs of an ONNX file: MACs and the bytes of
    their input and output activations (fp32). Shapes are read from one ONNX Runtime run on ``x`` (default: the
    benchmark's 224x224 example) with every conv / GEMM input and output made a graph output (the transformers
    MobileNetV2 pads at run time, so ONNX shape inference leaves the spatial sizes unknown)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: list(t.dims) for t in g.initializer}
    nodes = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits]
    wanted = sorted({n.input[0] for n in nodes} | {n.output[0] for n in nodes})
    known = {o.name for o in g.output}
    g.output.extend(onnx.helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, None) for v in wanted if v not in known)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node's own output
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feed = {sess.get_inputs()[0].name: _example().numpy() if x is None else x}
    shapes = dict(zip(names, (a.shape for a in sess.run(names, feed))))
    out: dict[str, dict[str, float]] = {}
    for n in nodes:
        w, xs, ys = inits[n.input[1]], shapes[n.input[0]], shapes[n.output[0]]
        macs = float(np.prod(ys)) * float(np.prod(w[1:])) if n.op_type == "Conv" else float(np.prod(xs)) * ys[-1]
        c = out.setdefault(layer_class(n.name), {"macs": 0.0, "bytes": 0.0})
        c["macs"] += macs
        c["bytes"] += 4.0 * (float(np.prod(xs)) + float(np.prod(ys)))
    return out


def class_times(path: Path, x: np.ndarray, runtime: str, runs: int) -> dict[str, float]:
    """``{layer class: ms}``: the runtime's own per-node profile (:func:`node_ms`), summed by layer class."""
    out: dict[str, float] = {}
    for node, (op, ms) in node_ms(path, x, runtime, runs).items():
        cls = layer_class(node, op)
        out[cls] = out.get(cls, 0.0) + ms
    return out


def classes_phase(workdir: Path, runs: int, t: dict[str, Any]) -> dict[str, Any]:
    """Per layer class, dense vs prune-50: MACs, activation bytes and each runtime's kernel time; stored in
    ``t["classes"]`` (time.json)."""
    x = _example().numpy()
    files = {k: workdir / f"{k}.onnx" for k in ("dense", "prune-50")}
    t["classes"] = {"work": {k: class_work(f) for k, f in files.items()},
                    "ms": {rt: {k: class_times(f, x, rt, runs) for k, f in files.items()} for rt in RUNTIMES},
                    "runs": runs, "uptime": uptime()}
    (workdir / "time.json").write_text(json.dumps(t, indent=2) + "\n")
    return t


def class_rows(c: dict[str, Any]) -> list[list[str]]:
    work, ms = c["work"], c["ms"]
    classes = [cls for _, cls in LAYER_CLASSES] + ["layout reorders", "other"]
    total = {rt: sum(ms[rt]["dense"].values()) for rt in RUNTIMES}
    rows = []
    for cls in classes:
        w0, w1 = work["dense"].get(cls), work["prune-50"].get(cls)
        known = bool(w0 and w1 and w0["macs"] > 0 and w0["bytes"] > 0)
        cells = [cls, f"{w1['macs'] / w0['macs']:.3f}" if known else "-",
                 f"{w1['bytes'] / w0['bytes']:.3f}" if known else "-"]
        for rt in RUNTIMES:
            a, b = ms[rt]["dense"].get(cls, 0.0), ms[rt]["prune-50"].get(cls, 0.0)
            cells += [f"{a:.2f} -> {b:.2f}", f"{b / a:.2f}" if a > 0 else "-", f"{a / total[rt]:.0%}"]
        if any(v not in ("-", "0.00 -> 0.00") for v in cells[1:]):
            rows.append(cells)
    return rows


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
    if "classes" in t:
        c = t["classes"]
        lines += [
            "",
            "### prune-50 by layer class: MACs, activation bytes and kernel time, pruned / dense",
            "",
            f"`python -m benchmarks.prune_allocation --phase classes` (each runtime's own per-node profile, medians of "
            f"{c['runs']} runs, 2 threads; `uptime` `{c['uptime']}`). `bytes x`: the fp32 input + output activations "
            "of the class's convs / GEMM, which a memory-bound kernel has to move: they fall with the width (x0.5), "
            "the MACs of a conv losing channels on both sides with its square (x0.25). `share`: of the dense "
            "model's kernel time.",
            "",
            markdown_table(["layer class", "MACs x", "bytes x", "ORT kernel ms", "ORT time x", "ORT share",
                            "OV kernel ms", "OV time x", "OV share"], class_rows(c)),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=("build", "time", "classes", "report", "all"), default="all",
                   help="report: write the section again from the workdir's time.json (e.g. with another --note)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/edgekit-prune-allocation"))
    p.add_argument("--runs", type=int, default=150)
    p.add_argument("--note", action="append", default=[], help="a paragraph appended to the section")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.phase in ("build", "all"):
        build_phase(args.workdir)
    if args.phase in ("time", "classes", "report", "all"):
        rec = json.loads((args.workdir / "build.json").read_text())
        t = time_phase(args.workdir, args.runs) if args.phase in ("time", "all") else \
            json.loads((args.workdir / "time.json").read_text())
        if args.phase in ("classes", "all"):
            t = classes_phase(args.workdir, min(args.runs, 100), t)
        md = report(rec, t)
        md += "".join(f"\n{n}\n" for n in args.note)
        print(md)
        if not args.no_write:
            write_section(SECTION, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
