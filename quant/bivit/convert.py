"""Convert a float model into its BiViT form (He et al., "BiViT: Extremely Compressed Binary Vision
Transformers", ICCV 2023): a registry keyed by module type says how each block is binarized.

Built-in converters:

* ``Attention`` (edgekit.ops.transformer): ``qkv`` / ``proj`` -> :class:`BinaryLinear` (group ``attn``);
  with 1-bit activations ``matmul_qk`` / ``matmul_av`` -> :class:`BinaryMatMul` (binary Q, K, V) and
  ``softmax`` -> :class:`BinarySoftmax` (softmax-aware or naive); with 8-bit activations the two matmuls
  fake-quantize their operands to int8. ``attention_mean`` (default on) divides ``A @ V`` by the number of
  ones in each row of the binary map A: methods.md defines A, not what follows it; unnormalised, a token that
  selects k keys gets an output k times larger than the float model's weighted average (the accuracy
  benchmark, benchmarks/bivit_accuracy.py, has a row with it off).
* ``Mlp``: ``fc1`` / ``fc2`` -> :class:`BinaryLinear` (group ``mlp``).
* any other ``nn.Linear`` -> :class:`BinaryLinear` (group ``linear``).

Convolutions (patch embedding, CNN stems of hybrid models) are not registered, so they stay in float. Layers
whose qualified name matches a ``keep_fp`` pattern (fnmatch, default ``patch_embed*`` and ``head*``: the
first and last layers) stay in float too. Register a converter for your own block with
``@register_converter(MyBlock)``: ``fn(module, name, options, keep) -> new module`` (it may change
``module`` in place: :func:`convert` works on a deep copy), where ``keep(name)`` says
whether a qualified name must stay in float.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

from torch import nn

from edgekit.registry import KeyedRegistry
from edgekit.errors import UserInputError
from edgekit.ops.transformer import Attention, Mlp
from edgekit.quant.bivit.modules import BinaryLinear, BinaryMatMul, BinarySoftmax, binary_modules

__all__ = ["BinarizeOptions", "register_converter", "converter_for", "convert", "has_block_converter", "GROUPS", "DEFAULT_KEEP_FP"]

DEFAULT_KEEP_FP = ("patch_embed*", "head*")
GROUPS = ("attn", "mlp", "linear")
GELU_TAIL_SHIFT = -1e-3  # initial activation threshold of the layer after a GELU (see _convert_mlp)


@dataclass(frozen=True)
class BinarizeOptions:
    """How layers are binarized (the part of the stage config that defines the architecture)."""

    act_bits: Literal[1, 8, 32] = 1
    softmax_aware: bool = True
    binarize_attention: bool = True  # binarize / quantize Q, K, V and the attention map, not only the linears
    act_shift: bool = True  # learnable per-feature threshold before sign (1-bit activations only)
    attention_mean: bool = True  # A @ V divided by the number of selected tokens per row (see BinaryMatMul)
    keep_fp: tuple[str, ...] = DEFAULT_KEEP_FP

    def __post_init__(self) -> None:
        if self.act_bits not in (1, 8, 32):
            raise UserInputError(f"bivit: activation bits {self.act_bits!r}; accepted: 1, 8, 32")
        object.__setattr__(self, "keep_fp", tuple(self.keep_fp))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_fp"] = list(self.keep_fp)
        return d


Keep = Callable[[str], bool]
Converter = Callable[[nn.Module, str, BinarizeOptions, Keep], nn.Module]
CONVERTERS: KeyedRegistry[Converter] = KeyedRegistry("BiViT converter")  # by module type, along the MRO


def register_converter(module_type: type) -> Callable[[Converter], Converter]:
    """Register ``fn(module, name, options, keep) -> new_module`` for ``module_type`` (returns fn unchanged)."""

    def decorator(fn: Converter) -> Converter:
        CONVERTERS.add(module_type, fn, replace=True)
        return fn

    return decorator


def converter_for(module: nn.Module) -> Converter | None:
    return CONVERTERS.lookup(type(module))


def has_block_converter(model: nn.Module) -> bool:
    """Whether some module of ``model`` has a block converter (edgekit's ``Attention`` / ``Mlp`` or a
    registered type); models without one (third-party ViTs) are converted on their captured graph
    (:mod:`edgekit.quant.bivit.graph`)."""
    return any(converter_for(m) not in (None, _convert_linear) for m in model.modules())


def _binary_linear(lin: nn.Linear, name: str, opts: BinarizeOptions, keep: Keep, group: str,
                   shift_init: float = 0.0) -> nn.Module:
    if keep(name):
        return lin
    return BinaryLinear.from_linear(lin, opts.act_bits, group, opts.act_shift, shift_init)


@register_converter(nn.Linear)
def _convert_linear(m: nn.Linear, name: str, opts: BinarizeOptions, keep: Keep) -> nn.Module:
    return _binary_linear(m, name, opts, keep, "linear")


@register_converter(Mlp)
def _convert_mlp(m: Mlp, name: str, opts: BinarizeOptions, keep: Keep) -> nn.Module:
    new = m  # convert() works on a deep copy: blocks are changed in place
    new.fc1 = _binary_linear(m.fc1, f"{name}.fc1", opts, keep, "mlp")
    # GELU's negative tail runs from about -1e-3 (x = -3.2) down to -0.0 (x < -5.5, where 1 + erf underflows), and
    # torch and ONNX Runtime round that tail differently (measured: 5.48e-6 vs 5.76e-6 at x = -4.6, and the
    # point where it becomes -0.0 moves). A sign threshold at exactly 0 would sit on that tail; fc2's learnable
    # threshold starts at -1e-3 instead, where the two runtimes agree to ~1e-4 relative.
    shift = GELU_TAIL_SHIFT if isinstance(m.act, nn.GELU) else 0.0
    new.fc2 = _binary_linear(m.fc2, f"{name}.fc2", opts, keep, "mlp", shift)
    return new


@register_converter(Attention)
def _convert_attention(m: Attention, name: str, opts: BinarizeOptions, keep: Keep) -> nn.Module:
    new = m
    new.qkv = _binary_linear(m.qkv, f"{name}.qkv", opts, keep, "attn")
    new.proj = _binary_linear(m.proj, f"{name}.proj", opts, keep, "attn")
    if opts.binarize_attention and opts.act_bits == 1:
        new.matmul_qk = BinaryMatMul(1, binarize_a=True)
        new.softmax = BinarySoftmax(m.softmax.dim, "softmax_aware" if opts.softmax_aware else "naive")
        # its left operand is the 0/1 attention map
        new.matmul_av = BinaryMatMul(1, binarize_a=False, normalize_a=opts.attention_mean)
    elif opts.binarize_attention and opts.act_bits == 8:
        new.matmul_qk = BinaryMatMul(8)
        new.matmul_av = BinaryMatMul(8)
    return new


def _walk(module: nn.Module, prefix: str, opts: BinarizeOptions, keep: Keep, kept: list[str]) -> None:
    for child_name, child in list(module.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        fn = converter_for(child)
        if fn is None:
            _walk(child, name, opts, keep, kept)
            continue
        if keep(name):
            kept.append(name)
            continue
        setattr(module, child_name, fn(child, name, opts, keep))


def convert(model: nn.Module, options: BinarizeOptions | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A binarized copy of ``model`` (the input is left as it is) and a report of what was converted."""
    opts = options or BinarizeOptions()
    new = copy.deepcopy(model)
    kept: list[str] = []
    patterns = opts.keep_fp

    def keep(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    _walk(new, "", opts, keep, kept)
    mods = binary_modules(new)
    linears = [(n, m) for n, m in mods if isinstance(m, BinaryLinear)]
    if not linears:
        types = ", ".join(CONVERTERS.names())
        raise UserInputError(
            f"bivit: model {type(model).__name__} has no layer to binarize (registered types: {types}; "
            f"keep_fp patterns {list(patterns)} exclude the rest)"
        )
    # layers under a registered block that keep_fp excluded (e.g. blocks.0.attn.qkv)
    kept += [n for n, m in new.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, BinaryLinear)
             and keep(n) and n not in kept]
    new.bivit_config = opts.to_dict()
    n_bin = sum(m.weight.numel() for _, m in linears)
    n_all = sum(p.numel() for p in model.parameters())
    report = {
        "binarized": {n: m.group for n, m in linears},
        "attention_modules": sorted(n for n, m in mods if not isinstance(m, BinaryLinear)),
        "kept_fp": sorted(kept),
        "groups": sorted({m.group for _, m in mods}),
        "binarized_weight_fraction": round(n_bin / max(1, n_all), 4),
    }
    return new, report
