"""The installed package: its entry points load, its components build through
the registry, and mtbert's validation applies to them (run once installed)."""

from __future__ import annotations

from importlib import metadata

import pytest
import torch

from mtbert.build import make
from mtbert.errors import SpecError
from mtbert.interfaces import LabelSpec
from mtbert.plugins import build_registry, default_registry
from mtbert.spec import structure_component, structure_spec

import mtbert_focal.gradients
import mtbert_focal.losses
from mtbert_focal.gradients import RandomLossWeighting
from mtbert_focal.losses import FocalLoss

PACKAGE = "mtbert-focal"


@pytest.fixture(scope="module")
def registry():
    reg = default_registry()
    assert not reg.failures, reg.failures
    return reg


def test_entry_points_are_installed_once():
    ours = [ep for ep in metadata.entry_points(group="mtbert") if ep.value.startswith("mtbert_focal.")]
    assert sorted(ep.name for ep in ours) == ["mtbert_focal.balancers", "mtbert_focal.gradients", "mtbert_focal.losses"]
    assert {ep.dist.name for ep in ours} == {PACKAGE}


def test_components_come_from_the_package(registry):
    focal, rlw = registry.get("losses", "focal"), registry.get("gradient_methods", "rlw")
    assert (focal.package, focal.plugin) == (PACKAGE, "mtbert_focal.losses")
    assert (rlw.package, rlw.plugin) == (PACKAGE, "mtbert_focal.gradients")
    assert focal.description.startswith("Focal loss")


def test_built_through_the_registry(registry):
    loss = make(registry, structure_component("losses", {"name": "focal", "gamma": 2.0}, registry),
                LabelSpec("multiclass", 2))
    assert isinstance(loss, FocalLoss)
    value = loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
    assert value.item() == pytest.approx(0.25 * 0.69314718, abs=1e-7)  # (1/2)^2 ln 2
    method = make(registry, structure_component("gradient_methods", "rlw", registry))
    assert isinstance(method, RandomLossWeighting) and method.options.total == "tasks"


def test_without_installing_build_registry_takes_modules():
    reg = build_registry(entry_points=[], modules=[("mtbert_focal.losses", mtbert_focal.losses, "local"),
                                                   ("mtbert_focal.gradients", mtbert_focal.gradients, "local")])
    assert reg.names("losses") == ["focal"] and reg.names("gradient_methods") == ["rlw"]
    assert reg.get("losses", "focal").package == "local" and not reg.failures


def test_options_are_checked_with_paths(registry):
    with pytest.raises(SpecError) as err:
        structure_component("losses", {"name": "focal", "gama": 1.0}, registry, "tasks.sst.loss")
    assert err.value.problems == [("tasks.sst.loss.gama", 'unknown key (did you mean "gamma"?); known keys: gamma')]
    with pytest.raises(SpecError) as err:
        structure_component("losses", {"name": "focal", "gamma": -1}, registry, "tasks.sst.loss")
    assert err.value.problems == [("tasks.sst.loss.gamma", "must be >= 0.0, got -1.0")]
    with pytest.raises(SpecError) as err:
        structure_component("gradient_methods", {"name": "rlw", "total": "all"}, registry, "gradient")
    assert err.value.problems[0][0] == "gradient.total"


def spec_data(**changes):
    data = {
        "data": {"dir": "nowhere"},
        "tasks": {
            "sst": {"data": {"train": "sst.tsv"}, "head": {"name": "classifier", "num_labels": 5},
                    "loss": "focal", "metrics": ["accuracy"]},
            "sts": {"data": {"train": "sts.tsv", "text_pair": "s2"}, "head": "regression",
                    "loss": "mse", "metrics": ["pearson"]},
        },
    }
    data.update(changes)
    return data


def test_validation_uses_the_class_attributes(registry):
    ok = structure_spec(spec_data(sampler="all_tasks", gradient="rlw"), registry, check_files=False)
    assert ok.gradient.name == "rlw" and ok.tasks["sst"].loss.options.gamma == 2.0
    # needs_all_tasks = True with a one-task-per-step sampler: the step contract
    with pytest.raises(SpecError) as err:
        structure_spec(spec_data(sampler="round_robin", gradient="rlw"), registry, check_files=False)
    assert [p for p, _ in err.value.problems] == ["gradient"] and "all_tasks" in err.value.problems[0][1]
    # accepts = {multiclass, binary}: not for a regression head
    bad = spec_data(sampler="all_tasks")
    bad["tasks"]["sts"]["loss"] = "focal"
    with pytest.raises(SpecError) as err:
        structure_spec(bad, registry, check_files=False)
    assert [p for p, _ in err.value.problems] == ["tasks.sts.loss"]
    assert "binary, multiclass" in err.value.problems[0][1]
