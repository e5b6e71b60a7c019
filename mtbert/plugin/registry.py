"""kind -> name -> component, as registered by plugins.

A component is a factory (usually a class) plus the attrs class that holds
its options. The registry knows kinds, never particular methods.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import attrs

from mtbert.base.errors import PluginError
from mtbert.plugin.hookspecs import KIND_HOOKS
from mtbert.plugin.structure import closest

NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")


def singular(kind: str) -> str:
    """'losses' -> 'loss', 'gradient_methods' -> 'gradient method'."""
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
    config: type
    plugin: str  # the entry point (plugin module) that registered it
    package: str  # the distribution that provides that plugin

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

        def register(name: str, factory: Callable[..., Any], config: type | None = None) -> None:
            problem = self._check_entry(kind, name, factory, config)
            if problem:
                self.failures.append(PluginFailure(plugin, package, problem))
                return
            self._items[kind][name] = Component(kind, name, factory, config or NoOptions, plugin, package)

        return register

    def _check_entry(self, kind, name, factory, config) -> str | None:
        if not isinstance(name, str) or not NAME_RE.match(name):
            return f"{kind}: invalid name {name!r} (lower-case letters, digits, '_' or '-')"
        if not callable(factory):
            return f"{kind}.{name}: factory {factory!r} is not callable"
        if config is not None and not attrs.has(config):
            return f"{kind}.{name}: config {config!r} is not an attrs class"
        existing = self._items[kind].get(name)
        if existing is not None:
            return (f"{kind}.{name}: already registered by plugin '{existing.plugin}' "
                    f"(package {existing.package}); this registration is ignored")
        return None

    # -- lookup ------------------------------------------------------------
    def kinds(self) -> list[str]:
        return list(self._items)

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def has(self, kind: str, name: str) -> bool:
        return name in self._items.get(kind, {})

    def get(self, kind: str, name: str) -> Component:
        try:
            return self._items[kind][name]
        except KeyError:
            raise PluginError(self.unknown(kind, name)) from None

    def unknown(self, kind: str, name: str) -> str:
        known = self.names(kind)
        listing = ", ".join(known) if known else "none registered"
        return f"unknown {singular(kind)} \"{name}\"{closest(name, known)}; known: {listing}"

    def all(self) -> list[Component]:
        return [c for kind in self._items for _, c in sorted(self._items[kind].items())]
