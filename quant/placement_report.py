"""Which ops a runtime actually runs in int8: read from the runtime's own execution graph, not from the Q/DQ file.

* OpenVINO: the compiled model's runtime graph (``compiled.get_runtime_model()``) names, for every executed
  node, its ``layerType``, its ``runtimePrecision`` and the ``originalLayersNames`` it fused. Each original op
  of the model (as ``read_model`` gives it) is attributed the precision of the executed node that contains it:
  a ``MatMul`` fused into a ``FullyConnected`` or into an attention ``Subgraph`` counts as int8 when that node
  runs in i8/u8; an op fused away without keeping its name (the first MatMul of an attention subgraph) takes
  the precision of its nearest named consumer. MatMuls are split into ``MatMul (weights)`` and ``MatMul
  (activations)`` (both inputs computed: the attention products Q·Kᵀ and A·V), adds and multiplies are counted
  only with two computed inputs (residual adds, GELU's ``x * cdf``); LayerNorm appears as ``MVN``.
* ONNX Runtime: the optimized graph ORT writes after its QDQ fusions
  (:func:`edgekit.quant.qdq.ort_optimized_op_types`): integer kernels (``QLinearMatMul``, ``MatMulInteger``,
  ``QGemm``, ``QLinearConv``, ``QLinearAdd``, ...) vs float compute ops.

    >>> side_by_side({"edgekit": openvino_precisions("ek.onnx"), "NNCF": openvino_precisions("nncf.xml")})
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

INT8 = ("i8", "u8", "I8", "U8")
# original op types worth a row (the rest — shapes, reshapes, constants, quantizers — carry no arithmetic)
OV_OPS = ("Convolution", "MatMul (weights)", "MatMul (activations)", "Softmax", "MVN", "Gelu", "Erf",
          "Add (activations)", "Multiply (activations)")
ORT_INT8 = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "MatMulInteger", "ConvInteger", "QLinearMul",
            "QLinearSoftmax", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid",
            "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention")
ORT_FLOAT = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Softmax", "LayerNormalization",
             "SkipLayerNormalization", "Gelu", "BiasGelu", "FastGelu", "Erf", "Add", "Mul", "Div", "Attention")


def _depends_on_input(model) -> set[str]:
    """Friendly names of the ops whose value depends on a model input (not computed from constants only)."""
    dep: set[str] = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Parameter" or any(i.get_source_output().get_node().get_friendly_name() in dep for i in op.inputs()):
            dep.add(op.get_friendly_name())
    return dep


def _original_kind(op, dep: set[str]) -> str:
    t = op.get_type_name()
    if t in ("MatMul", "Add", "Multiply"):  # two computed inputs: attention products, residual adds, GELU's x * cdf
        both = all(i.get_source_output().get_node().get_friendly_name() in dep for i in op.inputs())
        return f"{t} (activations)" if both else ("MatMul (weights)" if t == "MatMul" else t)
    return t


def openvino_precisions(path: str | Path, threads: int = 2) -> dict[str, dict[str, int]]:
    """``{original op kind: {"int8": n, "float": n}}`` as the OpenVINO CPU plugin executes ``path`` (ONNX or IR)."""
    from edgekit.backends import require
    from edgekit.exporters.runtimes import openvino_config

    ov = require("openvino", "per-op precision report")
    core = ov.Core()
    model = core.read_model(str(path))
    dep = _depends_on_input(model)
    kinds = {op.get_friendly_name(): _original_kind(op, dep) for op in model.get_ordered_ops()}
    compiled = core.compile_model(model, "CPU", openvino_config(threads, "f32"))
    precision: dict[str, str] = {}  # original op name -> precision of the executed node that holds it
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        names = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info else []
        for name in filter(None, (n.strip() for n in names)):
            for _ in range(3):  # transformations append "/DequantizationMultiply", "/fq_output_0", ...
                if name in kinds:
                    precision.setdefault(name, prec)
                    break
                name = name.rpartition("/")[0]
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"int8": 0, "float": 0})
    for op in model.get_ordered_ops():
        kind = kinds[op.get_friendly_name()]
        if kind not in OV_OPS:
            continue
        prec = precision.get(op.get_friendly_name()) or _fused_into(op, precision)
        table[kind]["int8" if prec in INT8 else "float"] += 1
    return {k: dict(table[k]) for k in OV_OPS if k in table}


def _fused_into(op, precision: dict[str, str], hops: int = 3) -> str:
    """The precision of the executed node an op was fused into without keeping its name (the first MatMul of an
    attention subgraph): the nearest consumer, within ``hops``, that the runtime graph names."""
    frontier = [op]
    for _ in range(hops):
        frontier = [t.get_node() for o in frontier for out in o.outputs() for t in out.get_target_inputs()]
        for o in frontier:
            if o.get_friendly_name() in precision:
                return precision[o.get_friendly_name()]
    return ""


def ort_precisions(path: str | Path, threads: int = 2) -> dict[str, dict[str, int]]:
    """``{op type: {"int8": n, "float": n}}`` of the graph ONNX Runtime runs for ``path`` after its QDQ fusions."""
    from edgekit.quant.qdq import ort_optimized_op_types

    out: dict[str, dict[str, int]] = {}
    for op, n in sorted(ort_optimized_op_types(path, threads).items()):
        if op in ORT_INT8:
            out[op] = {"int8": n, "float": 0}
        elif op in ORT_FLOAT:
            out[op] = {"int8": 0, "float": n}
    return out


def openvino_program(path: str | Path, threads: int = 1) -> list[tuple[str, str, str, str, str, int, str]]:
    """What the OpenVINO CPU plugin executes for ``path`` (ONNX or IR), in order: per executed node its
    ``layerType``, the implementation chosen (``primitiveType``, e.g. ``brgconv_avx512_amx_u8``), its
    ``runtimePrecision``, ``outputPrecisions`` and ``outputLayouts``, how many original ops it fused and its output
    shape. Two files with the same program run the same kernels on the same shapes and precisions with the same
    fused post-ops; only the weight values (and where the runtime puts them in memory) differ."""
    from edgekit.exporters.runtimes import openvino_compiled

    program = []
    for node in openvino_compiled(Path(path), threads, "f32").get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        get = lambda k: info[k].astype(str) if k in info else ""  # noqa: E731
        fused = [n for n in get("originalLayersNames").split(",") if n.strip()]
        program.append((get("layerType"), get("primitiveType"), get("runtimePrecision"), get("outputPrecisions"),
                        get("outputLayouts"), len(fused),
                        str(node.get_output_partial_shape(0)) if node.get_output_size() else ""))
    return program


PRECISION_READERS = {"openvino": openvino_precisions, "onnxruntime": ort_precisions}


def runtime_precisions(path: str | Path, runtime: str, threads: int = 2) -> dict[str, dict[str, int]]:
    """Per-op int8 / float counts of ``path`` as ``runtime`` (``openvino`` | ``onnxruntime``) executes it."""
    if runtime not in PRECISION_READERS:
        from edgekit.errors import UserInputError

        raise UserInputError(f"precision report for runtime {runtime!r}: accepted: {', '.join(PRECISION_READERS)}")
    return PRECISION_READERS[runtime](path, threads)


def side_by_side(reports: dict[str, dict[str, dict[str, int]]]) -> tuple[list[str], list[list[object]]]:
    """Headers and rows of a table: one row per op kind, ``int8/total`` per column (``-`` where absent)."""
    kinds: list[str] = []
    for rep in reports.values():
        kinds += [k for k in rep if k not in kinds]
    rows = []
    for k in kinds:
        row: list[object] = [k]
        for rep in reports.values():
            c = rep.get(k)
            row.append(f"{c['int8']}/{c['int8'] + c['float']}" if c else "-")
        rows.append(row)
    return ["op (int8 / all)", *reports], rows


def ort_kernel_profile(path: str | Path, x, runs: int = 20, threads: int = 2) -> dict[str, float]:
    """``{op type: ms per run}``: ONNX Runtime's own profiler (:func:`edgekit.exporters.runtimes.ort_kernel_times`),
    the mean kernel time of each node summed over the nodes of each op type of its optimized graph."""
    from edgekit.exporters.runtimes import ort_kernel_times

    per: dict[str, float] = defaultdict(float)
    for op, times in ort_kernel_times(Path(path), x, runs, threads).values():
        if times:
            per[op] += sum(times) / len(times)
    return dict(sorted(per.items(), key=lambda t: -t[1]))
