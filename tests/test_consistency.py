"""The repository agrees with itself: plugin modules <-> entry points <-> packages."""

from __future__ import annotations

import tomllib
from importlib import metadata

from conftest import ROOT

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


def test_package_list_covers_every_plugin_folder():
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {"mtbert_plugins." + ".".join(p.parent.relative_to(ROOT / "plugins").parts)
               for p in (ROOT / "plugins").rglob("__init__.py") if p.parent != ROOT / "plugins"}
    assert folders | {"mtbert", "mtbert_plugins"} == packages


def test_every_plugin_module_cites_or_explains_itself():
    for path in (ROOT / "plugins").rglob("*.py"):
        if path.name != "__init__.py":
            source = path.read_text()
            assert source.lstrip().startswith('"""'), f"{path} has no module docstring"
