"""BiViT conversion of models written by other people ("BiViT: Extremely Compressed Binary Vision
Transformers", He et al., ICCV 2023): ``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``,
``transformers`` ViT classes, control flow on shapes, dict outputs. Nothing to register.

The graph is captured with ``torch.export`` and lifted to torch-level ops by I-ViT's capture
(:func:`edgekit.quant.ivit.aten.capture_graph`: ``linear`` calls with parameter weights become ``nn.Linear``
modules, ``scaled_dot_product_attention`` is written out as ``q @ k^T * scale``, softmax, ``@ v``). The
layers are then found by op:

* every ``nn.Linear`` -> :class:`BinaryLinear` (group ``attn`` when its path names attention -- ``attn``,
  ``attention``, ``query``/``key``/``value``, ``in_proj``/``out_proj`` -- else ``mlp``); a linear whose
  input is a GELU starts its activation threshold at the GELU tail (see :mod:`.convert`). The layer whose
  output is the model's output (the classifier) and layers matching ``keep_fp`` stay in float;
* with ``binarize_attention``: each ``softmax`` -> :class:`BinarySoftmax` (1-bit activations), each product of
  two activations (``matmul``) -> :class:`BinaryMatMul` (1-bit: binary Q and K; the product with the attention
  map keeps the 0/1 map and is averaged over the selected tokens; 8-bit: int8 operands).
"""

from __future__ import annotations

import fnmatch
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgekit.errors import UserInputError
from edgekit.quant.bivit.convert import GELU_TAIL_SHIFT, BinarizeOptions
from edgekit.quant.bivit.modules import BinaryLinear, BinaryMatMul, BinarySoftmax

__all__ = ["convert_graph", "ATTENTION_WORDS"]

ATTENTION_WORDS = ("attn", "attention", "query", "key", "value", "in_proj", "out_proj", "qkv")
_PASS_THROUGH = {"reshape", "view", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze"}


def _group(name: str) -> str:
    low = name.lower()
    return "attn" if any(w in low for w in ATTENTION_WORDS) else "mlp"


def _is_module(gm: fx.GraphModule, node: Any, cls: type) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_module" and isinstance(gm.get_submodule(node.target), cls)


def _output_layers(gm: fx.GraphModule) -> set[str]:
    """Linear layers whose output reaches the graph output through shape ops / getitem only (the classifier)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    todo = list(out.all_input_nodes)
    found, seen = set(), set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if _is_module(gm, n, nn.Linear):
            found.add(str(n.target))
        elif (n.op == "call_method" and n.target in _PASS_THROUGH) or n.target is operator.getitem:
            todo += n.all_input_nodes
    return found


def _replace(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module, args: tuple) -> None:
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(name, args)
    call.meta.update(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)


def _softmax_input(n: Any) -> bool:
    return isinstance(n, fx.Node) and (n.target is torch.softmax or (n.op == "call_module" and "softmax" in str(n.target)))


def convert_graph(model: nn.Module, example: torch.Tensor, options: BinarizeOptions | None = None) -> tuple[fx.GraphModule, dict[str, Any]]:
    """Capture ``model`` and binarize its graph; returns the graph module (the input is left as it is) and a
    report like :func:`edgekit.quant.bivit.convert.convert`'s, plus how the graph was captured."""
    from edgekit.quant.ivit.aten import capture_graph

    opts = options or BinarizeOptions()
    gm, batch = capture_graph(model, example)
    keep_out = _output_layers(gm)

    def keep(name: str) -> bool:
        return name in keep_out or any(fnmatch.fnmatchcase(name, p) for p in opts.keep_fp)

    attention: list[str] = []
    if opts.binarize_attention and opts.act_bits in (1, 8):
        for i, node in enumerate(list(gm.graph.nodes)):
            if node.op != "call_function":
                continue
            if node.target is torch.softmax and opts.act_bits == 1:
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
                name = f"bivit_softmax{i}"
                mode = "softmax_aware" if opts.softmax_aware else "naive"
                _replace(gm, node, name, BinarySoftmax(int(dim), mode), (node.args[0],))
                attention.append(name)
            elif node.target is torch.matmul and all(isinstance(a, fx.Node) and a.op != "get_attr" for a in node.args[:2]):
                a, b = node.args[:2]
                name = f"bivit_matmul{i}"
                if opts.act_bits == 8:
                    mod = BinaryMatMul(8)
                elif _softmax_input(a):
                    mod = BinaryMatMul(1, binarize_a=False, normalize_a=opts.attention_mean)
                else:
                    mod = BinaryMatMul(1, binarize_a=True)
                _replace(gm, node, name, mod, (a, b))
                attention.append(name)
    binarized: dict[str, str] = {}
    kept: list[str] = []
    for node in list(gm.graph.nodes):
        if not _is_module(gm, node, nn.Linear) or isinstance(gm.get_submodule(node.target), BinaryLinear):
            continue
        name = str(node.target)
        if name in binarized:
            continue
        if keep(name):
            kept.append(name)
            continue
        src = node.args[0]
        shift = GELU_TAIL_SHIFT if isinstance(src, fx.Node) and src.target is F.gelu else 0.0
        lin = gm.get_submodule(name)
        gm.set_submodule(name, BinaryLinear.from_linear(lin, opts.act_bits, _group(name), opts.act_shift, shift))
        binarized[name] = _group(name)
    if not binarized:
        raise UserInputError(
            f"bivit: {type(model).__name__}: the captured graph has no linear layer to binarize "
            f"(kept in float: {sorted(kept)}; keep_fp patterns {list(opts.keep_fp)})"
        )
    gm.graph.lint()
    gm.recompile()
    n_bin = sum(gm.get_submodule(n).weight.numel() for n in binarized)
    report = {
        "binarized": binarized,
        "attention_modules": attention,
        "kept_fp": sorted(kept),
        "groups": sorted(set(binarized.values()) | ({"attn"} if attention else set())),
        "binarized_weight_fraction": round(n_bin / max(1, sum(p.numel() for p in model.parameters())), 4),
        "capture": {"method": "torch.export", "batch_size": batch, "found_by": "op"},
    }
    return gm, report
