"""One vocabulary, and plugins written against the first names still load and run.

The kind of gradient methods is ``gradients`` everywhere (hook ``register_gradients``, folder
plugins/gradients/, entry points gradients.*, spec key ``gradient``); a balancer's hook after the
update is ``after_step`` (a regularizer's name for the same moment); ``register(..., options=)``;
capabilities are class attributes. The first names keep working.
"""

from __future__ import annotations

import types

import attrs
import pytest
import torch

from mtbert.config.spec import structure_component
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Balancer, GradientMethod
from mtbert.plugin.loading import build_registry
from mtbert.plugin.making import call, make


@attrs.frozen
class Options:
    scale: float = 1.0


class Summing(GradientMethod):
    """A gradient method registered through the first hook name."""

    def __init__(self, options=None):
        self.options = options


class OldBalancer:
    """A balancer written before the rename: step_end, not after_step, and no base class."""

    def __init__(self, options=None):
        self.seen = []

    def setup(self, tasks, context): ...
    def weigh(self, losses): return losses
    def step_end(self, losses): self.seen.append(losses)
    def epoch_end(self, epoch, losses): ...
    def evaluation_end(self, record): ...
    def stats(self): return {}
    def parameters(self): return iter(())
    def state_dict(self): return {}
    def load_state_dict(self, state): ...


class Derived(Balancer):
    """A subclass of the base that overrides the first name."""

    def weigh(self, losses):
        return losses

    def step_end(self, losses):
        self.last = losses


def build_old_encoder(options):
    """an encoder factory function with a capability set on it, the first way"""


build_old_encoder.layer_slots = True


def old_plugin():
    module = types.ModuleType("old_plugin")
    module.register_gradient_methods = hookimpl(lambda register: register("summing", Summing, config=Options))
    module.register_balancers = hookimpl(lambda register: (register("old", OldBalancer),
                                                           register("derived", Derived)))
    module.register_encoders = hookimpl(lambda register: register("old", build_old_encoder))
    return build_registry(modules=[("old_plugin", module, "old-package")])


def test_the_first_hook_name_registers_into_gradients_and_the_old_kind_name_answers():
    registry = old_plugin()
    assert not registry.failures, registry.failures
    entry = registry.get("gradients", "summing")
    assert registry.get("gradient_methods", "summing") is entry and entry.options is Options
    assert entry.config is Options  # the first name of the field
    component = structure_component("gradient_methods", {"name": "summing", "scale": 2.0}, registry)
    assert component.kind == "gradients" and make(registry, component).options == Options(2.0)
    assert "summing" in registry.names("gradient_methods") and "pcgrad" in registry.names("gradients")


def test_a_balancer_with_only_step_end_meets_the_interface_and_is_called_after_the_step():
    registry = old_plugin()
    old = make(registry, structure_component("balancers", "old", registry))
    losses = {"a": torch.tensor(1.0)}
    call(old, "after_step", losses)
    assert old.seen == [losses]
    derived = make(registry, structure_component("balancers", "derived", registry))
    derived.after_step(losses)  # the base class's after_step calls the override of the first name
    assert derived.last is losses


def test_capabilities_are_read_from_classes_and_from_first_way_function_attributes(registry):
    assert registry.get("encoders", "minbert").capability("has_layer_slots") is True
    slots = registry.get("encoders", "hf").capability("has_layer_slots")  # depends on the model: a function
    assert callable(slots) and slots(registry.get("encoders", "hf").options(config={"model_type": "bert"})) is True
    assert registry.get("adapters", "pals").capability("needs_layer_slots") is True
    assert registry.get("adapters", "lora").capability("mergeable") is True
    assert registry.get("encoders", "minbert").capability("no_such_thing", "default") == "default"
    assert old_plugin().get("encoders", "old").capability("has_layer_slots") is True


@pytest.mark.parametrize("kind", ["gradients", "gradient_methods"])
def test_unknown_names_say_gradient_method(registry, kind):
    assert registry.unknown(kind, "pcgard").startswith('unknown gradient method "pcgard" (did you mean "pcgrad"?)')
