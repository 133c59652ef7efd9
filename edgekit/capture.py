"""Graph capture: one typed record of a model's graph for every stage that needs one (fuse, quantize, prune, ...).

    >>> cap = capture(model, (example,))
    >>> cap.method, cap.module_path(node)
    ('torch.export', 'layers.0.conv1')

Models written by other people rarely trace with ``torch.fx.symbolic_trace``: control flow on shapes
(``if x.shape[-1] > 16``), ``int(x.shape[1])``, config-flag branches, dict / dataclass / ``ModelOutput``
outputs. :func:`capture` uses ``torch.export`` (non-strict, static shapes from the example input the pipeline
holds), which runs ``forward`` in Python and records the ATen ops it executes, so all of that is fine.
``torch.fx`` is kept as a fast path (``fx=True``) for models it can trace; it is never the only path.

The result, :class:`Capture`, is a plain ``fx.GraphModule`` (``forward(*inputs) -> tensor``: an output that
is not a tensor is reduced to its logits leaf, see :mod:`edgekit.outputs`) and, for every node, the path of
the user's module that produced it (from ``nn_module_stack``), so a stage can change the user's own modules.
When ``torch.export`` cannot capture a model, :func:`capture` raises one :class:`UserInputError` naming the
construct, the file:line in the user's code, and the one thing to change (:func:`explain_export_error`).

One retry (:func:`export_retrying`, used by the pruning capture too): a model can hold a 0-d integer tensor as a
plain attribute where its ``forward`` expects a number. ``transformers``' Swin does this to itself: under
``torch.jit`` tracing (a TorchScript ONNX export of the same instance) ``SwinLayer.set_shift_and_window_size``
(modeling_swin.py:578-582) stores ``torch.min(torch.tensor(input_resolution))`` in ``self.window_size``, and the
next ``if min(input_resolution) <= self.window_size`` is control flow on a tensor's value, which torch.export
refuses (``GuardOnDataDependentSymNode ... Eq(u0, 1)``). When an export fails that way and the model has such
attributes, it is retried with them as the Python numbers they hold (restored afterwards; the capture records
their names).
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from torch import fx, nn

from edgekit.errors import UserInputError
from edgekit.outputs import SelectOutput, unwrap

FX = "torch.fx"
EXPORT = "torch.export"
METHODS = (FX, EXPORT)


@dataclass
class Capture:
    """A captured graph. ``module_paths`` maps a node name to the user's module that ran it (paths are
    relative to the user's model, without the :class:`SelectOutput` wrapper)."""

    method: str  # FX or EXPORT
    graph_module: fx.GraphModule
    module_paths: dict[str, str] = field(default_factory=dict)
    output: str | None = None  # the output leaf the graph returns, when the model's output was not a tensor
    fx_error: str | None = None  # why torch.fx was not used (None when it was, or when it was not tried)
    batch_size: int | None = None  # the batch size the graph is fixed to; None: any batch size
    numbers: list[str] = field(default_factory=list)  # 0-d tensor attributes captured as numbers (export_retrying)

    def runnable(self) -> nn.Module:
        """The graph as a module that takes any batch size (a fixed-batch graph is run in chunks)."""
        return self.graph_module if self.batch_size is None else FixedBatch(self.graph_module, self.batch_size)

    def module_path(self, node: fx.Node) -> str | None:
        return self.module_paths.get(node.name)

    def nodes(self) -> list[fx.Node]:
        return list(self.graph_module.graph.nodes)

    def summary(self) -> dict[str, Any]:
        """What the report records about the capture."""
        out: dict[str, Any] = {"method": self.method, "nodes": len(self.graph_module.graph.nodes)}
        if self.output is not None:
            out["output"] = self.output
        if self.fx_error:
            out["fx_error"] = self.fx_error
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        if self.numbers:
            out["tensor_attributes_as_numbers"] = list(self.numbers)
        return out


