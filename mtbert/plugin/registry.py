"""kind -> name -> component, as registered by plugins.

A component is a factory (usually a class) plus the attrs class that holds
its options, and the class that declares its capabilities (the factory
itself when it is a class). The registry knows kinds, never particular
methods.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import attrs

from mtbert.base.errors import PluginError
from mtbert.plugin.hookspecs import KIND_ALIASES, KIND_HOOKS
from mtbert.plugin.structure import closest

NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")
# capabilities renamed for one vocabulary -> their first name (``layer_slots`` is also the encoder's
# list of slots; the capability says whether there are any)
FIRST_CAPABILITY_NAMES = {"has_layer_slots": "layer_slots"}
_MISSING = object()


def singular(kind: str) -> str:
    """'losses' -> 'loss', 'gradients' -> 'gradient method'."""
    kind = KIND_ALIASES.get(kind, kind)
    if kind == "gradients":
        return "gradient method"
    word = kind[:-2] if kind.endswith("sses") else kind[:-1]
    return word.replace("_", " ")


@attrs.frozen
class NoOptions:
    """Config class for components that take no options."""


@attrs.frozen
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    options: type  # the attrs class of its spec options
    plugin: str  # the entry point (plugin module) that registered it
    package: str  # the distribution that provides that plugin
    declares: Any = None  # the class whose attributes are its capabilities (default: a class factory)

    @property
    def config(self) -> type:
        """The first name of ``options``."""
        return self.options

    def capability(self, name: str, default=None):
        """What the component declares for ``name`` (a class attribute of ``declares``, or of a class
        factory; an attribute set on a factory function in plugins written before), or ``default``."""
        source = self.declares if self.declares is not None else self.factory
        value = getattr(source, name, _MISSING)
        if value is _MISSING and name in FIRST_CAPABILITY_NAMES:  # a bool under its first name only
            value = getattr(source, FIRST_CAPABILITY_NAMES[name], _MISSING)
            value = value if isinstance(value, bool) else _MISSING
        return default if value is _MISSING else value

    @property
    def description(self) -> str:
        doc = (self.factory.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


@attrs.frozen
class PluginFailure:
    plugin: str
    package: str
    problem: str


class Registry:
    def __init__(self) -> None:
        self._items: dict[str, dict[str, Component]] = {kind: {} for kind in KIND_HOOKS}
        self.failures: list[PluginFailure] = []

    # -- filling -----------------------------------------------------------
    def registrar(self, kind: str, plugin: str, package: str) -> Callable[..., None]:
        """The ``register`` callable handed to one plugin's hook for one kind."""
        kind = KIND_ALIASES.get(kind, kind)

        def register(name: str, factory: Callable[..., Any], options: type | None = None, *,
                     declares: type | None = None, config: type | None = None) -> None:
            """``options``: the attrs class of the spec's options (``config``, its first name);
            ``declares``: the class whose attributes declare the capabilities, when ``factory`` is a
            function (a class factory declares its own)."""
            options = options if options is not None else config
            problem = self._check_entry(kind, name, factory, options)
            if problem:
                self.failures.append(PluginFailure(plugin, package, problem))
                return
            self._items[kind][name] = Component(kind, name, factory, options or NoOptions, plugin, package, declares)

        return register

    def _check_entry(self, kind, name, factory, config) -> str | None:
        if not isinstance(name, str) or not NAME_RE.match(name):
            return f"{kind}: invalid name {name!r} (lower-case letters, digits, '_' or '-')"
        if not callable(factory):
            return f"{kind}.{name}: factory {factory!r} is not callable"
        if config is not None and not attrs.has(config):
            return f"{kind}.{name}: options {config!r} is not an attrs class"
        existing = self._items[kind].get(name)
        if existing is not None:
            return (f"{kind}.{name}: already registered by plugin '{existing.plugin}' "
                    f"(package {existing.package}); this registration is ignored")
        return None

    # -- lookup ------------------------------------------------------------
    def kinds(self) -> list[str]:
        return list(self._items)

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[KIND_ALIASES.get(kind, kind)])

    def has(self, kind: str, name: str) -> bool:
        return name in self._items.get(KIND_ALIASES.get(kind, kind), {})

    def get(self, kind: str, name: str) -> Component:
        try:
            return self._items[KIND_ALIASES.get(kind, kind)][name]
        except KeyError:
            raise PluginError(self.unknown(kind, name)) from None

    def unknown(self, kind: str, name: str) -> str:
        known = self.names(kind)
        listing = ", ".join(known) if known else "none registered"
        return f"unknown {singular(kind)} \"{name}\"{closest(name, known)}; known: {listing}"

    def all(self) -> list[Component]:
        return [c for kind in self._items for _, c in sorted(self._items[kind].items())]
