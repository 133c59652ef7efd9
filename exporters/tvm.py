"""TVM target: the hub ONNX imported into Relax and compiled with apache-tvm for the host or a cross target.

Artifact: ``model.so`` (a Relax VM executable, loadable with ``tvm.runtime.load_module``) plus
``tvm_meta.json`` (target JSON, input name/shape/dtype, how to load it). Why from ONNX: the Relax ONNX
frontend takes the same graph every other target gets; the torch frontend (``from_exported_program``) needs a
clean ``torch.export`` of every model, which is not a given. fp16: Relax's ``ToMixedPrecision(out_dtype=
"float16")`` on the fp32 graph (fp16 compute and accumulation, fp32 I/O). Importing the fp16 ONNX graph instead
failed to build for some zoo models (inceptionnext: "Binary operators must have the same datatype").

Performance note: the default Relax CPU pipeline applies no schedules (no MetaSchedule tuning database), so
untuned kernels are slow; tune with MetaSchedule for deployment numbers.

Devices (option ``device``):
* ``host``: ``llvm`` with the CPU features of this machine (``Target.from_device("cpu")``); validated here
  with the Relax VM.
* ``aarch64``: ``llvm -mtriple=aarch64-linux-gnu +neon``, linked with Debian's ``aarch64-linux-gnu-gcc`` (a
  ``.tar`` of objects if that cross compiler is absent); not run here.
* ``cuda``: CUDA kernels via TVM's default GPU schedules; not run here (no GPU).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UserInputError
from edgekit.exporters.base import Capabilities, ExportContext, Exporter, register_target
from edgekit.exporters.torch2onnx import DEFAULT_OPSET

DEVICES = ("host", "aarch64", "cuda")
CROSS_CC = "aarch64-linux-gnu-gcc"


def host_target():
    import tvm

    return tvm.target.Target.from_device("cpu")


def device_target(device: str):
    import tvm

    if device == "host":
        return host_target()
    if device == "aarch64":
        return tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    if device == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    raise UserInputError(f"target tvm: device {device!r}; accepted: {', '.join(DEVICES)}")


def import_onnx(path: Path, input_shape):
    from edgekit.backends import require

    onnx = require("onnx", "TVM export")
    require("tvm", "TVM export")
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(str(path)), shape_dict={"input": list(input_shape)}, keep_params_in_input=False)


def compile_module(mod, target):
    import tvm

    return tvm.compile(mod, target=target)


def load_vm(lib_path: Path, threads: int | None = None):
    """Load a host ``model.so`` into a Relax VM; returns ``run(x: ndarray) -> ndarray``."""
    import tvm
    from tvm import relax

    if threads:
        import os

        os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    lib = tvm.runtime.load_module(str(lib_path))
    vm = relax.VirtualMachine(lib, tvm.cpu())
    fn = vm["main"]

    def run(x: np.ndarray) -> np.ndarray:
        out = fn(tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32)))
        out = out[0] if isinstance(out, (tuple, list)) or not hasattr(out, "numpy") else out
        return out.numpy()

    return run


def compile_onnx_for_host(path: Path, input_shape, threads: int = 2):
    """Compile an ONNX file for this CPU and return a runner (used by the latency benchmark)."""
    import tempfile

    ex = compile_module(import_onnx(path, input_shape), host_target())
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-tvm-"))
    ex.export_library(str(tmp / "model.so"))
    return load_vm(tmp / "model.so", threads)


@register_target(
    "tvm",
    Capabilities(
        suffix=".so",
        precisions=("fp32", "fp16"),
        options={"device": "host", "opset": DEFAULT_OPSET, "cleanup": True, "exporter": "auto"},
        source="onnx",
        runtime="tvm relax VM (host llvm)",
        notes="host llvm validated; aarch64 and cuda compiled only",
    ),
)
class TVMExporter(Exporter):
    def check_options(self, precision: str, options: dict[str, Any]) -> dict[str, Any]:
        opts = super().check_options(precision, options)
        if opts["device"] not in DEVICES:
            raise UserInputError(f"target tvm: device {opts['device']!r}; accepted: {', '.join(DEVICES)}")
        return opts

    def build(self, ctx: ExportContext) -> dict[str, Any]:
        from edgekit.backends import require

        tvm = require("tvm", "TVM export")
        device = ctx.options["device"]
        onnx_path = ctx.onnx(".hub.onnx", "fp32")
        try:
            mod = import_onnx(onnx_path, ctx.example.shape)
        except Exception as exc:  # noqa: BLE001 - name the op and layer when TVM lacks a converter
            from edgekit.exporters.ops import explain_onnx_failure

            err = explain_onnx_failure("tvm", exc, onnx_path)
            if err is not None:
                raise err from None
            raise
        onnx_path.unlink()
        if ctx.precision == "fp16":
            from tvm import relax

            mod = relax.transform.ToMixedPrecision(out_dtype="float16")(mod)
        target = device_target(device)
        ex = compile_module(mod, target)
        model_file, linker = "model.so", None
        if device == "aarch64":
            if shutil.which(CROSS_CC):
                ex.export_library(str(ctx.out / model_file), cc=CROSS_CC)
                linker = CROSS_CC
            else:
                model_file = "model.tar"
                ex.export_library(str(ctx.out / model_file))
                linker = f"none ({CROSS_CC} not found): link on the board with `gcc -shared -o model.so` the objects in model.tar"
        else:
            ex.export_library(str(ctx.out / model_file))
        meta = {
            "device": device,
            "tvm_target": json.loads(json.dumps(str(target))) if not hasattr(target, "export") else target.export(),
            "input": {"name": "input", "shape": list(ctx.example.shape), "dtype": "float32"},
            "entry": "main",
            "linker": linker or "host default",
            "load": "lib = tvm.runtime.load_module('model.so'); vm = tvm.relax.VirtualMachine(lib, dev); vm['main'](x)",
        }
        (ctx.out / "tvm_meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return {"model_file": model_file, "tvm_device": device,
                "runtime": {"name": "tvm", "version": tvm.__version__}}

    def runner(self, directory: Path, manifest: dict[str, Any]):
        device = manifest.get("tvm_device", "host")
        if device != "host":
            why = "no GPU on this host" if device == "cuda" else "an aarch64 library cannot run on this x86 host"
            return f"compiled for {device}: {why}; run it on the device (edgekit profile)"
        return load_vm(directory / manifest["model_file"])

    def checks(self, directory: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        if manifest.get("tvm_device") != "aarch64" or not manifest["model_file"].endswith(".so"):
            return []
        head = (directory / manifest["model_file"]).read_bytes()[:20]
        machine = int.from_bytes(head[18:20], "little")  # ELF e_machine: 183 = EM_AARCH64
        ok = head[:4] == b"\x7fELF" and machine == 183
        return [{"name": "aarch64 ELF shared library", "passed": ok, "detail": f"ELF e_machine={machine}"}]
