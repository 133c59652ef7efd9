"""Per-layer MACs and MACs per second (CPUBone's efficiency measure) for each zoo model at 224x224.

For each model: total MACs, latency (sum of per-layer medians), overall MACpS, and the layer types ranked by
time share with their MACpS, which shows where a model runs inefficiently (low MACpS: depthwise / large
kernels, attention matmuls, memory-bound ops).

    flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.fusion_macps
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from benchmarks._report import command_line, machine_note, markdown_table, write_section


def _kind(row: dict) -> str:
    return row["type"]


def main() -> None:
    import edgekit.models as zoo
    from edgekit.fusion import fuse
    from edgekit.ops.profile import layer_macps

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    summary, detail = [], []
    for name in args.models or zoo.names():
        torch.manual_seed(0)
        model, _ = fuse(zoo.create(name, pretrained=False, size="224"), "deploy")
        x = torch.randn(1, 3, 224, 224)
        rows = layer_macps(model, x, runs=args.runs, warmup=3)
        macs = sum(r["macs"] for r in rows)
        seconds = sum(r["seconds"] for r in rows)
        by_kind: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
        for r in rows:
            k = _kind(r)
            if r["type"] == "Conv2d":
                conv = model.get_submodule(r["name"])
                k = "Conv2d dw" if conv.groups == conv.in_channels and conv.groups > 1 else (
                    f"Conv2d g={conv.groups} {conv.kernel_size[0]}x{conv.kernel_size[1]}")
            by_kind[k][0] += r["macs"]
            by_kind[k][1] += r["seconds"]
            by_kind[k][2] += 1
        worst = sorted(((v[1], k, v) for k, v in by_kind.items() if v[0]), reverse=True)[:4]
        summary.append([name, f"{macs / 1e9:.2f}", f"{seconds * 1e3:.1f}", f"{macs / seconds / 1e9:.1f}" if seconds else "-"])
        for t, k, v in worst:
            detail.append([name, k, v[2], f"{v[0] / 1e6:,.0f}", f"{100 * t / seconds:.0f}%", f"{v[0] / t / 1e9:.1f}"])
        print(summary[-1], flush=True)
    text = (
        "## Per-layer MACs and MACs per second (CPUBone's measure)\n\n"
        f"`{command_line()}` on {machine_note()}\n\n"
        f"Deploy form, fp32, batch 1, 3x224x224, {args.threads} threads; per-layer time from forward hooks "
        f"(median of {args.runs} forwards), MACs from FlopCounterMode. `edgekit.ops.profile.layer_macps(model, "
        "example)` returns the per-layer rows (used by `edgekit inspect --timing`).\n\n"
        + markdown_table(["model", "GMACs", "ms (sum of layers)", "GMACpS"], summary)
        + "\n\nLayer kinds taking the most time per model (top 4 with MACs):\n\n"
        + markdown_table(["model", "layer kind", "layers", "MMACs", "time share", "GMACpS"], detail)
    )
    write_section("fusion_macps", text)


if __name__ == "__main__":
    main()