class FixedBatch(nn.Module):
    """Runs a graph captured at a fixed batch size on any batch, ``batch_size`` samples at a time."""

    def __init__(self, body: nn.Module, batch_size: int) -> None:
        super().__init__()
        self.body = body  # not ``graph``: a GraphModule's ``.graph`` is its fx.Graph, and exporters re-trace this
        self.batch_size = batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.batch_size
        if x.shape[0] == b:
            return self.body(x)
        if x.shape[0] % b:
            raise ValueError(f"this model was captured at batch size {b}; got a batch of {x.shape[0]}")
        return torch.cat([self.body(x[i : i + b]) for i in range(0, x.shape[0], b)])


def capture(model: nn.Module, example_inputs: Sequence[torch.Tensor] | None, *, fx: bool = False,
            tracer: "torch.fx.Tracer | None" = None, what: str = "capture") -> Capture:
    """Capture ``model``'s graph (the model is not modified; the graph holds copies of its parameters).

    ``fx=True`` tries ``torch.fx`` first (with ``tracer`` when given, e.g. one that keeps some modules as
    leaves) and falls back to ``torch.export`` on the example inputs. ``what`` prefixes error messages.
    """
    if isinstance(model, FixedBatch):  # e.g. a pruned fixed-batch graph: capture its body at that batch size
        b = model.batch_size
        cap = capture(model.body, [x[:b] for x in example_inputs] if example_inputs else example_inputs, fx=fx,
                      tracer=tracer, what=what)
        cap.batch_size = b
        return cap
    inner, path = unwrap(model)
    fx_error = None
    if fx or tracer is not None:
        try:
            return _capture_fx(model, inner, path, tracer)
        except Exception as exc:  # noqa: BLE001 - fx raises TraceError, TypeError, AttributeError, ...
            fx_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if not example_inputs:
        raise UserInputError(
            f"{what}: torch.fx cannot trace {type(inner).__name__} ({fx_error}) and no example inputs were given; "
            "torch.export needs them (the pipeline passes a test sample)"
        )
    return _capture_export(inner, path, tuple(example_inputs), fx_error, what)


