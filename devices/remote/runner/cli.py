"""Sub-commands of the runner: info, hash, run (see the package docstring)."""

from __future__ import annotations

import argparse
import hashlib

from .events import emit
from .measure import cmd_run
from .sysinfo import board_info


def cmd_hash(args) -> None:
    out = {}
    for path in args.files:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            out[path] = h.hexdigest()
        except OSError:
            out[path] = None
    emit("hash", files=out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info")
    h = sub.add_parser("hash")
    h.add_argument("files", nargs="+")
    r = sub.add_parser("run")
    r.add_argument("--dir", required=True)
    r.add_argument("--model-file", required=True)
    r.add_argument("--runtime", default="onnxruntime")
    r.add_argument("--provider", default=None)
    r.add_argument("--input-name", default=None)
    r.add_argument("--input-shape", default=None, help="comma-separated, e.g. 1,3,224,224")
    r.add_argument("--batch", type=int, default=0)
    r.add_argument("--threads", type=int, default=0, help="0 = runtime default")
    r.add_argument("--warmup-runs", type=int, default=10)
    r.add_argument("--warmup-s", type=float, default=0.5)
    r.add_argument("--budget-s", type=float, default=10.0)
    r.add_argument("--min-runs", type=int, default=20)
    r.add_argument("--max-runs", type=int, default=100000)
    r.add_argument("--target-rel-ci", type=float, default=0.02)
    r.add_argument("--chunk-s", type=float, default=0.2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--cosine-threshold", type=float, default=0.999)
    r.add_argument("--no-validate", dest="validate", action="store_false")
    args = p.parse_args(argv)
    if args.cmd == "info":
        emit("info", **board_info())
    elif args.cmd == "hash":
        cmd_hash(args)
    else:
        cmd_run(args)
