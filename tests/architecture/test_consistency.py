"""The repository agrees with itself: plugin modules <-> entry points <-> packages."""

from __future__ import annotations

import tomllib
from importlib import metadata

from helpers import ROOT


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def plugin_modules() -> set[str]:
    return {"mtbert_plugins." + ".".join(p.relative_to(ROOT / "plugins").with_suffix("").parts)
            for p in (ROOT / "plugins").rglob("*.py") if p.name != "__init__.py"}


def test_every_plugin_module_has_an_entry_point_and_back():
    declared = PYPROJECT["project"]["entry-points"]["mtbert"]
    assert set(declared.values()) == plugin_modules()
    for name, module in declared.items():  # entry point names follow the module path
        assert module == "mtbert_plugins." + name


def test_installed_entry_points_match_pyproject():
    installed = {ep.name: ep.value for ep in metadata.entry_points(group="mtbert")
                 if ep.dist is not None and ep.dist.name == "mtbert"}
    assert installed == PYPROJECT["project"]["entry-points"]["mtbert"]


def test_package_list_covers_every_package_folder():
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {"mtbert_plugins." + ".".join(p.parent.relative_to(ROOT / "plugins").parts)
               for p in (ROOT / "plugins").rglob("__init__.py") if p.parent != ROOT / "plugins"}
    cores = {"mtbert." + ".".join(p.parent.relative_to(ROOT / "mtbert").parts)
             for p in (ROOT / "mtbert").rglob("__init__.py") if p.parent != ROOT / "mtbert"}
    assert folders | cores | {"mtbert", "mtbert_plugins"} == packages


def test_every_plugin_module_cites_or_explains_itself():
    for path in (ROOT / "plugins").rglob("*.py"):
        if path.name != "__init__.py":
            source = path.read_text()
            assert source.lstrip().startswith('"""'), f"{path} has no module docstring"


CORE = ("base", "plugin", "config", "data", "model", "runs", "training", "commands")


def core_modules() -> dict[str, object]:
    """Every core module by its dotted name (mtbert.<package>.<module>) -> its path."""
    return {"mtbert." + ".".join(p.relative_to(ROOT / "mtbert").with_suffix("").parts): p
            for package in CORE for p in (ROOT / "mtbert" / package).glob("*.py") if p.name != "__init__.py"}


def module_imports(path) -> set[str]:
    """The mtbert modules a core module imports when it is loaded (top level: not under TYPE_CHECKING,
    not in functions), by dotted name."""
    import ast

    found = set()
    for node in ast.parse(path.read_text()).body:  # top level only: lazy imports in functions are not cycles
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mtbert."):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mtbert.")}
    return found


def test_the_core_has_no_import_cycle():
    modules = core_modules()
    core = {name: {m for m in module_imports(path) if m in modules} for name, path in modules.items()}

    def visit(name, trail):
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(name):] + [name]))
        for child in core.get(name, ()):
            visit(child, trail + [name])

    for name in core:
        visit(name, [])
    # the check can fail: the spec imports its validation, and phases never import the spec
    assert "mtbert.config.validation" in core["mtbert.config.spec"]
    assert "mtbert.config.spec" not in core["mtbert.config.phases"]


def test_the_core_names_no_method():
    """Core modules import no plugin and no toolkit helper: those serve methods, the core serves kinds."""
    import re

    for name, path in core_modules().items():
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) mtbert_plugins", text, re.M), f"{name} imports a plugin"
        assert not re.search(r"^\s*from (\.|mtbert\.)toolkit", text, re.M), f"{name} imports mtbert.toolkit"
