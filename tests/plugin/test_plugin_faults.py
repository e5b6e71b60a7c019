"""Plugin faults, injected through real entry points of a fake installed distribution.

Each fake plugin is a module file in a temporary directory plus a minimal
``<name>-0.1.dist-info`` (METADATA + entry_points.txt) next to it, exactly
what ``pip install`` leaves behind, so ``importlib.metadata`` finds the
package name. Faults: a module that raises on import (three ways), one that
registers names already taken, and factories that return objects which do
not meet their interface. Each is reported by plugin (and package) name and
the built-ins keep working; the command line says the same without a
traceback. (tests/plugin/test_plugins.py covers hook typos, raising hooks and bad
names with in-memory modules; this file goes through installed packages.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
import tomli_w
import torch

from mtbert.model.build import label_spec, make
from mtbert.base.errors import PluginError, SpecError
from mtbert.plugin.loading import build_registry
from mtbert.config.spec import structure_component, structure_spec

from helpers import BUILT_IN, TINY_ENCODER, script


HEALTHY = '''
"""A healthy third-party plugin: one extra loss."""
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Loss


class MeanAbsoluteError(Loss):
    """Mean absolute error (a third-party loss)."""

    accepts = frozenset({"regression"})

    def __init__(self, options, labels=None):
        pass

    def __call__(self, output, labels):
        return (output.float() - labels.float()).abs().mean()


@hookimpl
def register_losses(register):
    register("fine_mae", MeanAbsoluteError)
'''

DUPLICATES = '''
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Loss


class Impostor(Loss):
    """Would shadow a built-in."""

    accepts = frozenset({"regression"})


@hookimpl
def register_losses(register):
    register("mse", Impostor)  # taken by the built-in losses.mse
    register("own_loss", Impostor)  # free: still registered


@hookimpl
def register_heads(register):
    register("classifier", Impostor)  # taken by heads.cross_encoder
'''

WRONG_OBJECTS = '''
"""Factories that return objects which do not meet their kind's interface."""
import torch
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import LabelSpec


def int_loss(options, labels=None):
    """A loss factory that returns an int."""
    return 3


int_loss.accepts = frozenset({"multiclass", "binary", "regression"})


class Hollow(torch.nn.Module):
    """A head without predict."""

    output_kind = "multiclass"

    @classmethod
    def labels(cls, config):
        return LabelSpec("multiclass", 5)

    def __init__(self, options, hidden_size):
        super().__init__()
        self.out = torch.nn.Linear(hidden_size, 5)

    def forward(self, encoded):
        return self.out(encoded.states[:, 0])


class Unlabelled(torch.nn.Module):
    """A head class without the labels() classmethod validation relies on."""

    output_kind = "multiclass"


def vague_loss(options, labels=None):
    """A loss factory that does not say which head outputs it accepts."""
    return lambda output, labels: output.sum()


class Rigid(Hollow):
    """A head whose factory does not take the hidden size."""

    def __init__(self, options):
        super().__init__(options, 8)

    def predict(self, output):
        return output.argmax(-1)


@hookimpl
def register_losses(register):
    register("int_loss", int_loss)
    register("vague_loss", vague_loss)


@hookimpl
def register_heads(register):
    register("hollow", Hollow)
    register("rigid", Rigid)
    register("unlabelled", Unlabelled)
