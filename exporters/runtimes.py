"""The inference runtimes edgekit runs artifacts on, in one registry, and the one validation contract.

Every place that needs to know a runtime reads :data:`RUNTIMES`: the exporters (which runtime validates a
target's artifact), the latency code (``measure_latency`` accepts the runtimes that can time an ONNX file),
the profiler (the default runtime of an artifact target, via ``manifest["validation_contract"]``) and the recipe
schema (``measure.latency_runtime`` accepts :func:`latency_runtimes`).

:class:`RuntimeConfig` is how a runtime is configured when an artifact is validated: threads and the OpenVINO
CPU precision hint (``f32``: float layers are not silently run in bf16 on CPUs that have it; int8 layers of a
QDQ graph still run in int8). :func:`contract_for` gives, per precision, the tolerances (from
exporters/validation.py, the only place they live) and that configuration; export writes it into
``validation.json`` and ``manifest.json`` (``validation_contract``) so ``edgekit profile`` validates on the
device with the same numbers and the same configuration, and records them in ``profile.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import UserInputError
from edgekit.registry import Registry


@dataclass(frozen=True)
class RuntimeSpec:
    """What edgekit knows about one runtime (data, no import of the runtime itself)."""

    name: str
    module: str  # the Python module that provides it
    targets: tuple[str, ...]  # artifact targets it runs
    times_onnx: bool = False  # measure_latency / measure_file_latency can time an ONNX file on it
    host_cpu: bool = True  # runs on a plain CPU host (False: needs a GPU or macOS)
    note: str = ""


RUNTIMES: Registry[RuntimeSpec] = Registry("runtime")


def register_runtime(spec: RuntimeSpec) -> RuntimeSpec:
    RUNTIMES.add(spec.name, spec)
    return spec


for _spec in (
    RuntimeSpec("torch", "torch", (), note="eager PyTorch (latency baseline only)"),
    RuntimeSpec("onnxruntime", "onnxruntime", ("onnx",), times_onnx=True, note="CPU execution provider"),
    RuntimeSpec("openvino", "openvino", ("openvino", "onnx"), times_onnx=True, note="CPU plugin"),
    RuntimeSpec("tvm", "tvm", ("tvm",), times_onnx=True, note="Relax VM, llvm for the host"),
    RuntimeSpec("tensorrt", "tensorrt", ("tensorrt",), host_cpu=False, note="needs an NVIDIA GPU"),
    RuntimeSpec("coreml", "coremltools", ("coreml",), host_cpu=False, note="predictions need macOS"),
):
    register_runtime(_spec)


def latency_runtimes() -> tuple[str, ...]:
    """Runtimes ``measure_latency`` accepts: eager torch and every runtime that times an ONNX file here."""
    return ("torch",) + tuple(n for n in RUNTIMES.names() if RUNTIMES.get(n).times_onnx)


def runtime_for_target(target: str) -> str:
    """The runtime that validates and profiles artifacts of ``target`` by default."""
    for name in RUNTIMES.names():
        spec = RUNTIMES.get(name)
        if spec.targets and spec.targets[0] == target:
            return name
    raise UserInputError(f"no runtime runs target {target!r}; runtimes: {', '.join(RUNTIMES.names())}")


@dataclass(frozen=True)
class RuntimeConfig:
    """How a runtime is configured for validation (export and profile use the same one)."""

    threads: int = 1
    openvino_precision_hint: str = "f32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


VALIDATION_RUNTIME = RuntimeConfig()


@dataclass(frozen=True)
class ValidationContract:
    """The numbers an artifact of ``precision`` is judged by, and how the runtime is set up to judge it."""

    precision: str
    tolerances: dict[str, str]  # metric -> "<= 1e-4" / ">= 0.99"
    cosine: float  # the cosine bound, the metric both export and the on-device check compute
    runtime: RuntimeConfig

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "tolerances": dict(self.tolerances), "cosine": self.cosine,
                "runtime": self.runtime.to_dict()}


def contract_for(precision: str) -> ValidationContract:
    """The validation contract of ``precision`` (a UserInputError naming the accepted ones otherwise)."""
    from edgekit.exporters.validation import cosine_bound, tolerance

    tol = tolerance(precision)
    return ValidationContract(precision, {k: f"{op} {b:g}" for k, (op, b) in tol.items()}, cosine_bound(precision),
                              VALIDATION_RUNTIME)


# ----------------------------------------------------------------------------------------- runtime sessions
ORT_SPINNING_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def ort_session_options(threads: int, profile_prefix: str | None = None, spinning: bool = True):
    """The ``SessionOptions`` of :func:`ort_session` (see there)."""
    from edgekit.backends import require

    ort = require("onnxruntime", "ONNX Runtime inference")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    for key in ORT_SPINNING_KEYS:
        opts.add_session_config_entry(key, "1" if spinning else "0")
    if profile_prefix is not None:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    return opts


def ort_session(path: Path, threads: int, profile_prefix: str | None = None, spinning: bool = True):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads, sequential execution, quiet logging;
    ``profile_prefix``: ONNX Runtime's own profiler on, its JSON written under that prefix.

    ``spinning`` (``session.intra_op.allow_spinning`` / ``inter_op``): ONNX Runtime's default, True, lets the
    pool's worker threads busy-wait for the next call after each one. That is fastest for one session called
    back to back; with several sessions in one process (or other work on the same cores) the idle sessions'
    spinning workers take the cores from the one that runs, so benchmarks that interleave sessions pass False."""
    from edgekit.backends import require

    ort = require("onnxruntime", "ONNX Runtime inference")
    opts = ort_session_options(threads, profile_prefix, spinning)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_kernel_times(path: Path, x: Any, runs: int = 20, threads: int = 2, warmup: int = 3,
                     spinning: bool = True) -> dict[str, tuple[str, list[float]]]:
    """``{node: (op type, [kernel ms of each timed run])}`` from ONNX Runtime's own profiler on its optimized
    graph of ``path`` (session as :func:`ort_session`), ``warmup`` untimed runs first. Unlike a call's wall time,
    kernel times leave out what happens between kernels and a preempted call."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sess = ort_session(path, threads, profile_prefix=str(Path(tmp) / "prof"), spinning=spinning)
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per: dict[str, tuple[str, list[float]]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per.setdefault(e["name"], (e["args"]["op_name"], []))[1].append(e["dur"] / 1e3)
    return {node: (op, times[warmup:]) for node, (op, times) in per.items()}


def openvino_config(threads: int, precision_hint: str = VALIDATION_RUNTIME.openvino_precision_hint) -> dict[str, Any]:
    """The OpenVINO CPU plugin configuration: ``threads`` threads, latency hint, the precision hint."""
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision_hint}


def openvino_compiled(model_path: Path, threads: int, precision_hint: str = VALIDATION_RUNTIME.openvino_precision_hint,
                      perf_count: bool = False):
    """Compile an ONNX file or IR .xml for the OpenVINO CPU plugin (see :func:`openvino_config`); ``perf_count``:
    the plugin's per-node counters on (``PERF_COUNT``, read with ``get_profiling_info()``)."""
    from edgekit.backends import require

    ov = require("openvino", "OpenVINO inference")
    core = ov.Core()
    config = {**openvino_config(threads, precision_hint), **({"PERF_COUNT": True} if perf_count else {})}
    return core.compile_model(core.read_model(str(model_path)), "CPU", config)


def openvino_node_times(model_path: Path, x: Any, runs: int = 20, threads: int = 2,
                        warmup: int = 3) -> dict[str, tuple[str, list[float]]]:
    """``{node: (layer type, [ms of each timed run])}`` of the nodes the OpenVINO CPU plugin executed for
    ``model_path`` (its ``PERF_COUNT`` counters, compiled as :func:`openvino_compiled`), ``warmup`` untimed runs
    first: OpenVINO's counterpart of :func:`ort_kernel_times` (no time between nodes or around the call)."""
    request = openvino_compiled(model_path, threads, perf_count=True).create_infer_request()
    per: dict[str, tuple[str, list[float]]] = {}
    for i in range(warmup + runs):
        request.infer({0: x})
        if i < warmup:
            continue
        for info in request.get_profiling_info():  # a node that took ~0 us can read NOT_RUN in one run: 0 there
            if info.status == info.Status.EXECUTED or info.node_name in per:
                ms = info.real_time.total_seconds() * 1e3 if info.status == info.Status.EXECUTED else 0.0
                per.setdefault(info.node_name, (info.node_type, []))[1].append(ms)
    return per
