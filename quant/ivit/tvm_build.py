"""TVM (Relax) build of the I-ViT integer graph ("I-ViT: Integer-only Quantization for Efficient Vision
Transformer Inference", Li & Gu, ICCV 2023), compiled for the host CPU (``llvm``).

The integer ONNX graph of :mod:`.onnx_export` is imported with ``tvm.relax.frontend.onnx.from_onnx`` (it uses
only ops that importer supports: MatMulInteger, integer elementwise ops, Gather, Where, reductions; no
ConvInteger, which the importer lacks -- convolutions are lowered to im2col + MatMulInteger), then compiled
with the zero-trial schedules of :mod:`edgekit.exporters.tvm_schedule` (integer graphs through
:mod:`edgekit.exporters.tvm_int8`: VNNI matmuls, divisions by constants in the code), or, with ``tune`` > 0,
through the exporter's tuned path
(:func:`edgekit.exporters.tvm.compile_module`: MetaSchedule trials, database cached by graph structure and
target, heuristic schedules where untuned). ``run`` executes the compiled module on the Relax VM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgekit.backends import require


@dataclass
class TVMModule:
    vm: Any
    device: Any
    input_name: str

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        tvm = require("tvm", "I-ViT TVM run")
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        arr = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.device)
        out = self.vm["main"](arr)
        return out.numpy()


def compile_graph(proto: Any, target: Any = None, opt_level: int = 3, tune: int = 0, tune_cache: Any = None,
                  info: dict | None = None, schedule: str = "heuristic"):
    """Compile an (integer or float) ONNX ModelProto with Relax for ``target`` (default: this CPU with its
    features, VNNI among them) into a Relax executable (``export_library`` writes it). ``tune`` > 0:
    MetaSchedule-tuned, what the tuning did goes into ``info``; untuned: the zero-trial schedules of
    :mod:`edgekit.exporters.tvm_schedule`, integer matmuls on the VNNI kernel where the CPU has it, or with
    ``schedule="default"`` Relax's default pipeline, serial loops."""
    tvm = require("tvm", "I-ViT TVM build")
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    name = proto.graph.input[0].name
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    mod = from_onnx(proto, shape_dict={name: shape}, keep_params_in_input=False)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    if target is None:
        from edgekit.exporters.tvm import host_target

        target = host_target()
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    if tune:
        from edgekit.exporters.tvm import compile_module

        spec = {"trials": int(tune), "cache": tune_cache, "info": {}}
        ex = compile_module(mod, target, "heuristic", spec)
        if info is not None:
            info.update(spec["info"])
        return ex
    if schedule == "heuristic":
        from edgekit.exporters.tvm_schedule import compile_scheduled

        return compile_scheduled(mod, target)
    with tvm.transform.PassContext(opt_level=opt_level):
        return tvm.compile(mod, target=target)


def build(proto: Any, target: Any = None, opt_level: int = 3, tune: int = 0, tune_cache: Any = None,
          info: dict | None = None, schedule: str = "heuristic") -> TVMModule:
    """:func:`compile_graph`, loaded into a Relax VM on the CPU."""
    tvm = require("tvm", "I-ViT TVM build")
    from tvm import relax

    ex = compile_graph(proto, target, opt_level, tune, tune_cache, info, schedule)
    dev = tvm.cpu()
    return TVMModule(relax.VirtualMachine(ex, dev), dev, proto.graph.input[0].name)