'''

BROKEN = {
    "raises": 'raise RuntimeError("boom: this plugin cannot start")\n',
    "missing_dependency": "import mtbert_no_such_dependency_xyz\n",
    "syntax_error": "def broken(:\n    pass\n",
}
BROKEN_WORDS = {
    "raises": ("RuntimeError", "boom: this plugin cannot start"),
    "missing_dependency": ("ModuleNotFoundError", "mtbert_no_such_dependency_xyz"),
    "syntax_error": ("SyntaxError",),
}


def fake_distribution(root: Path, package: str, modules: dict[str, str]) -> dict[str, str]:
    """Write ``<root>/<package>-0.1.dist-info`` with one ``mtbert`` entry point per module, and the modules.

    ``modules`` maps entry-point name -> module source; module names get a unique suffix (so no test sees
    another's cached import). Returns entry-point name -> module name."""
    info = root / f"{package}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    names = {ep: f"{ep.replace('.', '_')}_mod_{uuid.uuid4().hex[:8]}" for ep in modules}
    (info / "entry_points.txt").write_text("[mtbert]\n" + "".join(f"{ep} = {m}\n" for ep, m in names.items()))
    for ep, source in modules.items():
        (root / f"{names[ep]}.py").write_text(textwrap.dedent(source))
    return names


def installed(root: Path, package: str, monkeypatch) -> list[metadata.EntryPoint]:
    """The fake distribution's entry points, as importlib.metadata sees an installed package."""
    monkeypatch.syspath_prepend(str(root))
    dist = next(d for d in metadata.distributions(path=[str(root)]) if d.metadata["Name"] == package)
    return list(dist.entry_points.select(group="mtbert"))


@pytest.fixture
def fresh_modules(registry, monkeypatch):
    """Forget the fake plugin modules imported by a test. (Asks for the session's registry first, so the
    cached default registry is never built while a fake distribution is on sys.path.)"""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if "_mod_" in name:
            monkeypatch.delitem(sys.modules, name, raising=False)


def builtin_entry_points() -> list[metadata.EntryPoint]:
    """mtbert's own entry points (not those of a fake distribution already on sys.path)."""
    return [ep for ep in metadata.entry_points(group="mtbert") if ep.dist is not None and ep.dist.name == "mtbert"]


def assert_builtins_work(reg) -> None:
    for kind, names in BUILT_IN.items():
        assert names <= set(reg.names(kind)), kind
    mse = make(reg, structure_component("losses", "mse", reg), None)
    assert mse(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(2.0)


# -- in-process: build_registry with the fake distributions ---------------------------------------------

@pytest.mark.parametrize("flavour", sorted(BROKEN))
def test_a_plugin_that_fails_to_import_is_reported_by_name(tmp_path, monkeypatch, fresh_modules, flavour):
    fake_distribution(tmp_path, "fakepkg", {"broken": BROKEN[flavour], "fine": HEALTHY})
    reg = build_registry(builtin_entry_points() + installed(tmp_path, "fakepkg", monkeypatch))
    assert [(f.plugin, f.package) for f in reg.failures] == [("broken", "fakepkg")]
    problem = reg.failures[0].problem
    assert problem.startswith("import failed: ")
    for word in BROKEN_WORDS[flavour]:
        assert word in problem, problem
    # the file and line of the failure, in the plugin's own module (line 1 of each broken source)
    broken_file = next(tmp_path.glob("broken_*.py"))
    assert f" at {broken_file}:1" in problem, problem
    assert_builtins_work(reg)
    fine = reg.get("losses", "fine_mae")  # the same package's healthy plugin loads
    assert (fine.plugin, fine.package) == ("fine", "fakepkg")
    loss = make(reg, structure_component("losses", "fine_mae", reg), None)
    assert loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(1.0)


def test_an_entry_point_naming_a_missing_attribute(tmp_path, monkeypatch, fresh_modules):
    names = fake_distribution(tmp_path, "fakepkg", {"fine": HEALTHY})
    monkeypatch.syspath_prepend(str(tmp_path))
    missing = metadata.EntryPoint("typo", f"{names['fine']}:no_such_attr", "mtbert")
    reg = build_registry(builtin_entry_points() + [missing])
    assert [f.plugin for f in reg.failures] == ["typo"]
    assert "import failed" in reg.failures[0].problem and "no_such_attr" in reg.failures[0].problem
    assert_builtins_work(reg)


def test_duplicate_names_are_refused_and_the_first_registration_kept(tmp_path, monkeypatch, fresh_modules):
    fake_distribution(tmp_path, "fakepkg", {"dupes": DUPLICATES})
    reg = build_registry(builtin_entry_points() + installed(tmp_path, "fakepkg", monkeypatch))
    problems = sorted(f.problem for f in reg.failures if f.plugin == "dupes")
    assert len(reg.failures) == 2 and all(f.package == "fakepkg" for f in reg.failures)
    assert problems[0].startswith("heads.classifier: already registered by plugin 'heads.cross_encoder'")
    assert problems[1].startswith("losses.mse: already registered by plugin 'losses.mse' (package mtbert)")
    assert reg.get("losses", "mse").plugin == "losses.mse"  # the built-in is untouched
    assert reg.get("heads", "classifier").package == "mtbert"
    assert reg.get("losses", "own_loss").plugin == "dupes"  # the plugin's free name still registers
    assert_builtins_work(reg)


def test_another_package_using_a_builtin_entry_point_name(tmp_path, monkeypatch, fresh_modules):
    """Two packages, one entry-point name ("losses.mse"): the built-in keeps working, and the other package's
    plugin is either loaded under its own package or reported by name -- never silently mixed up."""
    fake_distribution(tmp_path, "fakepkg", {"losses.mse": HEALTHY})
    reg = build_registry(builtin_entry_points() + installed(tmp_path, "fakepkg", monkeypatch))
    mse = reg.get("losses", "mse")
    assert (mse.plugin, mse.package) == ("losses.mse", "mtbert")
    assert_builtins_work(reg)
    if reg.has("losses", "fine_mae"):
        fine = reg.get("losses", "fine_mae")
        assert (fine.plugin, fine.package) == ("losses.mse", "fakepkg") and reg.failures == []
    else:
        assert [(f.plugin, f.package) for f in reg.failures] == [("losses.mse", "fakepkg")]


def test_an_entry_point_aliasing_a_builtin_module_leaves_the_builtin(monkeypatch):
    """Regression: pluggy's 'already registered under a different name' used to unregister the module --
    the built-in registered first -- so an alias entry point removed the built-in mse, and the failure
    dumped pluggy's whole plugin table."""
    alias = metadata.EntryPoint("zz_alias", "mtbert_plugins.losses.mse", "mtbert")
    reg = build_registry(builtin_entry_points() + [alias])
    assert [f.plugin for f in reg.failures] == ["zz_alias"]
    assert reg.has("losses", "mse"), reg.names("losses")
    assert reg.get("losses", "mse").plugin == "losses.mse"
    assert len(reg.failures[0].problem) < 400, len(reg.failures[0].problem)  # not pluggy's whole table
    assert_builtins_work(reg)


@pytest.fixture
def wrong_objects(tmp_path, monkeypatch, fresh_modules):
    fake_distribution(tmp_path, "fakeheads", {"wrongobj": WRONG_OBJECTS})
    reg = build_registry(builtin_entry_points() + installed(tmp_path, "fakeheads", monkeypatch))
    assert reg.failures == []  # registering is fine; the objects are wrong only once built
    return reg


def test_a_loss_factory_returning_an_int(wrong_objects):
    reg = wrong_objects
    labels = label_spec(reg, structure_component("heads", {"name": "classifier", "num_labels": 5}, reg))
    with pytest.raises(PluginError) as info:
        make(reg, structure_component("losses", "int_loss", reg), labels)
    message = str(info.value)
    assert message.startswith('loss "int_loss" from plugin \'wrongobj\' (package fakeheads) returned int, '
                              "which lacks __call__")
    assert "docs/plugins.md" in message
    assert_builtins_work(reg)


def test_a_head_factory_returning_an_object_without_predict(wrong_objects, tiny_encoder):
    reg = wrong_objects
    with pytest.raises(PluginError) as info:
        make(reg, structure_component("heads", "hollow", reg), tiny_encoder.hidden_size)
    message = str(info.value)
    assert 'head "hollow" from plugin \'wrongobj\' (package fakeheads) returned Hollow' in message
    assert message.endswith("which lacks predict; see docs/plugins.md for the interface")
    head = make(reg, structure_component("heads", {"name": "classifier", "num_labels": 5}, reg),
                tiny_encoder.hidden_size)  # a built-in head from the same registry still builds
    assert hasattr(head, "predict")


def test_a_head_factory_with_the_wrong_signature(wrong_objects, tiny_encoder):
    """Regression: a factory that cannot take the core's arguments used to escape make() as a TypeError."""
    reg = wrong_objects
    with pytest.raises(PluginError) as info:
        make(reg, structure_component("heads", "rigid", reg), tiny_encoder.hidden_size)
    assert 'head "rigid" from plugin \'wrongobj\' (package fakeheads)' in str(info.value)


def test_a_head_without_labels_or_a_loss_without_accepts_is_a_spec_error(wrong_objects, tmp_path):
    """Validation asks the head class for its labels and the loss for what it accepts: a plugin that
    lacks them gives a spec problem at the task's head / loss, not an AttributeError."""
    reg = wrong_objects
    data = one_task_spec(tiny_data(tmp_path / "data"), tmp_path / "runs", "unlabelled", "cross_entropy")
    with pytest.raises(SpecError) as info:
        structure_spec(data, reg)
    problems = dict(info.value.problems)
    assert "unlabelled" in problems["tasks.sst.head"] and "labels" in problems["tasks.sst.head"]
    data = one_task_spec(tmp_path / "data", tmp_path / "runs", {"name": "classifier", "num_labels": 5},
                         "vague_loss")
    with pytest.raises(SpecError) as info:
        structure_spec(data, reg)
    problems = dict(info.value.problems)
    assert "vague_loss" in problems["tasks.sst.loss"] and "accepts" in problems["tasks.sst.loss"]


def one_task_spec(data_dir: Path, out: Path, head, loss: str) -> dict:
    return {"name": "faults", "out": str(out), "encoder": dict(TINY_ENCODER), "data": {"dir": str(data_dir)},
            "train": {"epochs": 1, "batch_size": 2},
            "tasks": {"sst": {"data": {"train": "train.tsv", "label": "sentiment"}, "head": head, "loss": loss,
                              "metrics": ["accuracy"]}}}


def tiny_data(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.tsv").write_text("id\tsentence\tsentiment\na\tgood\t4\nb\tbad\t0\nc\tso so\t2\n")
    return path


@pytest.mark.parametrize("head, loss, words", [
    ("hollow", "cross_entropy", ('head "hollow"', "lacks predict")),
    ({"name": "classifier", "num_labels": 5}, "int_loss", ('loss "int_loss"', "returned int")),
])
def test_the_trainer_refuses_a_wrong_object_before_training(wrong_objects, tmp_path, head, loss, words):
    from mtbert.training.loop import Trainer

    reg = wrong_objects
    spec = structure_spec(one_task_spec(tiny_data(tmp_path / "data"), tmp_path / "runs", head, loss), reg)
    with pytest.raises(PluginError) as info:
        Trainer(spec, reg, progress=False)
    for word in words + ("plugin 'wrongobj' (package fakeheads)",):
        assert word in str(info.value)
    assert not (tmp_path / "runs").exists()
    good = structure_spec(one_task_spec(tmp_path / "data", tmp_path / "runs",
                                        {"name": "classifier", "num_labels": 5}, "cross_entropy"), reg)
    assert len(Trainer(good, reg, progress=False).tasks["sst"].splits["train"]) == 3  # built-ins still work


# -- the command line, with the fake distributions on PYTHONPATH -----------------------------------------------

def run_with(pythonpath: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(pythonpath),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.pop("MTBERT_DATA", None)
    env.pop("MTBERT_LOAD_PLUGINS", None)
    return subprocess.run([script(), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """`mtbert plugins` with a broken plugin installed, and `mtbert run` with a wrong-object plugin, at once."""
    broken = tmp_path_factory.mktemp("broken-site")
    fake_distribution(broken, "fakepkg", {"broken": BROKEN["raises"], "fine": HEALTHY})
    wrong = tmp_path_factory.mktemp("wrong-site")
    fake_distribution(wrong, "fakeheads", {"wrongobj": WRONG_OBJECTS})
    work = tmp_path_factory.mktemp("wrong-run")
    spec = work / "spec.toml"
    spec.write_text(tomli_w.dumps(one_task_spec(tiny_data(work / "data"), work / "runs", "hollow",
                                                "cross_entropy")))
    with ThreadPoolExecutor(max_workers=2) as pool:
        plugins = pool.submit(run_with, broken, "plugins")
        run = pool.submit(run_with, wrong, "run", spec, "--no-progress")
        return {"plugins": plugins.result(), "run": run.result(), "out": work / "runs"}


def test_mtbert_plugins_lists_the_builtins_and_reports_the_broken_plugin(cli_results):
    result = cli_results["plugins"]
    assert result.returncode == 1, result.stderr  # a failed plugin fails the command, after the listing
    rows = {tuple(line.split()[:3]) for line in result.stdout.splitlines()}
    for kind, names in BUILT_IN.items():
        for name in names:
            assert (kind, name, "mtbert") in rows, (kind, name)
    assert ("losses", "fine_mae", "fakepkg") in rows  # the healthy plugin of the same package
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1
    assert failed[0].startswith("FAILED  plugin 'broken' (package fakepkg): import failed: RuntimeError(")
    assert "boom: this plugin cannot start" in failed[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_mtbert_run_with_a_wrong_object_plugin_is_a_plugin_error(cli_results):
    result = cli_results["run"]
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("mtbert: plugin error: "), result.stderr
    assert 'head "hollow" from plugin \'wrongobj\' (package fakeheads) returned Hollow' in result.stderr
    assert "lacks predict" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stderr.splitlines()) <= 3
    assert not cli_results["out"].exists()
