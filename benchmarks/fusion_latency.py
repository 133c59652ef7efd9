"""Deploy vs multi-branch inference latency (fp32, batch 1, 224x224) in PyTorch and ONNX Runtime.

Target from the issue: RepConv and DilatedReparamBlock models (repvgg, unireplknet) >= 1.5x faster after
reparameterization.

    flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.fusion_latency
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._report import command_line, machine_note, markdown_table, write_section


def main() -> None:
    import edgekit.models as zoo
    from edgekit.fusion import fuse
    from edgekit.metrics import measure_latency

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtimes", nargs="*", default=["torch", "onnxruntime"])
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models or zoo.names():
        torch.manual_seed(0)
        model = zoo.create(name, pretrained=False, size="224").eval()
        deployed, report = fuse(model, "deploy")
        x = torch.randn(1, 3, 224, 224)
        row = [name, len(report["merged"]), len(report["folded"])]
        for runtime in args.runtimes:
            ms = {}
            for label, m in (("eval", model), ("deploy", deployed)):
                ms[label] = measure_latency(m, x, runtime, runs=args.runs, warmup=args.warmup, threads=args.threads)["median"]
            row += [ms["eval"], ms["deploy"], f"{ms['eval'] / ms['deploy']:.2f}x"]
        rows.append(row)
        print(row, flush=True)
    headers = ["model", "blocks merged", "BN folded"]
    for runtime in args.runtimes:
        headers += [f"{runtime} ms multi-branch", f"{runtime} ms deploy", f"{runtime} speedup"]
    note = (
        f"fp32, batch 1, 3x224x224, {args.threads} threads; median of {args.runs} runs after {args.warmup} warm-up "
        "runs, multi-branch (eval) and deploy form measured side by side. ONNX Runtime runs the exported model "
        "(its own graph optimizations on, so it may fold BN itself; the speedup then comes from branch merging). "
        "Target: repvgg and unireplknet >= 1.5x. The machine is shared with other jobs; times are noisy."
    )
    write_section("fusion_latency", f"## Deploy vs multi-branch latency (reparameterization)\n\n"
                  f"`{command_line()}` on {machine_note()}\n\n{note}\n\n{markdown_table(headers, rows)}")


if __name__ == "__main__":
    main()
