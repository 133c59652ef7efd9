"""Loading the MODEL argument: a zoo name, ``package.module:factory``, a ``torch.export`` file (.pt2), a
state-dict file with ``arch`` (a zoo name), or an edgekit output directory (written by ``compress``).

No pickle is unpickled without ``trust_pickle=True`` (which warns, because unpickling runs arbitrary code):
``.pt`` files load with ``torch.load(weights_only=True)``; ``.pt2`` archives are inspected first
(:func:`edgekit.safe_pt2.inspect_pt2`); an output directory's manifest is validated and every file the loader
opens must be listed in it with a matching sha256. See docs/security.md.
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
from edgekit.records import ModelInfo

MODEL_FILE = "model.pt2"


@dataclass
class LoadedModel:
    """A model and its metadata record (metadata never travels as attributes on the module)."""

    model: nn.Module
    info: ModelInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def input_shape(self) -> tuple[int, ...] | None:  # C x H x W when known
        return self.info.input_shape

    @property
    def source(self) -> str:
        return self.info.source


def _loaded(model: nn.Module, name: str, shape: tuple[int, ...] | None, source: str, **info) -> LoadedModel:
    return LoadedModel(model, ModelInfo(name=name, input_shape=tuple(shape) if shape else None, source=source, **info))


def save_model(model: nn.Module, directory: Path, example: torch.Tensor) -> dict[str, object]:
    """Save ``model`` as a ``torch.export`` program (``model.pt2``): reloadable without pickle.

    The batch dimension is exported dynamic where the graph allows it; some ops (PyTorch's fake-quantize
    kernels, for one) only export with a static batch, and then the program takes batch 1. Returns
    ``{"file", "dynamic_batch", "static_reason"}`` for the manifest.
    """
    from edgekit.errors import EdgekitError
    from edgekit.safe_pt2 import save_pt2

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
        save_pt2(ep, path)  # byte-reproducible: same model and inputs -> same sha256
    except Exception as exc:  # noqa: BLE001
        raise EdgekitError(f"the model could not be saved with torch.export: {type(exc).__name__}: {exc}") from exc
    return info


def _load_pt2(path: Path, trust_pickle: bool = False) -> nn.Module:
    from edgekit.safe_pt2 import inspect_pt2

    if trust_pickle:
        warnings.warn(f"loading {path} without inspection (--trust-pickle): this can run arbitrary code", stacklevel=3)
    else:
        inspect_pt2(path)  # refuses pickled weights/constants, custom objects, compiled code
    # int8 models (edgekit.quant) store int8 weights dequantized by torch.ops.quantized_decomposed.*; those ops
    # register on import, and torch.export.load cannot deserialize a program that uses them otherwise.
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    try:
        ep = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise UserInputError(f"{path}: not a readable torch.export program ({type(exc).__name__}: {first})") from None
    try:
        return ep.module()
    except Exception as exc:  # noqa: BLE001
        raise UserInputError(f"{path}: the torch.export program cannot be rebuilt ({type(exc).__name__}: {str(exc)[:300]})") from None


# Programs a compress output may carry beside model.pt2, rebuilt instead of its torch.export trace (which
# loses what exporters need, e.g. the I-ViT integer modules): allow-list of manifest ``program.kind`` -> the
# module whose ``load(directory, info)`` rebuilds it. Nothing else named in a manifest is ever imported.
PROGRAM_KINDS = {"ivit": "edgekit.quant.ivit.program"}


def _load_program(path: Path, info: object, manifest: dict) -> nn.Module:
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind not in PROGRAM_KINDS:
        raise UserInputError(f"{path}/manifest.json: program kind {kind!r}; accepted: {', '.join(PROGRAM_KINDS)}")
    for rel in info.get("files", []):
        if rel not in manifest["files"]:
            raise UserInputError(f"{path}: program file {rel} is not listed with a sha256 in manifest.json; refused")
    return importlib.import_module(PROGRAM_KINDS[kind]).load(path, info)


def load_output_dir(path: Path, trust_pickle: bool = False) -> LoadedModel:
    from edgekit.artifacts import verify_manifest

    manifest = verify_manifest(path)  # schema, and every listed file matches its sha256
    rel = manifest.get("model_file") or MODEL_FILE
    if rel not in manifest["files"]:
        raise UserInputError(f"{path}: {rel} is not listed with a sha256 in manifest.json; refused")
    if not rel.endswith(".pt2"):
        raise UserInputError(
            f"{path}: model_file {rel!r} is not a torch.export program (.pt2); an exported artifact runs in its "
            "runtime (edgekit profile), it is not loaded as a MODEL"
        )
    model_file = path / rel
    program = manifest.get("program")
    module = _load_program(path, program, manifest) if program else _load_pt2(model_file, trust_pickle)
    shape = tuple(manifest["input_shape"]) if manifest.get("input_shape") else None
    return _loaded(module, manifest.get("model", path.name), shape, str(path), num_classes=manifest.get("num_classes"))


def _load_factory(spec: str) -> LoadedModel:
    mod_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UserInputError(f"model {spec!r}: cannot import module {mod_name!r} ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - user code: name it and its last frame, not a traceback
        raise UserInputError(f"model {spec!r}: importing module {mod_name!r} raised {_user_error(exc)}") from None
    factory = getattr(module, attr, None) if attr.isidentifier() else None
    if not callable(factory):
        raise UserInputError(f"model {spec!r}: {mod_name} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001
        raise UserInputError(f"model {spec!r}: your factory {attr}() raised {_user_error(exc)}") from None
    if not isinstance(model, nn.Module):
        raise UserInputError(f"model {spec!r}: {attr}() returned {type(model).__name__}, expected an nn.Module")
    return _loaded(eval_mode(model), attr, None, spec)


def _user_error(exc: BaseException) -> str:
    """``Type: message (at file:line in function)`` with the last frame of the user's code."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" (at {exc.filename}:{exc.lineno})"
    msg = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}{where}"


