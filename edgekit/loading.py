"""Loading the MODEL argument: a zoo name, ``package.module:factory``, a ``torch.export`` file (.pt2), a
state-dict file with ``arch`` (a zoo name), or an edgekit output directory (written by ``compress``).

Pickle-based files load with ``torch.load(weights_only=True)``; a full pickle needs ``trust_pickle=True``,
which warns, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgekit.nn_utils import eval_mode
from edgekit.errors import UserInputError

MODEL_FILE = "model.pt2"


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    input_shape: tuple[int, ...] | None  # C x H x W when known
    source: str


def input_shape_of(model: nn.Module) -> tuple[int, ...] | None:
    shape = getattr(model, "edgekit_input_shape", None)
    return tuple(shape) if shape is not None else None


def save_model(model: nn.Module, directory: Path, example: torch.Tensor) -> dict[str, object]:
    """Save ``model`` as a ``torch.export`` program (``model.pt2``): reloadable without pickle.

    The batch dimension is exported dynamic where the graph allows it; some ops (PyTorch's fake-quantize
    kernels, for one) only export with a static batch, and then the program takes batch 1. Returns
    ``{"file", "dynamic_batch", "static_reason"}`` for the manifest.
    """
    from edgekit.errors import EdgekitError

    model = eval_mode(model)
    path = Path(directory) / MODEL_FILE
    # A fresh batch-2 tensor: a dynamic batch needs a hint > 1, and a slice would save its whole storage.
    example = example[:1].clone()
    info: dict[str, object] = {"file": path.name, "dynamic_batch": True, "static_reason": None}
    try:
        try:
            batch2 = example.expand(2, *example.shape[1:]).clone()
            batch = torch.export.Dim("batch", min=1, max=4096)
            ep = torch.export.export(model, (batch2,), dynamic_shapes=({0: batch},), strict=False)
        except Exception as dyn_exc:  # noqa: BLE001 - some graphs only export with a static batch
            ep = torch.export.export(model, (example,), strict=False)
            info.update(dynamic_batch=False, static_reason=f"{type(dyn_exc).__name__}: {str(dyn_exc).splitlines()[0]}")
        torch.export.save(ep, str(path))
    except Exception as exc:  # noqa: BLE001
        raise EdgekitError(f"the model could not be saved with torch.export: {type(exc).__name__}: {exc}") from exc
    return info


def _load_pt2(path: Path) -> nn.Module:
    # int8 models (edgekit.quant) store int8 weights dequantized by torch.ops.quantized_decomposed.*; those ops
    # register on import, and torch.export.load cannot deserialize a program that uses them otherwise.
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    try:
        ep = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise UserInputError(f"{path}: not a readable torch.export program ({type(exc).__name__}: {exc})") from None
    return ep.module()


def load_output_dir(path: Path) -> LoadedModel:
    from edgekit.artifacts import verify_manifest

    manifest = verify_manifest(path)  # every file must match its sha256: no half-written or altered model
    model_file = path / manifest.get("model_file", MODEL_FILE)
    if not model_file.is_file():
        raise UserInputError(f"{path}: no {model_file.name}; expected the output directory of `edgekit compress`")
    module = _load_pt2(model_file)
    shape = tuple(manifest["input_shape"]) if manifest.get("input_shape") else None
    module.edgekit_input_shape = shape
    name = manifest.get("model", path.name)
    module.edgekit_name = name
    return LoadedModel(module, name, shape, str(path))


def _load_factory(spec: str) -> LoadedModel:
    mod_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UserInputError(f"model {spec!r}: cannot import module {mod_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserInputError(f"model {spec!r}: {mod_name} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise UserInputError(f"model {spec!r}: {attr}() returned {type(model).__name__}, expected an nn.Module")
    shape = input_shape_of(model)
    return LoadedModel(eval_mode(model), attr, shape, spec)


def _load_weights(path: Path, arch: str | None, trust_pickle: bool) -> LoadedModel:
    from edgekit import models

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError for non-weights pickles
        if not trust_pickle:
            raise UserInputError(
                f"{path}: refused to unpickle (it holds more than tensors: {type(exc).__name__}); "
                "pass --trust-pickle only if you trust this file, since unpickling can run arbitrary code"
            ) from None
        warnings.warn(f"loading {path} with full pickle (--trust-pickle): this can run arbitrary code", stacklevel=2)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, nn.Module):
        return LoadedModel(eval_mode(obj), path.stem, input_shape_of(obj), str(path))
    if not isinstance(obj, dict):
        raise UserInputError(f"{path}: holds a {type(obj).__name__}; expected a state dict or an nn.Module")
    if arch is None:
        raise UserInputError(f"{path}: a state dict needs --arch ZOO_NAME; zoo models: {', '.join(models.names())}")
    model = models.create(arch, pretrained=False)
    state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserInputError(f"{path}: does not fit zoo model {arch!r}: {str(exc).splitlines()[0]}") from None
    return LoadedModel(eval_mode(model), arch, input_shape_of(model), str(path))


def load_model(spec: str | None = None, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Resolve a MODEL argument (see module docstring). ``None`` gives the default zoo model."""
    from edgekit import models

    spec = spec or models.DEFAULT_MODEL
    path = Path(spec)
    if path.is_dir():
        return load_output_dir(path)
    if path.suffix == ".pt2":
        if not path.is_file():
            raise UserInputError(f"model file {path} does not exist")
        module = _load_pt2(path)
        return LoadedModel(module, path.stem, None, str(path))
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        if not path.is_file():
            raise UserInputError(f"model file {path} does not exist")
        return _load_weights(path, arch, trust_pickle)
    if ":" in spec:
        return _load_factory(spec)
    if spec in models.names():
        model = models.create(spec, pretrained=True)
        return LoadedModel(model, spec, input_shape_of(model), f"zoo:{spec}")
    raise UserInputError(
        f"model {spec!r}: not a zoo model, a module:factory, a .pt2/.pt file or an edgekit output directory; "
        f"zoo models: {', '.join(models.names())}"
    )