def _capture_fx(model: nn.Module, inner: nn.Module, path: str | None, tracer: "torch.fx.Tracer | None") -> Capture:
    t = tracer or torch.fx.Tracer()
    graph = t.trace(inner)
    if path is not None:  # fx traced it, but the logits leaf of a structured output is selected on the export path
        raise TypeError(f"torch.fx traced {type(inner).__name__}; its output[{path!r}] is selected on the torch.export path")
    gm = fx.GraphModule(inner, graph, type(inner).__name__)
    paths = {n.name: str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    return Capture(FX, gm, paths, None, None)


def _capture_export(inner: nn.Module, path: str | None, example: tuple, fx_error: str | None, what: str) -> Capture:
    target = SelectOutput(inner, path) if path is not None else inner
    was_training = inner.training
    inner.eval()

    def attempt() -> tuple["torch.export.ExportedProgram", int | None]:
        with torch.no_grad():
            two = tuple(_batch_of_two(x) for x in example)
            ep = _export(target, two, dynamic=True)
            if _dynamic_batch(ep, two):
                return ep, None
            # the model fixes its batch size: capture at the example's batch size
            one = tuple(x[:1] if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in example)
            return _export(target, one, dynamic=False), 1

    try:
        (ep, batch_size), numbers = export_retrying(inner, attempt)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; explained below
        raise UserInputError(f"{what}: {explain_export_error(exc, inner)}") from None
    finally:
        inner.train(was_training)
    prefix = "model." if path is not None else ""
    gm, paths = _plain_graph_module(ep, prefix, type(inner).__name__)
    return Capture(EXPORT, gm, paths, path, fx_error, batch_size, numbers)


_T = TypeVar("_T")
_DATA_DEPENDENT = re.compile(r"data-dependent|GuardOnDataDependent")


def tensor_numbers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(path, module, attribute)`` of every plain attribute (not a parameter or buffer) of ``model``'s modules
    that holds a 0-d integer or bool tensor."""
    found = []
    for mpath, mod in model.named_modules():
        for attr, value in vars(mod).items():
            if (isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.dim() == 0
                    and not value.is_floating_point() and not value.is_complex()):
                found.append((f"{mpath}.{attr}" if mpath else attr, mod, attr))
    return found


@contextmanager
def numbers_for_tensors(model: nn.Module) -> Iterator[list[str]]:
    """Within the block, the attributes :func:`tensor_numbers` finds hold ``value.item()``; restored on exit.
    Yields their paths."""
    found = tensor_numbers(model)
    saved = [(mod, attr, getattr(mod, attr)) for _, mod, attr in found]
    try:
        for mod, attr, value in saved:
            setattr(mod, attr, value.item())
        yield [p for p, _, _ in found]
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)


def export_retrying(model: nn.Module, attempt: Callable[[], _T]) -> tuple[_T, list[str]]:
    """``attempt()`` (a torch.export of ``model``); when it fails on a data-dependent guard and ``model`` holds
    0-d integer tensors as plain attributes, once more with them as numbers (:func:`numbers_for_tensors`).
    Returns ``(result, paths of the attributes replaced)``; raises the first error when the retry fails too."""
    try:
        return attempt(), []
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types
        if not _DATA_DEPENDENT.search(f"{type(exc).__name__} {exc}") or not tensor_numbers(model):
            raise
        first = exc
    with numbers_for_tensors(model) as names:
        try:
            return attempt(), names
        except Exception:  # noqa: BLE001 - the first error is the one to explain
            raise first from None


def _dynamic_batch(ep: "torch.export.ExportedProgram", example: tuple) -> bool:
    """Whether the program runs at another batch size (a guard such as ``int(x.shape[0] / n) == 2`` can pin it
    even when the input's batch dimension is symbolic, so it is run once at batch 3)."""
    three = tuple(torch.cat([x, x[:1]]) if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in example)
    try:
        ep.module()(*three)
    except Exception:  # noqa: BLE001 - a failed guard or a shape error: the batch size is fixed
        return False
    return True


def _batch_of_two(x: Any) -> Any:
    """A batch of 2 from the example (a batch of 1 would make torch.export specialize the batch size)."""
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 1:
        return torch.cat([x, x.flip(-1) if x.dim() > 1 else x])
    return x


def _export(target: nn.Module, example: tuple, dynamic: bool) -> "torch.export.ExportedProgram":
    """Non-strict export, with a dynamic batch dimension where the model allows one (``Dim.AUTO``: a model that
    fixes its batch size, e.g. with ``int(x.shape[0] / n)``, gets it specialized)."""
    if not dynamic:
        return torch.export.export(target, example, strict=False)
    batch = torch.export.Dim.AUTO
    dynamic: tuple = tuple({0: batch} if isinstance(x, torch.Tensor) and x.dim() > 0 else None for x in example)
    params = list(inspect.signature(target.forward).parameters.values())
    if params and params[0].kind is inspect.Parameter.VAR_POSITIONAL:  # forward(*args): one tuple input
        dynamic = (dynamic,)
    return torch.export.export(target, example, dynamic_shapes=dynamic, strict=False)


def _strip(name: str, prefix: str) -> str:
    if prefix and name.startswith(prefix):
        return name[len(prefix):]
    return "" if prefix and name == prefix.rstrip(".") else name


def _plain_graph_module(ep: "torch.export.ExportedProgram", prefix: str, class_name: str) -> tuple[fx.GraphModule, dict[str, str]]:
    """An ordinary ``fx.GraphModule`` (``forward(*inputs) -> output``, parameters as attributes under the user's
    module paths, no pytree codegen or guard module) from an exported program."""
    unlifted = ep.module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    attrs: dict[str, Any] = {}
    out_value = None
    for node in unlifted.graph.nodes:
        if node.op == "call_module":  # the input guard module of ep.module(); shapes are static here
            continue
        if node.op == "output":
            out_value = fx.node.map_arg(node.args[0], lambda n: env[n])
            break
        new = graph.node_copy(node, lambda n: env[n])
        if node.op == "get_attr":
            name = _strip(str(node.target), prefix)
            new.target = name
            attrs[name] = copy.deepcopy(_get_attr(unlifted, str(node.target)))
        env[node] = new
    if isinstance(out_value, (tuple, list)) and len(out_value) == 1:
        out_value = out_value[0]
    graph.output(out_value)
    graph.eliminate_dead_code()
    gm = fx.GraphModule(attrs, graph, class_name)
    paths: dict[str, str] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            paths[node.name] = _strip(list(stack.values())[-1][0], prefix)
        elif node.op == "get_attr":
            paths[node.name] = str(node.target).rpartition(".")[0]
    return gm, paths


def _get_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------- layer modules


def _conv2d(weight: torch.Tensor, bias: torch.Tensor | None, stride=1, padding=0, dilation=1, groups=1) -> nn.Module | None:
    if isinstance(padding, str) or weight.dim() != 4:
        return None
    return nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride, padding, dilation, groups,
                     bias=bias is not None)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module | None:
    return nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None) if weight.dim() == 2 else None


