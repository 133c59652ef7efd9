"""The runtimes the runner can time (onnxruntime, OpenVINO, TVM), each behind one small class."""

from __future__ import annotations

import os
import sys

from .events import EXIT_BAD_INPUT, EXIT_RUNTIME_FAILED, EXIT_RUNTIME_MISSING, EXIT_UNSUPPORTED, fail


class OnnxRuntimeRunner:
    module = "onnxruntime"

    def __init__(self, model_path: str, threads: int, input_name: str | None, provider: str | None):
        import onnxruntime as ort  # noqa: PLC0415

        self.version = ort.__version__
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [provider] if provider else ["CPUExecutionProvider"]
        self.sess = ort.InferenceSession(model_path, sess_options=opts, providers=providers)
        inp = self.sess.get_inputs()[0]
        self.input_name = input_name or inp.name
        self.model_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.detail = {"providers": self.sess.get_providers()}

    def __call__(self, x):
        return self.sess.run(None, {self.input_name: x})[0]


class OpenVinoRunner:
    module = "openvino"

    def __init__(self, model_path: str, threads: int, input_name: str | None, provider: str | None):
        import openvino as ov  # noqa: PLC0415

        self.version = ov.get_version()
        core = ov.Core()
        self.model = core.read_model(model_path)
        inp = self.model.inputs[0]
        self.input_name = input_name or inp.get_any_name()
        pshape = inp.get_partial_shape()
        self.model_shape = [d.get_length() if d.is_static else None for d in pshape]
        self._core, self._device, self._threads = core, provider or "CPU", threads
        self._compiled_for = None
        self.detail = {"device": self._device}

    def _compile(self, shape):
        # f32: the same precision hint export validated with (edgekit.exporters.runtimes.VALIDATION_RUNTIME, recorded
        # in the artifact's validation_contract); without it CPUs with bf16 run float layers in bf16
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self._threads > 0:
            config["INFERENCE_NUM_THREADS"] = self._threads
        if any(d is None for d in self.model_shape):
            self.model.reshape({self.model.inputs[0].get_any_name(): list(shape)})
        compiled = self._core.compile_model(self.model, self._device, config)
        self.request = compiled.create_infer_request()
        self._compiled_for = tuple(shape)

    def __call__(self, x):
        if self._compiled_for != tuple(x.shape):
            self._compile(x.shape)
        self.request.infer({0: x}, share_inputs=True)  # zero-copy input: the call is synchronous
        return self.request.get_output_tensor(0).data.copy()


class TvmRunner:
    """A Relax VM executable (``model.so`` written by edgekit's TVM exporter), run on the host CPU."""

    module = "tvm"

    def __init__(self, model_path: str, threads: int, input_name: str | None, provider: str | None):
        if threads > 0:  # TVM reads its thread count once, when its runtime starts
            os.environ["TVM_NUM_THREADS"] = str(threads)
        import numpy as np  # noqa: PLC0415
        import tvm  # noqa: PLC0415
        from tvm import relax  # noqa: PLC0415

        self.version = tvm.__version__
        self._np, self._tvm = np, tvm
        self._fn = relax.VirtualMachine(tvm.runtime.load_module(model_path), tvm.cpu())["main"]
        self.input_name = input_name or "input"
        self.model_shape = None  # a compiled library does not expose it: the manifest's input_shape is used
        self.detail = {"device": "cpu", "threads": threads or None}

    def __call__(self, x):
        out = self._fn(self._tvm.runtime.tensor(self._np.ascontiguousarray(x)))
        out = out[0] if isinstance(out, (tuple, list)) or not hasattr(out, "numpy") else out
        return out.numpy()


RUNNERS = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVinoRunner, "tvm": TvmRunner}
DETECT_ONLY = ("tensorrt", "coreml")


def make_runner(args):
    from .sysinfo import runtimes_info

    if args.runtime in DETECT_ONLY:
        info = runtimes_info()[args.runtime]
        fail("runtime_unsupported", f"runtime {args.runtime!r} is detected by edgekit but this runner cannot "
             f"run it yet (available on this board: {info['available']})", EXIT_UNSUPPORTED,
             runtime=args.runtime)
    if args.runtime not in RUNNERS:
        fail("bad_input", f"unknown runtime {args.runtime!r}; accepted: {', '.join(sorted(RUNNERS))}",
             EXIT_BAD_INPUT)
    module = RUNNERS[args.runtime].module
    try:
        __import__(module)
        import numpy  # noqa: F401, PLC0415
    except ImportError as exc:
        fail("runtime_missing", f"runtime {args.runtime!r} is not installed for {sys.executable} "
             f"({exc})", EXIT_RUNTIME_MISSING, runtime=args.runtime, python=sys.executable)
    model_path = os.path.join(args.dir, args.model_file)
    if not os.path.isfile(model_path):
        fail("bad_input", f"model file not found: {model_path}", EXIT_BAD_INPUT)
    try:
        return RUNNERS[args.runtime](model_path, args.threads, args.input_name, args.provider)
    except Exception as exc:  # noqa: BLE001 - any runtime load failure is reported, not hidden
        fail("runtime_failed", f"{args.runtime} could not load {args.model_file}: {exc}", EXIT_RUNTIME_FAILED,
             runtime=args.runtime)


def resolve_shape(args, runner) -> list:
    if args.input_shape:
        shape = [int(v) for v in args.input_shape.split(",")]
    else:
        if runner.model_shape is None:
            fail("bad_input", "the model file does not record its input shape: pass --input-shape", EXIT_BAD_INPUT)
        shape = list(runner.model_shape)
        if any(d is None for d in shape[1:]):
            fail("bad_input", f"model input shape {runner.model_shape} has dynamic dimensions other than the "
                 "batch: pass --input-shape", EXIT_BAD_INPUT)
    fixed_batch = runner.model_shape[0] if runner.model_shape else None
    if args.batch and args.batch > 0:
        if fixed_batch is not None and fixed_batch != args.batch:
            fail("bad_input", f"the model has a fixed batch of {fixed_batch}; batch {args.batch} was asked "
                 "(export with a dynamic batch axis)", EXIT_BAD_INPUT)
        shape[0] = args.batch
    elif shape[0] is None:
        shape[0] = 1
    return shape
