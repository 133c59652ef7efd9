"""Tune vs eval vs deploy: one fine-tuning step (forward + backward) of each zoo CNN at 224x224.

Counts the bytes autograd saves for backward (torch.autograd.graph.saved_tensors_hooks; tensors deduplicated
by storage, parameters excluded = activation bytes) and times the step. Target from the issue: tune saves
<= 0.6x the activation bytes of eval and runs in <= 0.9x its time.

    flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.fusion_modes --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks._report import command_line, machine_note, markdown_table, write_section

MODES = ("eval", "tune", "deploy")


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def step_seconds(model: torch.nn.Module, x: torch.Tensor, reps: int) -> float:
    times = []  # the saved-bytes pass before this one is the warm-up step
    for _ in range(reps):
        t0 = time.perf_counter()
        model(x).sum().backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    import edgekit.models as zoo
    from edgekit.fusion import fuse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--size", default="224")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or [n for n in zoo.names() if zoo.info(n).family == "cnn"]
    shape = zoo.SIZES[args.size]
    rows = []
    for name in names:
        torch.manual_seed(0)
        base = zoo.create(name, pretrained=False, size=args.size)
        x = torch.randn(args.batch, *shape)
        models = {mode: fuse(base, mode)[0].train() for mode in MODES}
        saved = {mode: saved_activation_bytes(m, x) for mode, m in models.items()}  # also the warm-up steps
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.reps):  # modes interleaved, so that background load hits all three alike
            for mode, m in models.items():
                times[mode].append(step_seconds(m, x, 1))
        del models
        result = {mode: (saved[mode], statistics.median(times[mode])) for mode in MODES}
        (be, te), (bt, tt), (bd, td) = result["eval"], result["tune"], result["deploy"]
        rows.append([name, f"{be / 2**20:,.0f}", f"{bt / 2**20:,.0f}", f"{bd / 2**20:,.0f}", f"{bt / be:.2f}",
                     f"{te:.2f}", f"{tt:.2f}", f"{td:.2f}", f"{tt / te:.2f}"])
        print(rows[-1], flush=True)
    table = markdown_table(
        ["model", "saved MiB eval", "saved MiB tune", "saved MiB deploy", "tune/eval bytes", "step s eval",
         "step s tune", "step s deploy", "tune/eval time"], rows)
    note = (
        f"One SGD-free fine-tuning step (forward + backward of `sum(logits)`) at {args.size}x{args.size}, batch "
        f"{args.batch}, fp32, {args.threads} threads, `model.train()`; ConvBN blocks in `eval` (BN frozen, two ops), "
        "`tune` (fold recomputed each forward) and `deploy` (folded once; no BN parameters left to tune). "
        "Saved bytes: storages handed to autograd for backward, deduplicated, parameters excluded. "
        f"Step time: median of {args.reps} steps after one warm-up step (the byte-counting step), the three modes interleaved. Targets: tune/eval bytes <= 0.6, "
        "tune/eval time <= 0.9. The machine is shared with other jobs, so times are noisy; byte counts are exact."
    )
    write_section("fusion_modes", f"## ConvBN modes: tune vs eval vs deploy (fine-tuning step)\n\n"
                  f"`{command_line()}` on {machine_note()}\n\n{note}\n\n{table}")


if __name__ == "__main__":
    main()
