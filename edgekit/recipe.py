"""Recipes: YAML files that chain stages, parsed into allow-listed, versioned stage configs.

A recipe::

    name: int8
    description: Fold BN, then int8 PTQ.
    base: deploy            # optional: another recipe (name or path) whose stages come first
    stages:
      - fuse: {mode: deploy}
      - quantize:
          calibration: {method: mse}

A stage named in both the base and the child is merged in place (child options win, nested dicts merge);
other child stages are appended. Repeated ``--recipe`` options compose the same way, in order.
Every error names the file, the line, the field and what would be accepted, before any work starts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.data_options import DataOptions
from edgekit.errors import UserInputError
from edgekit.limits import load_yaml, read_text, yaml_error_message
from edgekit.stages import StageConfig, discover, get_stage

RECIPE_VERSION = 1
_TOP_FIELDS = ("name", "description", "base", "version", "stages", "measure", "data")


class MeasureConfig(BaseModel):
    """How the before/after figures of a compress run are measured."""

    model_config = ConfigDict(extra="forbid")
    latency_runtime: Literal["torch", "onnxruntime", "openvino"] = Field(
        "torch", description="Runtime the before/after latency is measured on (batch 1, local CPU)."
    )
    latency_runs: int = Field(50, ge=1, description="Timed runs after warm-up (the report gives median and p90).")
    latency_warmup: int = Field(10, ge=0, description="Untimed warm-up runs.")
    threads: int = Field(2, ge=1, description="Intra-op threads for the latency runs.")
    fidelity_samples: int = Field(256, ge=1, description="Test samples compared against the original model (cosine, max abs).")


@dataclass
class RecipeStage:
    name: str
    config: StageConfig
    source: str = "<recipe>"  # file:line where it was defined, for messages


@dataclass
class Recipe:
    name: str
    description: str = ""
    stages: list[RecipeStage] = field(default_factory=list)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    sources: list[str] = field(default_factory=list)
    data: DataOptions = field(default_factory=DataOptions)  # preprocessing and splits (edgekit.data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "version": RECIPE_VERSION,
            "measure": self.measure.model_dump(mode="json"),
            "data": self.data.model_dump(mode="json", exclude_defaults=True),
            "stages": [{s.name: s.config.to_dict()} for s in self.stages],
        }


# ----------------------------------------------------------------------------------------------- files


def builtin_dir() -> Path:
    return Path(str(resources.files("edgekit.recipes")))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def resolve_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if p.exists() and not p.is_file():
            raise UserInputError(f"recipe {p}: not a regular file")
        if not p.is_file():
            raise UserInputError(f"recipe file {p} does not exist")
        return p
    candidate = builtin_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise UserInputError(
        f"unknown recipe {str(name_or_path)!r}: not a file and not a built-in recipe; "
        f"built-in recipes: {', '.join(builtin_names())}"
    )


class _Lines:
    """Maps a path of keys/indices in a YAML document to the line it is on (1-based).

    Built from the node that :func:`edgekit.limits.load_yaml` composed and bounded, so aliases cannot make
    this walk grow past the expanded-size budget.
    """

    def __init__(self, node: yaml.Node | None) -> None:
        self.lines: dict[tuple, int] = {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else repr(k.value)
                self.lines[path + (key,)] = k.start_mark.line + 1
                self._walk(v, path + (key,))
                self.lines[path + (key,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (i,))

    def line(self, path: Iterable) -> int:
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


def _read(path: Path) -> tuple[dict[str, Any], _Lines]:
    text = read_text(path, "recipe")
    try:
        data, node = load_yaml(text, str(path))  # bounded: size, nesting, expanded aliases
    except yaml.YAMLError as exc:
        raise UserInputError(yaml_error_message(exc, str(path))) from None
    lines = _Lines(node)
    if not isinstance(data, dict):
        raise UserInputError(f"{path}:1: a recipe is a mapping with fields {', '.join(_TOP_FIELDS)}")
    unknown = [k for k in data if k not in _TOP_FIELDS]
    if unknown:
        raise UserInputError(
            f"{path}:{lines.line((unknown[0],))}: unknown field {unknown[0]!r}; accepted: {', '.join(map(str, _TOP_FIELDS))}"
        )
    version = data.get("version", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise UserInputError(
            f"{path}:{lines.line(('version',))}: field 'version': recipe version {version!r} is not supported; "
            f"accepted: {RECIPE_VERSION}"
        )
    for key in ("name", "description", "base"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise UserInputError(f"{path}:{lines.line((key,))}: field {key!r} must be a string")
    for key in ("measure", "data"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise UserInputError(f"{path}:{lines.line((key,))}: field {key!r} must be a mapping")
    return data, lines


# ----------------------------------------------------------------------------------------------- merging


@dataclass
class _RawStage:
    name: str
    options: dict[str, Any]
    path: Path
    lines: _Lines
    index: int
    set_by: dict[tuple, str] = field(default_factory=dict)  # option path -> the --set item that wrote it


# Pipeline phases: a stage of a later phase must not run before one of an earlier phase (pruning or
# sparsifying an already quantized model prunes nothing; pruning a BatchNorm-folded model fine-tunes it without
# its BatchNorms: prune-30+int8 measured 97.2% on convnet and 77.2% on mobilenetv2 with fuse first, against
# 99.2% / 99.4% for prune-30 alone). Composition inserts appended stages by phase.
PHASES = {"prune": 0, "sparsify": 0, "fuse": 1, "quantize": 2, "ivit": 2, "binarize": 2}


def _where(st: _RawStage) -> str:
    return f"{st.path}:{st.lines.line(('stages', st.index))}"


def _check_order(stages: list[_RawStage]) -> None:
    latest: _RawStage | None = None
    for st in stages:
        phase = PHASES.get(st.name)
        if phase is None:
            continue
        if latest is not None and phase < PHASES[latest.name]:
            raise UserInputError(
                f"{_where(st)}: stage {st.name!r} comes after stage {latest.name!r} ({_where(latest)}); "
                f"{st.name} must run before {latest.name} (order: prune/sparsify, fuse, quantize/ivit/binarize)"
            )
        if latest is None or phase >= PHASES[latest.name]:
            latest = st


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _merge_stages(base: list[_RawStage], child: list[_RawStage]) -> list[_RawStage]:
    """The k-th child stage of a name merges into the k-th base stage of that name; the rest are added after
    the base stages of earlier or equal phase (see ``PHASES``): ``-r int8 -r prune-30`` prunes before it
    quantizes. Stages of one file keep that file's order."""
    out = list(base)
    from_base = {id(b) for b in base}
    used: set[int] = set()
    for st in child:
        same = [i for i, b in enumerate(base) if b.name == st.name and i not in used]
        if same:
            i = same[0]
            used.add(i)
            j = out.index(base[i]) if base[i] in out else i
            out[j] = _RawStage(st.name, _deep_merge(out[j].options, st.options), st.path, st.lines, st.index)
            from_base.add(id(out[j]))
            continue
        phase = PHASES.get(st.name)
        later = [j for j, b in enumerate(out) if id(b) in from_base and phase is not None and PHASES.get(b.name, -1) > phase]
        if later:
            out.insert(later[0], st)
        else:
            out.append(st)
    return out


