"""The plugin system: entry points -> registry; broken plugins are reported, not fatal."""

from __future__ import annotations

import json
import types
from importlib import metadata

import attrs
import pytest
from click.testing import CliRunner

from mtbert.commands.cli import main
from mtbert.base.errors import PluginError
from mtbert.plugin.hookspecs import KIND_HOOKS, hookimpl
from mtbert.plugin.loading import build_registry

from helpers import BUILT_IN


def test_builtins_come_through_entry_points(registry):
    for kind, names in BUILT_IN.items():
        assert names <= set(registry.names(kind)), kind
    component = registry.get("heads", "classifier")
    assert component.package == "mtbert" and component.plugin == "heads.cross_encoder"
    assert attrs.has(component.config)


def test_unknown_name_lists_known_and_closest(registry):
    with pytest.raises(PluginError) as excinfo:
        registry.get("samplers", "round-robin")
    message = str(excinfo.value)
    assert 'did you mean "round_robin"' in message
    assert "all_tasks, annealed, proportional, proportional_joint, round_robin, temperature" in message


def _module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(module, hook, hookimpl(fn))
    return module


def test_broken_plugins_are_reported_and_the_rest_load():
    eps = list(metadata.entry_points(group="mtbert"))
    broken_import = metadata.EntryPoint("broken", "no_such_module_xyz", "mtbert")
    bad_hook = _module("typo", register_head=lambda register: None)  # misspelled hook name
    raising = _module("raising", register_losses=lambda register: 1 / 0)
    duplicate = _module("dupe", register_losses=lambda register: register("mse", object))
    bad_name = _module("badname", register_losses=lambda register: register("Bad Name", object))
    reg = build_registry(eps + [broken_import], modules=[
        ("typo", bad_hook, "pkg-a"), ("raising", raising, "pkg-b"),
        ("dupe", duplicate, "pkg-c"), ("badname", bad_name, "pkg-d")])
    failures = {f.plugin: f for f in reg.failures}
    assert "import failed" in failures["broken"].problem and "no_such_module_xyz" in failures["broken"].problem
    assert "register_head" in failures["typo"].problem and failures["typo"].package == "pkg-a"
    assert "ZeroDivisionError" in failures["raising"].problem
    assert "already registered by plugin 'losses.mse'" in failures["dupe"].problem
    assert "invalid name" in failures["badname"].problem
    # ... and every built-in is still there, the first mse untouched.
    for kind, names in BUILT_IN.items():
        assert names <= set(reg.names(kind))
    assert reg.get("losses", "mse").plugin == "losses.mse"


def test_load_only_named_plugins(monkeypatch):
    monkeypatch.setenv("MTBERT_LOAD_PLUGINS", "losses.mse,heads.cross_encoder")
    reg = build_registry()
    assert reg.names("losses") == ["mse"] and reg.names("samplers") == []


def test_every_kind_has_a_hook():
    from mtbert import hookspecs

    for kind, hook in KIND_HOOKS.items():
        assert callable(getattr(hookspecs, hook)), kind


def test_plugins_command_table_and_json(registry):
    runner = CliRunner()
    table = runner.invoke(main, ["plugins"])
    assert table.exit_code == 0
    assert any(line.split()[:3] == ["samplers", "annealed", "mtbert"] for line in table.output.splitlines())
    as_json = runner.invoke(main, ["plugins", "--json"])
    data = json.loads(as_json.output)
    rows = {(c["kind"], c["name"]): c for c in data["components"]}
    assert rows[("losses", "bce")]["package"] == "mtbert"
    assert rows[("losses", "bce")]["plugin"] == "losses.bce"
    assert len(rows) == sum(len(registry.names(k)) for k in registry.kinds())
    assert data["failures"] == []


def test_plugins_command_exits_1_when_a_plugin_failed(monkeypatch):
    raising = _module("raising", register_losses=lambda register: 1 / 0)
    reg = build_registry(modules=[("raising", raising, "pkg-b")])
    monkeypatch.setattr("mtbert.plugin.loading.default_registry", lambda: reg)
    runner = CliRunner()  # stdout and stderr kept apart
    table = runner.invoke(main, ["plugins"])
    assert table.exit_code == 1
    assert any(line.split()[:3] == ["losses", "mse", "mtbert"] for line in table.stdout.splitlines())
    assert table.stderr.startswith("FAILED  plugin 'raising' (package pkg-b): register_losses raised: ")
    as_json = runner.invoke(main, ["plugins", "--json"])
    assert as_json.exit_code == 1
    data = json.loads(as_json.stdout)  # the JSON is still printed whole
    assert [f["plugin"] for f in data["failures"]] == ["raising"]
    assert ("losses", "mse") in {(c["kind"], c["name"]) for c in data["components"]}