def _check_archive_size(path: Path) -> None:
    """A zip-format checkpoint is refused when its declared (uncompressed) size would not fit in memory."""
    import zipfile

    from edgekit.limits import check_allocation

    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip: torch.load(weights_only=True) reports it
    check_allocation(total, f"{path} (uncompressed)")


def _load_weights(path: Path, arch: str | None, trust_pickle: bool) -> LoadedModel:
    from edgekit import models

    _check_archive_size(path)
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
        return _loaded(eval_mode(obj), path.stem, None, str(path))
    if not isinstance(obj, dict):
        raise UserInputError(f"{path}: holds a {type(obj).__name__}; expected a state dict or an nn.Module")
    if arch is None:
        raise UserInputError(f"{path}: a state dict needs --arch ZOO_NAME; zoo models: {', '.join(models.names(task=None))}")
    model = models.create(arch, pretrained=False)
    state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    try:
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - RuntimeError for shapes, TypeError/AttributeError for odd values
        raise UserInputError(f"{path}: does not fit zoo model {arch!r}: {str(exc).splitlines()[0]}") from None
    return _loaded(eval_mode(model), arch, models.info(arch).input_shape(), str(path))


def load_model(spec: str | None = None, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Resolve a MODEL argument (see module docstring). ``None`` gives the default zoo model."""
    from edgekit import models

    spec = spec or models.DEFAULT_MODEL
    path = Path(spec)
    if path.is_dir():
        return load_output_dir(path, trust_pickle)
    if path.suffix == ".pt2":
        if not path.is_file():
            raise UserInputError(f"model file {path} does not exist")
        module = _load_pt2(path, trust_pickle)
        return _loaded(module, path.stem, None, str(path))
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        if not path.is_file():
            raise UserInputError(f"model file {path} does not exist")
        return _load_weights(path, arch, trust_pickle)
    if ":" in spec:
        return _load_factory(spec)
    if spec in models.names(task=None):
        model = models.create(spec, pretrained=True)
        return _loaded(model, spec, models.info(spec).input_shape(), f"zoo:{spec}")
    raise UserInputError(
        f"model {spec!r}: not a zoo model, a module:factory, a .pt2/.pt file or an edgekit output directory; "
        f"zoo models: {', '.join(models.names(task=None))}"
    )