_LAYER_OPS = {torch.ops.aten.conv2d.default: _conv2d, torch.ops.aten.linear.default: _linear}


def layers_as_modules(cap: Capture) -> dict[str, str]:
    """Turn the ATen ``conv2d`` / ``linear`` calls of an exported graph whose weight (and bias) are parameters
    into ``call_module`` nodes of ``nn.Conv2d`` / ``nn.Linear`` (in place), so module-level passes (QDQ
    placement, CLE, int8 weight layers) work on both graph dialects.

    Each layer is named after its weight: ``layers.0.conv1`` for ``layers.0.conv1.weight`` (the user's module
    path), ``blocks.0.attn.in_proj`` for ``nn.MultiheadAttention``'s ``in_proj_weight``. A weight used by several
    calls gives one module called several times. Returns ``{layer name: user module path}``.
    """
    gm = cap.graph_module  # also an fx trace of an exported graph (a pruned model) holds ATen calls
    by_weight: dict[str, str] = {}
    names: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        make = _LAYER_OPS.get(node.target) if node.op == "call_function" else None
        if make is None:
            continue
        x, w, b, *rest = list(node.args) + [None] * (3 - len(node.args))
        if not (_is_attr(w) and (b is None or _is_attr(b))):
            continue
        name = by_weight.get(w.target)
        if name is None:
            weight = _get_attr(gm, w.target)
            bias = _get_attr(gm, b.target) if b is not None else None
            layer = make(weight, bias, *rest, **node.kwargs)
            if layer is None:
                continue
            layer.weight = nn.Parameter(weight.detach().clone())
            if bias is not None:
                layer.bias = nn.Parameter(bias.detach().clone())
            name = _layer_name(gm, w.target)
            if _exists(gm, name):
                gm.set_submodule(name, layer)
            else:
                gm.add_submodule(name, layer)
            by_weight[w.target] = name
            names[name] = cap.module_paths.get(node.name, name)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (x,))
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        cap.module_paths[call.name] = names[name]
        for attr in (w, b):
            if attr is not None and not attr.users:
                gm.graph.erase_node(attr)
    gm.graph.lint()
    gm.recompile()
    return names