def _raw_stages(data: dict, path: Path, lines: _Lines) -> list[_RawStage]:
    stages = data.get("stages", [])
    if stages is None:
        stages = []
    if not isinstance(stages, list):
        raise UserInputError(f"{path}:{lines.line(('stages',))}: field 'stages' must be a list of {{stage: options}}")
    out = []
    for i, item in enumerate(stages):
        where = f"{path}:{lines.line(('stages', i))}"
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise UserInputError(f"{where}: field 'stages[{i}]' must be a mapping with one stage name, e.g. '- fuse: {{mode: deploy}}'")
        (name, options), = item.items()
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise UserInputError(f"{where}: field 'stages[{i}].{name}' must be a mapping of options")
        out.append(_RawStage(str(name), options, path, lines, i))
    return out


def _load_raw(name_or_path: str | Path, seen: tuple[Path, ...] = ()) -> tuple[dict, list[_RawStage], list[str]]:
    path = resolve_path(name_or_path).resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise UserInputError(f"{path}: recipe 'base' chain loops: {chain}")
    data, lines = _read(path)
    stages = _raw_stages(data, path, lines)
    sources = [str(path)]
    measure = data.get("measure") or {}
    if "base" in data and data["base"]:
        base_ref = str(data["base"])
        if not base_ref.endswith((".yaml", ".yml")) or Path(base_ref).is_absolute():
            ref = base_ref
        else:
            ref = str(path.parent / base_ref)
        base_top, base_stages, base_sources = _load_raw(ref, seen + (path,))
        stages = _merge_stages(base_stages, stages)
        sources = base_sources + sources
        measure = _deep_merge(base_top.get("measure") or {}, measure)
        data = {**data, "data": _deep_merge(base_top.get("data") or {}, data.get("data") or {})}
    top = dict(data)
    top["measure"] = measure
    top["_lines"] = lines
    top["_path"] = path
    return top, stages, sources


# ----------------------------------------------------------------------------------------------- --set


