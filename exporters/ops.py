"""Errors for an op a target cannot take: name the op, the layer (PyTorch module path) and the target, plus a
workaround when one is known. Layers come from the ONNX node scopes the exporter records
(``/features/features.0/Conv`` -> ``features.0``) or from ``torch.export``'s ``nn_module_stack``.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgekit.errors import UserInputError

# (target or "*", op) -> workaround
WORKAROUNDS = {
    ("*", "Det"): "compute the determinant in PyTorch outside the exported model, or use a closed form for 2x2/3x3",
    ("*", "special_zeta"): "precompute the values (a lookup table) or approximate with elementwise ops",
    ("*", "STFT"): "compute the spectrogram before the model",
    ("*", "DFT"): "compute the FFT before the model",
    ("*", "Col2Im"): "replace nn.Fold with reshape/permute when the patches do not overlap",
    ("*", "Bernoulli"): "remove dropout-like sampling for inference (model.eval())",
}

_PATTERNS = (
    r"not supported for frontend ONNX: ([\w, ]+)",  # TVM Relax
    r"convert function for op '(\w+)' not implemented",  # coremltools
    r"Unsupported fx node (\w+)",  # coremltools (torch.export frontend)
    r"operator '(?:aten::)?(\w+)'",  # torch.onnx (TorchScript)
    r"aten[.:]{1,2}(\w+)",  # torch.onnx (dynamo), torch.export
    r"operations?: ([\w, ]+)",  # OpenVINO frontends
)


def ops_in_message(message: str, known_ops: set[str] | None = None) -> list[str]:
    for pat in _PATTERNS:
        m = re.search(pat, message)
        if m:
            ops = [o.strip() for o in m.group(1).split(",") if o.strip()]
            return [o.split(".")[0] for o in ops]
    if known_ops:  # fall back: graph op types the message mentions
        return sorted(op for op in known_ops if re.search(rf"\b{re.escape(op)}\b", message))
    return []


def _scope(node_name: str) -> str:
    parts = [p for p in node_name.split("/") if p and p != "inner"]
    return parts[-2] if len(parts) >= 2 else "(top level)"


def onnx_layers(path: Path, ops: list[str]) -> dict[str, list[str]]:
    import onnx

    model = onnx.load(str(path))
    out: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in ops:
            out.setdefault(n.op_type, []).append(_scope(n.name or n.output[0]))
    return out


def onnx_op_types(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def torch_layers(model, example, ops: list[str]) -> dict[str, list[str]]:
    """Module paths calling each aten op, from a ``torch.export`` trace (empty if tracing fails)."""
    import torch

    try:
        ep = model if isinstance(model, torch.export.ExportedProgram) else torch.export.export(model, (example,), strict=False)
    except Exception:  # noqa: BLE001 - best effort
        return {}
    out: dict[str, list[str]] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        for op in ops:
            if re.search(rf"\b{re.escape(op)}\b", name):
                stack = node.meta.get("nn_module_stack") or {}
                path = list(stack.values())[-1][0] if stack else "(top level)"
                out.setdefault(op, []).append(path or "(top level)")
    return out


def unsupported_op_error(target: str, exc: BaseException, layers: dict[str, list[str]], ops: list[str]) -> UserInputError:
    parts = []
    for op in ops:
        where = sorted(set(layers.get(op, [])))
        text = f"op {op!r} in layer {', '.join(where[:5])}" if where else f"op {op!r}"
        fix = WORKAROUNDS.get((target, op)) or WORKAROUNDS.get(("*", op))
        parts.append(text + (f" (workaround: {fix})" if fix else ""))
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    body = "; ".join(parts) if parts else "an op it does not support"
    return UserInputError(f"target {target} cannot take {body}. [{detail}]")


def explain_onnx_failure(target: str, exc: BaseException, onnx_path: Path) -> UserInputError | None:
    """A UserInputError naming op/layer/target if ``exc`` is about unsupported ops of this ONNX graph."""
    ops = ops_in_message(str(exc), onnx_op_types(onnx_path))
    if not ops:
        return None
    return unsupported_op_error(target, exc, onnx_layers(onnx_path, ops), ops)


def explain_torch_failure(target: str, exc: BaseException, model, example) -> UserInputError | None:
    ops = ops_in_message(str(exc))
    if not ops:
        return None
    return unsupported_op_error(target, exc, torch_layers(model, example, ops), ops)
