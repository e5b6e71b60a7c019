"""The plugin manager: entry points of group ``mtbert`` -> a filled Registry.

Built-in plugins are found the same way as third-party ones. A plugin that
fails to import, implements a hook that does not exist, or raises while
registering is recorded in ``registry.failures`` by name; the others load.
``MTBERT_LOAD_PLUGINS=a,b`` loads only the entry points (or packages) named.
"""

from __future__ import annotations

import functools
import os
import traceback
from importlib import metadata
from types import ModuleType
from typing import Iterable

import pluggy

from mtbert.plugin import hookspecs
from mtbert.plugin.registry import PluginFailure, Registry

GROUP = "mtbert"


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=GROUP), key=lambda ep: ep.name)


def _package(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "?"


def _selected(eps: list[metadata.EntryPoint]) -> list[metadata.EntryPoint]:
    wanted = os.environ.get("MTBERT_LOAD_PLUGINS")
    if not wanted:
        return eps
    names = {n.strip() for n in wanted.split(",") if n.strip()}
    return [ep for ep in eps if ep.name in names or _package(ep) in names]


def build_registry(entry_points: Iterable[metadata.EntryPoint] | None = None,
                   modules: Iterable[tuple[str, ModuleType, str]] = ()) -> Registry:
    """Load plugins and collect their components.

    ``modules`` adds (plugin name, module, package) triples directly, which is
    how tests register a plugin without installing it.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    # pluggy's name for a plugin is "<package>:<entry point>", so two packages may
    # use the same entry-point name; users see the entry point and the package.
    plugins: dict[str, tuple[str, str]] = {}

    candidates = []
    for ep in _selected(list(entry_points) if entry_points is not None else _entry_points()):
        try:
            candidates.append((ep.name, ep.load(), _package(ep)))
        except Exception as exc:  # a broken plugin must not hide the others
            registry.failures.append(PluginFailure(ep.name, _package(ep),
                                                   f"import failed: {exc!r}{where(exc)} (entry point {ep.value})"))
    candidates.extend(modules)

    for name, module, package in candidates:
        key = f"{package}:{name}"
        try:
            pm.register(module, name=key)
            pm.check_pending()
        except Exception as exc:
            if pm.get_plugin(key) is module:  # only what this entry point registered, never an earlier plugin
                pm.unregister(module)
            problem = f"module {module.__name__} is already loaded as another plugin" \
                if "already registered" in str(exc) else f"invalid plugin: {exc}"
            registry.failures.append(PluginFailure(name, package, problem))
            continue
        plugins[key] = (name, package)

    for kind, hook_name in [*hookspecs.KIND_HOOKS.items(), *((k, h) for h, k in hookspecs.LEGACY_HOOKS.items())]:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            name, package = plugins[impl.plugin_name]
            register = registry.registrar(kind, name, package)
            try:
                impl.function(register=register)
            except Exception as exc:
                registry.failures.append(PluginFailure(name, package, f"{hook_name} raised: {exc!r}{where(exc)}"))
    return registry


def where(exc: BaseException) -> str:
    """' at FILE:LINE', the innermost frame of the exception (a SyntaxError's own file and line), so
    the author of a broken plugin is sent to the line; '' when nothing is known."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of every installed plugin, built once per process."""
    return build_registry()