def _parse_set(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserInputError(f"--set {item!r}: expected path.to.field=value, e.g. quantize.calibration.method=mse")
    key, _, raw = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise UserInputError(f"--set {item!r}: expected <stage or 'measure'>.<field>[.<field>...]=value")
    try:
        value = load_yaml(raw, f"--set {item!r}")[0] if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _apply_set(stages: list[_RawStage], measure: dict, item: str, measure_set: dict[tuple, str]) -> None:
    parts, value = _parse_set(item)
    head, rest = parts[0], parts[1:]
    if head == "measure":
        targets = [measure]
        measure_set[tuple(rest)] = item
    else:
        matches = [s for s in stages if s.name == head]
        if not matches:
            names = ", ".join(dict.fromkeys(s.name for s in stages)) or "(none)"
            raise UserInputError(f"--set {item!r}: the recipe has no stage {head!r}; its stages: {names}, or 'measure'")
        targets = [s.options for s in matches]
        for s in matches:
            s.set_by[tuple(rest)] = item
    for opts in targets:
        node = opts
        for p in rest[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[rest[-1]] = value


def _set_item(set_by: dict[tuple, str], loc: Sequence) -> str | None:
    """The --set item that wrote the option at ``loc`` (or a parent of it), if any."""
    loc = tuple(str(x) for x in loc)
    for path, item in set_by.items():
        if loc[: len(path)] == path or path[: len(loc)] == loc:
            return item
    return None


# ----------------------------------------------------------------------------------------------- validation


def _format_validation(err: ValidationError, st: _RawStage, cfg_cls: type[StageConfig]) -> str:
    e = err.errors()[0]
    loc = [x for x in e["loc"]]
    field_path = ".".join(str(x) for x in loc) or "(options)"
    line = st.lines.line(("stages", st.index, st.name, *loc))
    by_set = _set_item(st.set_by, loc)
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        model: Any = cfg_cls
        for part in loc[:-1]:
            f = getattr(model, "model_fields", {}).get(part)
            ann = getattr(f, "annotation", None)
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None:
                break
        fields = sorted(getattr(model, "model_fields", {}) or []) if model is not None else []
        msg = f"unknown field; accepted: {', '.join(fields)}" if fields else "unknown field"
    elif "input" in e and e["type"] not in ("missing",):
        msg = f"{msg} (got {e['input']!r})"
    if by_set is not None:
        return f"--set {by_set!r}: stage {st.name!r} field {field_path!r}: {msg}"
    return f"{st.path}:{line}: stage {st.name!r} field {field_path!r}: {msg}"


def load_recipe(recipes: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> Recipe:
    """Load one recipe, or compose several in order, apply ``--set`` overrides and validate every stage."""
    if isinstance(recipes, (str, Path)):
        recipes = [recipes]
    if not recipes:
        raise UserInputError("no recipe given; built-in recipes: " + ", ".join(builtin_names()))
    stages: list[_RawStage] = []
    measure: dict = {}
    data_opts: dict = {}
    names, descriptions, sources = [], [], []
    for ref in recipes:
        top, raw, src = _load_raw(ref)
        stages = _merge_stages(stages, raw)
        measure = _deep_merge(measure, top.get("measure") or {})
        data_opts = _deep_merge(data_opts, top.get("data") or {})
        names.append(str(top.get("name") or top["_path"].stem))
        if top.get("description"):
            descriptions.append(str(top["description"]))
        sources += src
    measure_set: dict[tuple, str] = {}
    data_set: dict[tuple, str] = {}
    for item in overrides:
        if item.partition("=")[0].strip().startswith("data."):  # the data section: --set data.resize=256
            parts, value = _parse_set(item)
            _deep_set(data_opts, parts[1:], value)
            data_set[tuple(parts[1:])] = item
            continue
        _apply_set(stages, measure, item, measure_set)
    try:
        data_cfg = DataOptions.model_validate(data_opts)
    except ValidationError as err:
        e = err.errors()[0]
        by_set = _set_item(data_set, e["loc"])
        where = f"--set {by_set!r}: field" if by_set else "recipe field"
        raise UserInputError(f"{where} 'data.{'.'.join(map(str, e['loc']))}': {e['msg']}; accepted fields: "
                             f"{', '.join(DataOptions.model_fields)}") from None
    _check_order(stages)

    registry = discover()
    out: list[RecipeStage] = []
    for st in stages:
        where = _where(st)
        if st.name not in registry:
            raise UserInputError(f"{where}: unknown stage {st.name!r}; accepted: {', '.join(registry.names())}")
        _, cfg_cls = get_stage(st.name)
        try:
            cfg = cfg_cls.model_validate(st.options)
        except ValidationError as err:
            raise UserInputError(_format_validation(err, st, cfg_cls)) from None
        out.append(RecipeStage(st.name, cfg, where))
    try:
        measure_cfg = MeasureConfig.model_validate(measure)
    except ValidationError as err:
        e = err.errors()[0]
        field_path = ".".join(map(str, e["loc"]))
        by_set = _set_item(measure_set, e["loc"])
        where = f"--set {by_set!r}: field" if by_set else "recipe field"
        got = f" (got {e['input']!r})" if "input" in e and e["type"] != "missing" else ""
        raise UserInputError(f"{where} 'measure.{field_path}': {e['msg']}{got}") from None
    return Recipe("+".join(names), " ".join(descriptions), out, measure_cfg, sources, data_cfg)


def _deep_set(node: dict, path: list[str], value: Any) -> None:
    for p in path[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[path[-1]] = value
