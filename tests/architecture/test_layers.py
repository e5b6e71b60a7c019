"""The core's packages import only downwards: base < plugin < config < data < model < runs < training < tune < commands.

docs/architecture.md's package map says what each package owns and what it may import; this
holds the code to it, for module-level imports and for the ones inside functions alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

LAYERS = ["base", "plugin", "config", "data", "model", "runs", "training", "tune", "commands"]
# kept for plugins written against the flat layout; each is the module it names (see the file)
SHIMS = {"hookspecs", "interfaces", "structure", "errors", "pooling", "spec", "plugins", "registry", "build"}
OUTSIDE = {"toolkit", "testing"}  # for plugin authors: they may import the core, the core never imports them


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported mtbert package) of every import of ``path``, module-level or not."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "mtbert" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_no_relative_imports_in_the_core():
    """Absolute imports only: a module's layer is read from its import lines."""
    relative = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in (ROOT / "mtbert").rglob("*.py")
                for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert relative == []


def test_every_package_imports_only_its_own_layer_and_those_below():
    wrong = []
    for layer, package in enumerate(LAYERS):
        for path in sorted((ROOT / "mtbert" / package).rglob("*.py")):
            for line, target in imports(path):
                if target in OUTSIDE:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports mtbert.{target} (for plugins only)")
                elif target in SHIMS:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports the shim mtbert.{target}")
                elif target in LAYERS and LAYERS.index(target) > layer:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports mtbert.{target}, a layer above {package}")
    assert wrong == [], "\n".join(wrong)


def test_the_top_level_holds_only_packages_shims_and_the_entry_points():
    modules = {p.stem for p in (ROOT / "mtbert").glob("*.py")}
    assert modules == SHIMS | {"__init__", "__main__"}
    packages = {p.name for p in (ROOT / "mtbert").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS) | OUTSIDE
