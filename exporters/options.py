"""Export options as typed declarations: each target declares its options once (type, default, accepted values),
and :func:`parse_options` validates and converts them once, whether they come from the API (typed values) or
from ``edgekit export -O KEY=VALUE`` (strings). Nothing else re-checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from edgekit.errors import UserInputError

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class Option:
    """One option of a target: ``type`` is bool, int or str; ``choices`` (if any) lists the accepted values."""

    default: Any
    type: type = str
    choices: tuple[Any, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    nullable: bool = False  # None (the default of the runtime) is accepted
    check: Callable[[Any], bool] | None = None  # an extra rule, described in ``help``
    help: str = ""

    def __str__(self) -> str:  # how docs and --list-targets show it: the default
        return str(self.default)

    def accepted(self) -> str:
        if self.choices:
            return ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"an integer from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f"an integer >= {self.minimum}"
        if self.type is bool:
            return "true, false"
        return self.help or self.type.__name__

    def parse(self, target: str, key: str, raw: Any) -> Any:
        """The typed value of ``raw``, or a UserInputError naming target, option and the accepted values."""
        value = self._from_text(raw) if isinstance(raw, str) else raw
        if value is None and self.nullable:
            return None
        if self.choices:
            ok = any(value == c and type(value) is type(c) for c in self.choices)
        else:
            ok = isinstance(value, self.type) and not (self.type is int and isinstance(value, bool))
            ok = ok and (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
        if ok and self.check is not None:
            ok = bool(self.check(value))
        if not ok:
            raise UserInputError(f"target {target}: option {key}={raw!r}; accepted: {self.accepted()}")
        return value

    def _from_text(self, raw: str) -> Any:
        low = raw.strip().lower()
        if self.nullable and low in ("none", "null", ""):
            return None
        for c in self.choices:
            if (str(c).lower() if not isinstance(c, str) else c.lower()) == low:
                return c
        if self.type is bool:
            return True if low in _TRUE else False if low in _FALSE else raw
        if self.type is int:
            try:
                return int(low)
            except ValueError:
                return raw
        return raw


def parse_options(target: str, declared: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared option with its typed value (the default when not given); unknown keys are refused."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        allowed = ", ".join(sorted(declared)) or "(none)"
        raise UserInputError(f"target {target!r}: unknown option(s) {', '.join(unknown)}; allowed: {allowed}")
    return {k: (opt.parse(target, k, given[k]) if k in given else opt.default) for k, opt in declared.items()}


MAX_OPSET = 23  # the newest opset torch 2.13's exporter writes as asked (17..23 checked); beyond it, it wrote 18


def hub_options(opset: int) -> dict[str, Option]:
    """The options of every target that converts from the hub ONNX graph (exporters/onnx.py)."""
    return {
        "opset": Option(opset, int, minimum=17, maximum=MAX_OPSET, help=f"ONNX opset (17 to {MAX_OPSET})"),
        "dynamic_batch": Option(False, bool),
        "cleanup": Option(True, bool, help="onnxslim graph cleanup"),
        "exporter": Option("auto", str, choices=("auto", "torchscript", "dynamo")),
    }
