"""The one plugin mechanism of edgekit: a name -> object :class:`Registry` that fills itself lazily.

Every extension point is a ``Registry``: recipe stages, zoo models, export targets, runtimes, device
transports, power sensors, calibration observers, pruning importances and handlers, I-ViT / BiViT converters.
A registry names the modules that register into it (``lazy=("edgekit.exporters", "[!_]*")``: every public
module of that package; ``"stages"``: every module named ``stages`` below it) and imports them on first use,
so ``edgekit --help`` imports nothing heavy. Adding a plugin is one new module with one registration:

    from edgekit.exporters.base import TARGETS
    @TARGETS.register("mytarget")
    class MyExporter(Exporter): ...

A user's own plugin modules (outside the package) are imported before any registry fills: list them in the
``EDGEKIT_PLUGINS`` environment variable (comma-separated module names) or call :func:`load_plugins`.

The registering decorator returns the object unchanged, so registered functions stay importable and testable;
``unregister`` removes an entry (for tests).
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import pkgutil
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from edgekit.errors import UserInputError

T = TypeVar("T")

PLUGINS_ENV = "EDGEKIT_PLUGINS"
_plugins_loaded: set[str] = set()


def load_plugins(modules: Iterable[str] | None = None) -> list[str]:
    """Import the user's plugin modules (default: ``$EDGEKIT_PLUGINS``); each registers what it provides."""
    if modules is None:
        modules = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    done = []
    for name in modules:
        if name in _plugins_loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserInputError(f"plugin module {name!r} (from ${PLUGINS_ENV} or load_plugins) cannot be imported: {exc}") from None
        _plugins_loaded.add(name)
        done.append(name)
    return done


def _import_matching(package: str, pattern: str, recursive: bool) -> None:
    pkg = importlib.import_module(package)
    paths = getattr(pkg, "__path__", None)
    if paths is None:
        return
    walk = pkgutil.walk_packages(paths, prefix=package + ".") if recursive else pkgutil.iter_modules(paths, prefix=package + ".")
    for info in walk:
        leaf = info.name.rsplit(".", 1)[-1]
        if fnmatch.fnmatchcase(leaf, pattern) and not (leaf.startswith("_") and not pattern.startswith("_")):
            importlib.import_module(info.name)


class Registry(Generic[T]):
    """Names -> objects of one ``kind``, filled on first use from the modules given by ``lazy``.

    ``lazy``: ``(package, pattern)`` pairs; on first lookup every module below ``package`` whose last name
    matches ``pattern`` (fnmatch; private ``_modules`` only if the pattern asks) is imported, recursively when
    ``recursive`` is true. Modules that register into the registry are found that way, never listed by hand.
    """

    def __init__(self, kind: str, lazy: Iterable[tuple[str, str]] = (), recursive: bool = False) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._lazy = tuple(lazy)
        self._recursive = recursive
        self._filled = not self._lazy

    # -- filling ---------------------------------------------------------------------------------------------
    def _fill(self) -> None:
        if self._filled:
            return
        self._filled = True  # set first: the imported modules register into this registry
        load_plugins()
        try:
            for package, pattern in self._lazy:
                _import_matching(package, pattern, self._recursive)
        except BaseException:
            self._filled = False
            raise

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, replace: bool = False, **meta: Any) -> None:
        """Register ``obj`` under ``name``; a second, different object for a name is an error unless ``replace``
        (keyed registries of handlers let a user's registration override a built-in one)."""
        if name in self._items and self._items[name] is not obj and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        self._meta[name] = dict(meta)

    def unregister(self, name: str) -> T:
        """Remove ``name`` (for tests and plugin reloads); returns what was registered."""
        self._fill()
        if name not in self._items:
            raise KeyError(f"{self.kind} {name!r} is not registered")
        self._meta.pop(name, None)
        return self._items.pop(name)

    # -- lookup ----------------------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        self._fill()
        try:
            return self._items[name]
        except KeyError:
            accepted = ", ".join(sorted(self._items)) or "(none registered)"
            raise UserInputError(f"unknown {self.kind} {name!r}; accepted: {accepted}") from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self, pattern: str = "*") -> list[str]:
        self._fill()
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._fill()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._fill()
        return len(self._items)


class KeyedRegistry(Registry[T]):
    """A registry keyed by a type, an op or a function instead of a name (pruning handlers keyed by module
    type, ATen rules keyed by op, I-ViT converters keyed by module type or function): the same registration,
    lazy filling and ``unregister``; :meth:`lookup` of a type walks its MRO, so a subclass of a registered
    type finds its base's entry."""

    def _label(self, key: Any) -> str:
        return getattr(key, "__qualname__", None) or getattr(key, "__name__", None) or str(key)

    def get(self, key: Any) -> T:  # type: ignore[override]
        self._fill()
        try:
            return self._items[key]
        except (KeyError, TypeError):
            accepted = ", ".join(sorted(self._label(k) for k in self._items)) or "(none registered)"
            raise UserInputError(f"no {self.kind} for {self._label(key)}; registered: {accepted}") from None

    def lookup(self, key: Any, default: Any = None, mro: bool = True) -> Any:
        """The entry for ``key``; for a type (with ``mro``), the entry of its nearest registered base class."""
        self._fill()
        if mro and isinstance(key, type):
            for base in key.__mro__:
                if base in self._items:
                    return self._items[base]
            return default
        try:
            return self._items.get(key, default)
        except TypeError:  # unhashable key
            return default

    def keys(self) -> list[Any]:
        self._fill()
        return list(self._items)

    def names(self, pattern: str = "*") -> list[str]:
        self._fill()
        return sorted(n for n in (self._label(k) for k in self._items) if fnmatch.fnmatchcase(n, pattern))

    def items(self) -> list[tuple[Any, T]]:  # type: ignore[override]
        self._fill()
        return list(self._items.items())
