"""Reproduce the zoo checkpoints: ``edgekit zoo train NAME`` / ``python -m edgekit.models._train --all``.

Each model trains with its registered settings (``register_model(..., epochs=, lr=, ...)``) on the built-in
digits data at the model's digits input shape, seeded; the state_dict is written atomically to
``edgekit/models/checkpoints/<name>.pt`` (loadable with ``torch.load(weights_only=True)``).
``--write-docs`` regenerates docs/zoo.md from the checkpoints that exist (test accuracy is re-measured).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from edgekit import models as zoo

DOC = Path(__file__).resolve().parents[2] / "docs" / "zoo.md"


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".pt.tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def train_zoo(name: str, epochs: int | None = None, seed: int = 0, out: Path | None = None) -> dict[str, Any]:
    """Train zoo model ``name`` from scratch (seeded) and save its checkpoint; returns name/accuracy/epochs/seconds."""
    from edgekit.data import load_data
    from edgekit.training import evaluate, train

    meta = zoo.info(name)
    settings = dict(meta.train)
    epochs = int(settings.pop("epochs", 15) if epochs is None else epochs)
    settings.pop("epochs", None)
    data = load_data(None, meta.input_shape("digits"))
    torch.manual_seed(seed)
    model = zoo.create(name, pretrained=False, size="digits", num_classes=data.num_classes)
    t0 = time.perf_counter()
    train(model, data, epochs=epochs, seed=seed, description=f"training {name}", **settings)
    seconds = time.perf_counter() - t0
    accuracy = evaluate(model, data.test)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    _save_atomic(state, out or meta.checkpoint)
    return {"name": name, "accuracy": accuracy, "epochs": epochs, "seconds": seconds}


def zoo_table() -> str:
    """Markdown table of every zoo model: family, parameters, MACs at both sizes, shipped checkpoint accuracy."""
    from edgekit.data import load_data
    from edgekit.training import evaluate

    data = load_data(None, (3, 32, 32))
    rows = ["| model | family | description | params (digits) | params (224) | checkpoint | test top-1 (digits) | train settings |",
            "|---|---|---|---|---|---|---|---|"]
    for name in zoo.names():
        meta = zoo.info(name)
        small = zoo.create(name, pretrained=False, size="digits")
        big = zoo.create(name, pretrained=False, size="224")
        n_small = sum(p.numel() for p in small.parameters())
        n_big = sum(p.numel() for p in big.parameters())
        if meta.checkpoint.is_file():
            acc = f"{100 * evaluate(zoo.create(name, pretrained=True), data.test):.1f}%"
            ck = f"{meta.checkpoint.stat().st_size / 1e6:.2f} MB"
        else:
            acc, ck = "(no checkpoint)", "-"
        settings = ", ".join(f"{k}={v}" for k, v in meta.train.items())
        rows.append(f"| `{name}` | {meta.family} | {meta.description} | {n_small:,} | {n_big:,} | {ck} | {acc} | {settings} |")
    return "\n".join(rows)


OPS_DOC = """
## Operator library (`edgekit.ops`)

| block | paper | deploy form (`to_deploy()`) |
|---|---|---|
| `ConvBN(cin, cout, k, stride, padding, dilation, groups, bias, act, mode)` | Efficient ConvBN Blocks (ICLR'24): modes train / eval / tune / deploy | `ConvAct` (folded conv + act) |
| `RepConv(cin, cout, k, stride, groups, act, num_kxk=1)` | RepVGG: KxK + 1x1 + identity BN | `ConvAct` (one KxK conv) |
| `MobileOneBlock(cin, cout, k, stride, groups, act, num_kxk=4)` | MobileOne: several KxK branches + 1x1 + BN skip | `ConvAct` |
| `DilatedReparamBlock(channels, kernel_size)` | UniRepLKNet: large dw kernel + dilated branches | `ConvAct` (one dw KxK conv) |
| `InceptionDWConv(channels, square_kernel=3, band_kernel=11, branch_ratio=0.125)` | InceptionNeXt channel split | none (BN after it stays: its input is a concat) |
| `InvertedResidual(cin, cout, stride, expand_ratio)` | MobileNetV2 | its ConvBNs fold |
| `GroupedConvBlock(cin, cout, stride, expand_ratio=2, kernel_size=2, groups=2)` | CPUBone-style grouped fused-MBConv | its ConvBNs fold |
| `PatchEmbed`, `Attention` (`qkv`, `matmul_qk`, `softmax`, `matmul_av`, `proj`, `scale`), `Mlp` (`fc1`, `act`, `fc2`), `TransformerBlock` (`norm1`, `attn`, `norm2`, `mlp`) | ViT / DeiT | none (each op its own module for the integer-only quantizer) |

`edgekit.fusion.set_convbn_mode(model, "tune")` switches every ConvBN in place; `edgekit.fuse(model, mode)`
returns a new model and a report (blocks merged, BN folded or wrapped, BN left and why) for any traceable
model (torch.fx, or torch.export when example inputs are given). `edgekit.ops.profile.layer_macps(model, x)`
gives per-layer MACs, time and MACs per second.
"""


def write_docs(doc: Path = DOC) -> None:
    text = (
        "# Model zoo\n\n"
        "Every model is built from `edgekit.ops` blocks and has two configurations: `digits` (3x32x32, trained on "
        "the built-in scikit-learn digits, checkpoint shipped in `edgekit/models/checkpoints/`) and `224` "
        "(3x224x224, random init, for latency work). Accuracies are top-1 on the seeded digits test split "
        "(20% of 1797 images), re-measured from the shipped checkpoints when this page was generated.\n\n"
        "Generated by `python -m edgekit.models._train --write-docs`; a checkpoint is reproduced with "
        "`edgekit zoo train NAME` (or `python -m edgekit.models._train NAME`).\n\n"
        + zoo_table()
        + "\n\nAll models fuse (`edgekit.fuse(model, 'deploy')`): RepConv / MobileOne / DilatedReparamBlock blocks "
        "merge into single convs and every Conv->BN pair whose conv output has no other user folds (InceptionNeXt's BN "
        "after the channel concat stays; the fuse report says why); `tests/test_zoo_*.py` checks deploy vs eval "
        "outputs (1e-5 float32, 1e-10 float64) and tune vs eval forward and gradients (1e-10 float64) for each.\n"
        + OPS_DOC
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=doc.parent, prefix=".zoo.", suffix=".md")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, doc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="zoo models to train (default with --all: every model)")
    parser.add_argument("--all", action="store_true", help="train every registered model, one after another")
    parser.add_argument("--skip-existing", action="store_true", help="with --all: keep checkpoints that exist")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-docs", action="store_true", help="regenerate docs/zoo.md afterwards")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = zoo.names() if args.all else args.names
    for name in names:
        if args.all and args.skip_existing and zoo.info(name).checkpoint.is_file():
            continue
        result = train_zoo(name, args.epochs, args.seed)
        print(f"{result['name']}: top-1 {100 * result['accuracy']:.1f}% after {result['epochs']} epochs "
              f"in {result['seconds']:.0f} s", flush=True)
    if args.write_docs:
        write_docs()
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
