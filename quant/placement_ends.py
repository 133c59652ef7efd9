"""The first and last weight layers of a transformer stay in float by default (``quantize.ends``).

The patch embedding (the first layer: it reads the image) and the classifier head (the last: it writes the
logits) of a vision transformer are the layers most sensitive to int8, and keeping both in higher precision
is the common practice of ViT quantization (PTQ4ViT, Yuan et al., ECCV 2022; RepQ-ViT, Li et al., ICCV 2023;
and the "keep patch embedding and classifier head in higher precision" rule of /work/shared/docs/methods.md
for BiViT). A first layer has few inputs per output (48 for a 4x4x3 patch, 768 for 16x16x3), so its weight
rounding errors do not average out, and every token of the residual stream starts from its output.

Measured on the digits ``vit`` (fp32 85.79% test; int8 recipe options, PyTorch fake-quant top-1; test split /
400 training images not used for calibration): ONNX Runtime placement -1.39 / -1.00 pt with every layer int8,
-0.28 / -0.25 with only the patch embedding's weights in float (its input and output still quantized), 0.00 /
-0.75 with the patch embedding float, 0.00 / -0.25 with it and the head float; OpenVINO placement -0.56 /
-0.25 all int8, -0.28 / +0.75 ends float. The digits ``hybrid`` loses 0.00 either way. Calibrating the input
with min/max instead of MSE, or leaving only the input unquantized, did not help (-1.39, -1.11): the weight
grid of the patch embedding is what costs. The two layers are ~2% of the ViT's multiply-adds at 224.

``auto`` (the default) keeps the ends float for graphs with attention (a matrix product of two activations,
what :func:`edgekit.quant.qdq.op_kind` calls ``matmul``), the first layer only when it is a patch embedding
(kernel = stride: the layer the ViT practice is about). A convolutional stem stays int8: on the ``hybrid`` at 224
its float 3x3 stem cost OpenVINO 15% (20.7 vs 18.0 ms, load 6) for no accuracy (the digits ``hybrid`` loses
0.00 pt either way). CNNs keep every layer int8 (their int8 latency and accuracy were measured level with the
peers that way).
"""

from __future__ import annotations

from typing import Literal

from torch import fx, nn

from edgekit.quant import qdq

Ends = Literal["auto", "float", "int8", "first"]


def has_attention(gm: fx.GraphModule) -> bool:
    """Whether the graph multiplies two activations (attention's Q·Kᵀ / A·V): a transformer."""
    modules = dict(gm.named_modules())
    return any(qdq.op_kind(n, modules) == "matmul" for n in gm.graph.nodes)


def _float_tensor(n: fx.Node) -> bool:
    """A node whose value is a float tensor (or a tuple holding one: split / chunk outputs)."""
    meta = n.meta.get("tensor_meta", n.meta.get("val"))
    metas = meta if isinstance(meta, (list, tuple)) and not hasattr(meta, "dtype") else [meta]
    return any(getattr(getattr(m, "dtype", None), "is_floating_point", False) for m in metas)


def _reach(start: list[fx.Node], step, modules: dict[str, nn.Module]) -> list[str]:
    """Weight layers (conv / linear module targets) reached from ``start`` without passing another op that
    carries weights or multiplies activations; ``step`` gives a node's neighbours (users or inputs)."""
    seen, found, todo = set(), [], list(start)
    while todo:
        n = todo.pop()
        if n in seen or (n.op != "output" and not _float_tensor(n)):  # shapes / sizes / masks: not the data path
            continue
        seen.add(n)
        kind = qdq.op_kind(n, modules)
        if kind in ("conv", "linear"):
            if n.target not in found:
                found.append(str(n.target))
            continue
        if kind == "matmul":
            continue
        todo.extend(step(n))
    return found


def end_layers(gm: fx.GraphModule) -> tuple[list[str], list[str]]:
    """``(first, last)``: the weight layers that read a model input, and those whose output reaches a model
    output, each without another weight layer in between."""
    modules = dict(gm.named_modules())
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out = next(n for n in gm.graph.nodes if n.op == "output")
    first = _reach([u for p in inputs for u in p.users], lambda n: list(n.users), modules)
    last = _reach(list(out.all_input_nodes), lambda n: list(n.all_input_nodes), modules)
    return first, [name for name in last if name not in first]


def is_patch_embedding(layer: nn.Module) -> bool:
    """A patchify layer: a convolution whose kernel equals its stride (non-overlapping patches), or a linear
    layer on patches cut out by reshapes. A convolutional stem (3x3, stride 2) is not one."""
    if isinstance(layer, nn.Conv2d):
        return tuple(layer.kernel_size) == tuple(layer.stride) and layer.kernel_size != (1, 1)
    return isinstance(layer, nn.Linear)


def float_ends(gm: fx.GraphModule, ends: Ends) -> list[str]:
    """The layer names ``quantize.ends`` keeps in float on ``gm``: ``float``: the first and last layers;
    ``auto``: on a graph with attention, its patch embedding (not a convolutional stem) and its last layers;
    ``int8`` (or ``auto`` on a CNN): none; ``first``: what ``auto`` keeps plus every first layer (a conv stem).

    ``first`` is for ONNX Runtime on small inputs (the recipe ``int8-detect``): the zoo ``detector``'s 3x3 stem
    (3 -> 16 channels) ran as a 26 us ``QLinearConv`` plus the input's QuantizeLinear and NHWC Transpose, against
    11 us as a float NCHWc ``Conv`` (ORT profiler, 64x64, quiet); the whole graph 0.099 vs 0.114 ms, mAP 50.34
    vs 50.25 (fp32 50.63). An int8 kernel reading 3 channels has little to reduce per output."""
    if ends == "int8" or (ends == "auto" and not has_attention(gm)):
        return []
    first, last = end_layers(gm)
    if ends == "first":
        return first + (last if has_attention(gm) else [])
    if ends == "auto":
        first = [f for f in first if is_patch_embedding(gm.get_submodule(f))]
    return first + last
