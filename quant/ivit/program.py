"""The I-ViT integer program as a model class and as files ("I-ViT: Integer-only Quantization for Efficient
Vision Transformer Inference", Li & Gu, ICCV 2023).

:class:`IViTModel` is the converted model (an ``fx.GraphModule`` of integer modules and shape ops). It writes
its own integer-only ONNX graph (``write_onnx``, the ``OnnxWriter`` protocol) and saves itself as two files
beside a compress output's ``model.pt2`` (``save_program``): ``ivit.json`` (the graph -- node kinds, targets
and arguments -- and each integer module's type and scalar attributes) and ``ivit.npz`` (the integer buffers:
int8 weights, int32 biases, dyadic multipliers). Both are hashed in the output's manifest. :func:`load`
rebuilds the model from them; nothing is unpickled and nothing is imported by name: module types, functions
and methods are looked up in allow-lists, anything else is refused with the name of the file and node.
"""

from __future__ import annotations

import json
import math
import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from edgekit.errors import UserInputError
from edgekit.quant.ivit import modules as M

FORMAT = 2  # 2: int32 requantization (shift caps), I-LayerNorm at 2**15, Shiftmax sum below 2**22
KIND = "ivit"
GRAPH_FILE = "ivit.json"
TENSOR_FILE = "ivit.npz"

MODULE_TYPES: dict[str, type[nn.Module]] = {
    c.__name__: c for c in (M.IntQuantize, M.IntDequantize, M.IntConst, M.IntRequant, M.IntLinear, M.IntConv2d,
                            M.IntMatMul, M.IntSoftmax, M.IntGELU, M.IntLayerNorm, M.IntAdd, M.IntMean, M.IntReLU)
}
_TORCH_FUNCTIONS = ("cat", "concat", "reshape", "flatten", "permute", "transpose", "unbind", "chunk", "split",
                    "squeeze", "unsqueeze")
FUNCTIONS: dict[str, Any] = {
    **{f"torch.{n}": getattr(torch, n) for n in _TORCH_FUNCTIONS},
    **{f"operator.{n}": getattr(operator, n) for n in ("getitem", "floordiv", "sub", "add", "mul", "truediv", "neg")},
    **{f"math.{n}": getattr(math, n) for n in ("sqrt", "floor", "ceil")},
    "getattr": getattr,
    "len": len,
}
_FUNCTION_NAMES = {id(f): n for n, f in FUNCTIONS.items()}


class IViTModel(fx.GraphModule):
    """A converted I-ViT model: integer modules between an input quantizer and an output dequantizer."""

    integer_only = True  # its ONNX graph has no float op between the input quantizer and output dequantizer

    def write_onnx(self, path: str | Path, example: torch.Tensor, opset: int = 17) -> Path:
        """The integer-only ONNX graph, specialised to ``example``'s shape (see :mod:`.onnx_export`)."""
        from edgekit.quant.ivit.onnx_export import export

        return export(self, example, path, opset=opset)

    def save_program(self, directory: str | Path) -> dict[str, Any]:
        return save(self, directory)


# -------------------------------------------------------------------------------------------- encode