def _is_attr(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def _exists(gm: nn.Module, name: str) -> bool:
    try:
        gm.get_submodule(name)
    except AttributeError:
        return False
    return True


def _layer_name(gm: nn.Module, weight_target: str) -> str:
    """``a.b.weight`` -> ``a.b`` when ``a.b`` holds nothing but parameters (the container of a user layer);
    ``a.in_proj_weight`` -> ``a.in_proj``; a free name otherwise."""
    owner, _, attr = weight_target.rpartition(".")
    if attr == "weight" and owner and _exists(gm, owner):
        container = gm.get_submodule(owner)
        held = {n for n, _ in container.named_parameters(recurse=False)} | {n for n, _ in container.named_buffers(recurse=False)}
        if not list(container.children()) and held <= {"weight", "bias"}:
            return owner
    base = f"{owner}.{attr.removesuffix('_weight').removesuffix('weight') or 'layer'}" if owner else attr.removesuffix("_weight") or "layer"
    name, i = base, 1
    while _exists(gm, name) or hasattr(gm.get_submodule(owner) if owner else gm, name.rpartition(".")[2]):
        name, i = f"{base}_{i}", i + 1
    return name


# ------------------------------------------------------------------------------------------------ errors

# frames that are not the model's code: torch's, edgekit's (all its stage folders), Python's own and generated code
# (``<string>``, ``<eval_with_key>``); a model library installed in site-packages (transformers, timm) is the model's code
_SKIP = (os.sep + "torch" + os.sep, os.sep + "edgekit" + os.sep, "<frozen")


def _not_user(filename: str) -> bool:
    if filename.startswith("<") or any(s in filename for s in _SKIP):
        return True
    return any(filename.startswith(root) for root in _not_user_roots())


def _not_user_roots() -> tuple[str, ...]:
    import importlib.util
    import sysconfig

    roots = [sysconfig.get_paths()["stdlib"] + os.sep]
    for sub in ("prune", "quant", "exporters", "devices"):  # the stage folders setup.py maps into edgekit
        spec = importlib.util.find_spec(f"edgekit.{sub}")
        roots += [loc + os.sep for loc in (spec.submodule_search_locations or [])] if spec else []
    return tuple(roots)
_FILE_LINE = re.compile(r'File "([^"]+)", line (\d+)')

# (pattern in the message, what it is, the one thing to change)
_ADVICE = (
    (r"data-dependent|GuardOnDataDependent|\.item\(\)",
     "Python control flow on a tensor's values",
     "branch on shapes or config only; for a value-dependent choice use torch.where (or torch.cond)"),
    (r"not a known type|register a pytree|pytree",
     "an output (or input) of a type torch.export does not know",
     "return tensors, or a tuple / dict / dataclass of tensors (pass --output NAME to pick the logits)"),
    (r"numpy|\.tolist\(\)|tensor subclasses",
     "a tensor converted to NumPy or Python values inside forward",
     "keep the computation in torch ops (no .numpy() / .tolist() in forward)"),
    (r"Dynamic control flow|torch\.cond",
     "dynamic control flow",
     "make the branch depend on shapes or config only"),
)


def user_frame(exc: BaseException) -> str | None:
    """``file:line`` of the innermost frame in the user's code (from the message, else the traceback)."""
    text = str(exc)
    hits = [(f, int(n)) for f, n in _FILE_LINE.findall(text) if not _not_user(f)]
    if hits:
        return f"{hits[-1][0]}:{hits[-1][1]}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _not_user(f.filename)]
    if frames:
        return f"{frames[-1].filename}:{frames[-1].lineno}"
    return None


def explain_export_error(exc: BaseException, model: nn.Module) -> str:
    """One message for a model ``torch.export`` could not capture: what, where (file:line), what to change."""
    text = str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    what, change = f"{type(exc).__name__}: {first[:200]}", "make forward traceable by torch.export at that line"
    for pattern, name, advice in _ADVICE:
        if re.search(pattern, f"{type(exc).__name__} {text}"):
            what, change = f"{name} ({type(exc).__name__}: {first[:160]})", advice
            break
    where = user_frame(exc)
    loc = f" at {where}" if where else ""
    return (f"torch.export cannot capture {type(model).__name__}: {what}{loc}. "
            f"To fix: {change}.")
