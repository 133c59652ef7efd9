"""TVM target: the hub ONNX imported into Relax and compiled with apache-tvm for the host or a cross target.

Artifact: ``model.so`` (a Relax VM executable, loadable with ``tvm.runtime.load_module``) plus
``tvm_meta.json`` (target JSON, input name/shape/dtype, how to load it). Why from ONNX: the Relax ONNX
frontend takes the same graph every other target gets; the torch frontend (``from_exported_program``) needs a
clean ``torch.export`` of every model, which is not a given. int8: the QDQ graph (see ``INT8_NOTE``: int8
numerics, float kernels). fp16: the fp16 ONNX graph (fp32 I/O);
if Relax cannot build it, ``ToMixedPrecision(out_dtype="float16")`` on the fp32 graph. In TVM 0.27 each path
fails on a different zoo model (fp16 graph: inceptionnext, "Binary operators must have the same datatype";
ToMixedPrecision: mobilenetv2, "Expected TensorType, but got R.Callable"), so the manifest records the path.
Option ``llvm_opt_level`` (0-3) trades kernel speed for compile time (1 halves it; the CI matrix uses it).

Performance: the default Relax CPU pipeline applies no schedules, so its kernels are serial loops (the ViT at
224: seconds). Option ``schedule=heuristic`` compiles with :mod:`edgekit.exporters.tvm_schedule` instead
(parallel, vectorised loops and TVM's fast erf/exp; zero tuning trials). Option ``tune=N`` runs N MetaSchedule
trials on this CPU (:mod:`edgekit.exporters.tvm_tune`): the tuning database is cached under a key made of the
model's kernels (structure, not weights) and the target, so the next export of the same structure searches
nothing; kernels without a tuned schedule get the heuristic one. ``tune_cache`` (default
``$EDGEKIT_TVM_TUNE_CACHE`` or ``~/.cache/edgekit/tvm-tune``) and ``tune_timeout`` (wall-clock seconds for the
search; 0: none) bound it. The manifest records the key, trials and whether the database was reused. Both
options run integer graphs (the I-ViT integer-only export) through :mod:`edgekit.exporters.tvm_int8` first:
``MatMulInteger`` on a uint8 x int8 kernel tensorized with the VNNI dot product where the CPU has it, 1-D table
lookups fused, runtime-divisor integer divisions kept out of fused loops (results unchanged, bit for bit).

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

from edgekit.errors import EdgekitError, UserInputError
from edgekit.exporters.base import Capabilities, ExportContext, Exporter, register_target
from edgekit.exporters.options import Option, hub_options
from edgekit.exporters.torch2onnx import DEFAULT_OPSET

DEVICES = ("host", "aarch64", "cuda")
INT8_NOTE = ("the QDQ graph imported by Relax's ONNX frontend: every quantize/dequantize rounding is kept (int8 "
             "numerics), convolutions and matmuls run as float32 kernels on the dequantized values (the default Relax "
             "pipeline fuses no QDQ pattern into int8 kernels), so expect no int8 speed-up")
CROSS_CC = "aarch64-linux-gnu-gcc"
SCHEDULES = ("default", "heuristic")
TUNE_DEVICES = ("host",)  # candidates are timed on the machine that tunes (no RPC runner)


def host_target():
    import tvm

    return tvm.target.Target.from_device("cpu")


def device_target(device: str, llvm_opt_level: int | None = None):
    import tvm

    extra = {"opt-level": int(llvm_opt_level)} if llvm_opt_level is not None else {}
    if device == "host":
        host = host_target()
        if not extra:
            return host
        return tvm.target.Target({"kind": "llvm", "mtriple": str(host.attrs["mtriple"]), "mcpu": str(host.attrs["mcpu"]), **extra})
    if device == "aarch64":
        return tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], **extra})
    if device == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    raise UserInputError(f"target tvm: device {device!r}; accepted: {', '.join(DEVICES)}")


def _target_json(target) -> object:
    try:
        return json.loads(str(target))
    except ValueError:
        return str(target)


def import_onnx(path: Path, input_shape):
    from edgekit.backends import require

    onnx = require("onnx", "TVM export")
    require("tvm", "TVM export")
    from tvm.relax.frontend.onnx import from_onnx

    return from_onnx(onnx.load(str(path)), shape_dict={"input": list(input_shape)}, keep_params_in_input=False)


def compile_module(mod, target, schedule: str = "default", tune: dict[str, Any] | None = None):
    """Compile with the default Relax pipeline, or with :mod:`edgekit.exporters.tvm_schedule`'s heuristic one; with
    ``tune`` (``{"trials": N, "cache": path or None, "timeout_s": s, "info": {}}``) MetaSchedule-tuned
    (:func:`edgekit.exporters.tvm_tune.compile_tuned`; what it did is written into ``tune["info"]``)."""
    import tvm

    if tune and tune.get("trials"):
        from edgekit.exporters.tvm_tune import compile_tuned

        ex, info = compile_tuned(mod, target, tune["trials"], tune.get("cache"), tune.get("timeout_s"))
        tune.setdefault("info", {}).update(info)
        return ex
    if schedule == "heuristic":
        from edgekit.exporters.tvm_schedule import compile_scheduled

        return compile_scheduled(mod, target)
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
    try:
        ex.export_library(str(tmp / "model.so"))
        return load_vm(tmp / "model.so", threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the loaded library stays mapped


@register_target(
    "tvm",
    Capabilities(
        suffix=".so",
        precisions=("fp32", "fp16", "int8"),
        options={"device": Option("host", str, choices=DEVICES), "llvm_opt_level": Option(None, int, choices=(0, 1, 2, 3), nullable=True),
                 "schedule": Option("default", str, choices=SCHEDULES,
                                    help="heuristic: parallel/vectorised loops and fast erf (edgekit.exporters.tvm_schedule)"),
                 "tune": Option(0, int, minimum=0, help="MetaSchedule trials on this CPU; the database is cached by model structure and target (edgekit.exporters.tvm_tune)"),
                 "tune_cache": Option(None, str, nullable=True, help="tuning database cache root (default $EDGEKIT_TVM_TUNE_CACHE or ~/.cache/edgekit/tvm-tune)"),
                 "tune_timeout": Option(0, int, minimum=0, help="wall-clock seconds for the search (0: no limit); candidates after it are skipped"),
                 **hub_options(DEFAULT_OPSET)},
        source="onnx",
        runtime="tvm relax VM (host llvm)",
        notes="host llvm validated; aarch64 and cuda compiled only; int8: QDQ numerics, float kernels",
    ),
)
class TVMExporter(Exporter):
    def build(self, ctx: ExportContext) -> dict[str, Any]:
        from edgekit.backends import require

        tvm = require("tvm", "TVM export")
        device = ctx.options["device"]
        tune = None
        if ctx.options.get("tune", 0):
            if device not in TUNE_DEVICES:
                raise UserInputError(f"target tvm: -O tune needs the candidates timed on the device; device {device!r} "
                                     "cannot run here and no RPC runner is supported: tune on the board itself "
                                     f"(device host there), or leave tune at 0; tunable: {', '.join(TUNE_DEVICES)}")
            tune = {"trials": int(ctx.options["tune"]), "cache": ctx.options.get("tune_cache"),
                    "timeout_s": float(ctx.options.get("tune_timeout") or 0) or None, "info": {}}
        target = device_target(device, ctx.options.get("llvm_opt_level"))
        ex, method = self._compile(ctx, target, tune)
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
            "tvm_target": _target_json(target),
            "input": {"name": "input", "shape": list(ctx.example.shape), "dtype": "float32"},
            "entry": "main",
            "linker": linker or "host default",
            "load": "lib = tvm.runtime.load_module('model.so'); vm = tvm.relax.VirtualMachine(lib, dev); vm['main'](x)",
        }
        (ctx.out / "tvm_meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if ctx.precision == "int8":
            ctx.extra_manifest["tvm_int8"] = INT8_NOTE
        schedule = ctx.options.get("schedule", "default")
        if tune:
            ctx.extra_manifest["tvm_tune"] = tune["info"]
            schedule = f"metaschedule ({tune['info'].get('trials_total')} trials), heuristic where untuned"
        return {"model_file": model_file, "tvm_device": device, "tvm_fp16_method": method,
                "tvm_schedule": schedule,
                "runtime": {"name": "tvm", "version": tvm.__version__}}

    def _import(self, ctx: ExportContext, precision: str):
        onnx_path = ctx.onnx(f".hub-{precision}.onnx", precision)
        try:
            return import_onnx(onnx_path, ctx.example.shape)
        except Exception as exc:  # noqa: BLE001 - name the op and layer when TVM lacks a converter
            from edgekit.exporters.ops import explain_onnx_failure

            err = explain_onnx_failure("tvm", exc, onnx_path)
            if err is not None:
                raise err from None
            raise
        finally:
            onnx_path.unlink(missing_ok=True)

    def _compile(self, ctx: ExportContext, target, tune: dict[str, Any] | None = None):
        """fp32: the fp32 graph. fp16: the fp16 ONNX graph; if Relax cannot build it, ToMixedPrecision on the
        fp32 graph (each fails on different zoo models in TVM 0.27); the manifest records which was used."""
        schedule = ctx.options.get("schedule", "default")
        if ctx.precision in ("fp32", "int8"):
            return compile_module(self._import(ctx, ctx.precision), target, schedule, tune), None
        try:
            return compile_module(self._import(ctx, "fp16"), target, schedule, tune), "fp16 ONNX graph"
        except UserInputError:
            raise
        except Exception as first:  # noqa: BLE001
            from tvm import relax

            try:
                mod = relax.transform.ToMixedPrecision(out_dtype="float16")(self._import(ctx, "fp32"))
                return compile_module(mod, target, schedule, tune), f"relax ToMixedPrecision (fp16 ONNX graph failed: {str(first).splitlines()[0][:200]})"
            except Exception as second:  # noqa: BLE001
                raise EdgekitError(
                    f"TVM could not build model {ctx.name} in fp16: from the fp16 ONNX graph: {str(first).splitlines()[0][:300]}; "
                    f"with ToMixedPrecision: {str(second).splitlines()[0][:300]}"
                ) from second

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