def _enc(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    if isinstance(a, tuple):
        return {"tuple": [_enc(x) for x in a]}
    if isinstance(a, list):
        return [_enc(x) for x in a]
    if isinstance(a, dict):
        return {"dict": {str(k): _enc(v) for k, v in a.items()}}
    if isinstance(a, slice):
        return {"slice": [_enc(a.start), _enc(a.stop), _enc(a.step)]}
    if a is Ellipsis:
        return {"ellipsis": True}
    if isinstance(a, torch.dtype):
        return {"dtype": str(a).removeprefix("torch.")}
    raise UserInputError(f"I-ViT program: cannot store an argument of type {type(a).__name__} ({a!r})")


def _module_attrs(m: nn.Module) -> dict[str, Any]:
    return {k: _enc(v) for k, v in vars(m).items() if not k.startswith("_") and k != "training"}


def save(model: fx.GraphModule, directory: str | Path) -> dict[str, Any]:
    """Write ``ivit.json`` and ``ivit.npz`` into ``directory``; return the manifest's ``program`` entry."""
    from edgekit.artifacts import write_json_atomic

    directory = Path(directory)
    nodes = []
    for n in model.graph.nodes:
        if n.op == "call_function":
            target = _FUNCTION_NAMES.get(id(n.target))
            if target is None:
                raise UserInputError(f"I-ViT program: node {n.name} calls {n.target!r}, which is not storable")
        else:
            target = n.target
        nodes.append({"name": n.name, "op": n.op, "target": target, "args": _enc(n.args), "kwargs": _enc(dict(n.kwargs))})
    modules, tensors = {}, {}
    for name, m in model.named_modules():
        if type(m).__name__ not in MODULE_TYPES or type(m) is not MODULE_TYPES[type(m).__name__]:
            continue
        if isinstance(m, M.IntModule) and not m.frozen:
            raise UserInputError("I-ViT program: freeze the model first (edgekit.quant.ivit.convert.freeze)")
        modules[name] = {"type": type(m).__name__, "attrs": _module_attrs(m), "buffers": sorted(dict(m.named_buffers()))}
        for b, t in m.named_buffers():
            tensors[f"{name}/{b}"] = t.detach().cpu().numpy()
    write_json_atomic(directory / GRAPH_FILE, {"format": FORMAT, "kind": KIND, "nodes": nodes, "modules": modules})
    tmp = directory / (".tmp-" + TENSOR_FILE)
    with open(tmp, "wb") as fh:
        np.savez(fh, **tensors)
    tmp.replace(directory / TENSOR_FILE)
    return {"kind": KIND, "format": FORMAT, "files": [GRAPH_FILE, TENSOR_FILE]}


# -------------------------------------------------------------------------------------------- decode


def _dec(a: Any, env: dict[str, fx.Node], where: str) -> Any:
    if isinstance(a, list):
        return [_dec(x, env, where) for x in a]
    if not isinstance(a, dict):
        return a
    if len(a) != 1:
        raise UserInputError(f"{where}: unreadable argument {json.dumps(a)[:200]}")
    (key, v), = a.items()
    if key == "node":
        if v not in env:
            raise UserInputError(f"{where}: refers to node {v!r} before it is defined")
        return env[v]
    if key == "tuple":
        return tuple(_dec(x, env, where) for x in v)
    if key == "dict":
        return {k: _dec(x, env, where) for k, x in v.items()}
    if key == "slice":
        return slice(*(_dec(x, env, where) for x in v))
    if key == "ellipsis":
        return Ellipsis
    if key == "dtype" and isinstance(getattr(torch, str(v), None), torch.dtype):
        return getattr(torch, v)
    raise UserInputError(f"{where}: unreadable argument {json.dumps(a)[:200]}")


def _build_module(name: str, spec: dict[str, Any], tensors: Any, where: str) -> nn.Module:
    cls = MODULE_TYPES.get(spec.get("type"))
    if cls is None:
        raise UserInputError(f"{where}: module {name} has type {spec.get('type')!r}; accepted: {', '.join(MODULE_TYPES)}")
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for k, v in spec.get("attrs", {}).items():
        setattr(m, k, _dec(v, {}, where))
    for b in spec.get("buffers", []):
        key = f"{name}/{b}"
        if key not in tensors.files:
            raise UserInputError(f"{where}: {TENSOR_FILE} lacks tensor {key}")
        m.register_buffer(b, torch.from_numpy(np.array(tensors[key])))
    return m


def load(directory: str | Path, info: dict[str, Any] | None = None) -> IViTModel:
    """Rebuild the :class:`IViTModel` saved by :func:`save` in ``directory``."""
    from edgekit.quant.ivit.convert import set_module

    directory = Path(directory)
    where = str(directory / GRAPH_FILE)
    try:
        spec = json.loads((directory / GRAPH_FILE).read_text())
        tensors = np.load(directory / TENSOR_FILE, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{directory}: unreadable I-ViT program ({type(exc).__name__}: {exc})") from None
    if spec.get("format") != FORMAT or spec.get("kind") != KIND:
        raise UserInputError(f"{where}: format {spec.get('format')!r} / kind {spec.get('kind')!r}; accepted: {FORMAT} / {KIND}")
    root = nn.Module()
    for name, mspec in spec["modules"].items():
        set_module(root, name, _build_module(name, mspec, tensors, where))
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for n in spec["nodes"]:
        op, target = n["op"], n["target"]
        at = f"{where}: node {n.get('name')!r}"
        if op == "call_function":
            if target not in FUNCTIONS:
                raise UserInputError(f"{at}: function {target!r} is not one an I-ViT program may call")
            target = FUNCTIONS[target]
        elif op not in ("placeholder", "call_module", "call_method", "get_attr", "output"):
            raise UserInputError(f"{at}: unknown node kind {op!r}")
        args, kwargs = _dec(n["args"], env, at), _dec(n["kwargs"], env, at)
        env[n["name"]] = graph.create_node(op, target, tuple(args) if isinstance(args, (list, tuple)) else (args,),
                                           kwargs, name=n["name"])
    graph.lint()
    return IViTModel(root, graph).eval()
