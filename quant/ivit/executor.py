"""The integer executor of the I-ViT form ("I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", Li & Gu, ICCV 2023): numpy int64 arithmetic only between the input quantizer and the output
dequantizer.

It interprets a converted, frozen model's graph node by node: integer modules run their kernels on numpy
arrays (LayerNorm's Newton square root iterates to convergence here), shape ops map to numpy through a
registry, and every intermediate tensor is checked to be an integer array -- a float anywhere inside raises.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from edgekit.registry import KeyedRegistry
from edgekit.errors import UserInputError
from edgekit.quant.ivit import modules as M

NUMPY_FUNCTIONS: KeyedRegistry[Callable[..., Any]] = KeyedRegistry("integer executor function")
NUMPY_METHODS: KeyedRegistry[Callable[..., Any]] = KeyedRegistry("integer executor method")


def _add_all(registry: KeyedRegistry, table: dict) -> None:
    for key, fn in table.items():
        registry.add(key, fn, replace=True)


def _dims(args: tuple) -> tuple:
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


def _flatten(x, start_dim=0, end_dim=-1):
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1 :])


def _expand(x, *sizes):
    sizes = _dims(sizes)
    lead = len(sizes) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return np.ascontiguousarray(np.broadcast_to(x, shape))


def _chunk(x, chunks, dim=0):
    return tuple(np.array_split(x, chunks, axis=dim))


def _split(x, size, dim=0):
    if isinstance(size, int):
        return tuple(np.split(x, range(size, x.shape[dim], size), axis=dim))
    return tuple(np.split(x, np.cumsum(size)[:-1], axis=dim))


_add_all(NUMPY_METHODS, {
    "reshape": lambda x, *s: x.reshape(_dims(s)),
    "view": lambda x, *s: x.reshape(_dims(s)),
    "permute": lambda x, *d: np.transpose(x, _dims(d)),
    "transpose": lambda x, a, b: np.swapaxes(x, a, b),
    "flatten": _flatten,
    "contiguous": lambda x: x,
    "clone": lambda x: x.copy(),
    "expand": _expand,
    "unsqueeze": lambda x, d: np.expand_dims(x, d),
    "squeeze": lambda x, d=None: np.squeeze(x, d),
    "unbind": lambda x, dim=0: tuple(np.moveaxis(x, dim, 0)),
    "chunk": _chunk,
    "split": _split,
    "t": lambda x: x.T,
    "unflatten": lambda x, dim, sizes: x.reshape(x.shape[: dim % x.ndim] + tuple(sizes) + x.shape[dim % x.ndim + 1 :]),
    "size": lambda x, d=None: x.shape if d is None else x.shape[d],
    "dim": lambda x: x.ndim,
})
_add_all(NUMPY_FUNCTIONS, {
    operator.getitem: operator.getitem,
    operator.floordiv: operator.floordiv,
    operator.sub: operator.sub,
    getattr: lambda x, name: x.shape if name == "shape" else getattr(x, name),
    len: len,
    torch.cat: lambda xs, dim=0: np.concatenate(xs, axis=dim),
    torch.concat: lambda xs, dim=0: np.concatenate(xs, axis=dim),
    torch.reshape: lambda x, s: x.reshape(s),
    torch.flatten: _flatten,
    torch.permute: lambda x, d: np.transpose(x, d),
    torch.transpose: lambda x, a, b: np.swapaxes(x, a, b),
    torch.unbind: lambda x, dim=0: tuple(np.moveaxis(x, dim, 0)),
    torch.chunk: _chunk,
    torch.split: _split,
    torch.squeeze: lambda x, d=None: np.squeeze(x, d),
    torch.unsqueeze: lambda x, d: np.expand_dims(x, d),
})


def _check(value: Any, node: fx.Node) -> None:
    items = value if isinstance(value, (tuple, list)) else (value,)
    for v in items:
        if isinstance(v, np.ndarray) and not np.issubdtype(v.dtype, np.integer):
            raise AssertionError(f"integer executor: node {node.name} produced a {v.dtype} tensor")


def _has_array(args: Any) -> bool:
    return any(isinstance(a, np.ndarray) or (isinstance(a, (tuple, list)) and _has_array(a)) for a in args)


def run_module(m: nn.Module, args: list[Any]) -> Any:
    if isinstance(m, M.IntQuantize):
        x = np.asarray(args[0], dtype=np.float32)
        return np.clip(np.round(x * np.float32(m.inv)), m.out_lo, m.out_hi).astype(np.int64)
    if isinstance(m, M.IntDequantize):
        return np.asarray(args[0]).astype(np.float32) * np.float32(m.scale.item())
    if isinstance(m, M.IntLayerNorm):
        return m.kernel(*args, p=m.params_np(), steps=None)  # Newton to convergence
    if isinstance(m, M.IntModule):
        if not m.frozen:
            raise UserInputError("integer executor: freeze the model first (edgekit.quant.ivit.convert.freeze)")
        return m.kernel(*args, p=m.params_np())
    raise UserInputError(f"integer executor: no integer form for module {type(m).__name__}")


def run(model: fx.GraphModule, x: torch.Tensor | np.ndarray, record: bool = False):
    """Run a frozen I-ViT model on ``x`` with numpy; returns the float32 output (and, with ``record``, the
    value of every node by name)."""
    if not isinstance(model, fx.GraphModule):
        raise UserInputError("integer executor: expected a model converted by edgekit.quant.ivit.convert")
    mods = dict(model.named_modules())
    env: dict[str, Any] = {}

    def load(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n.name])

    out = None
    for node in model.graph.nodes:
        if node.op == "placeholder":
            value = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        elif node.op == "call_module":
            value = run_module(mods[node.target], list(load(node.args)))
        elif node.op == "call_function":
            fn = NUMPY_FUNCTIONS.lookup(node.target)
            if fn is None and node.target.__module__ in ("_operator", "math") and not _has_array(load(node.args)):
                fn = node.target  # Python arithmetic on sizes
            if fn is None:
                raise UserInputError(f"integer executor: no numpy form for {node.format_node()}")
            value = fn(*load(node.args), **load(node.kwargs))
        elif node.op == "call_method":
            fn = NUMPY_METHODS.lookup(node.target)
            if fn is None:
                raise UserInputError(f"integer executor: no numpy form for method .{node.target}()")
            value = fn(*load(node.args), **load(node.kwargs))
        elif node.op == "get_attr":
            value = getattr(model, node.target)
        elif node.op == "output":
            out = load(node.args[0])
            break
        else:  # pragma: no cover
            raise UserInputError(f"integer executor: unknown node kind {node.op}")
        if node.op != "placeholder" and not (node.op == "call_module" and isinstance(mods[node.target], M.IntDequantize)):
            _check(value, node)
        env[node.name] = value
    return (out, env) if record else out
