"""Samplers: step order, draw probabilities, annealing, epoch lengths, determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from mtbert.model.build import make
from mtbert.base.errors import SpecError
from mtbert.plugin.interfaces import SamplerContext
from mtbert.config.spec import structure_component

# Spec order deliberately not alphabetical: samplers must follow it.
SIZES = {"sts": 100, "sst": 300, "para": 600}
BATCHES = {"sts": 4, "sst": 10, "para": 19}


def context(sizes=SIZES, batches=BATCHES, epochs=3, seed=11) -> SamplerContext:
    return SamplerContext(dict(sizes), dict(batches), epochs, seed)


def sampler(registry, value, ctx=None):
    return make(registry, structure_component("samplers", value, registry), ctx or context())


def frequencies(plan) -> dict[str, float]:
    counts = Counter(step[0] for step in plan)
    return {t: c / len(plan) for t, c in counts.items()}


# -- round_robin ---------------------------------------------------------------------------

def test_round_robin_cycles_in_spec_order(registry):
    s = sampler(registry, "round_robin")
    assert s.one_task_per_step is True
    # default: T x (batches of the largest task) = 3 x 19
    assert s.steps_per_epoch() == 57
    plan = s.plan(1)
    assert len(plan) == 57
    assert plan[:7] == [["sts"], ["sst"], ["para"], ["sts"], ["sst"], ["para"], ["sts"]]
    assert all(step == [["sts", "sst", "para"][i % 3]] for i, step in enumerate(plan))
    # every task gets the same number of steps: 19 each
    assert Counter(step[0] for step in plan) == {"sts": 19, "sst": 19, "para": 19}


def test_round_robin_steps_per_epoch_option(registry):
    s = sampler(registry, {"name": "round_robin", "steps_per_epoch": 5})
    assert s.steps_per_epoch() == 5
    assert s.plan(2) == [["sts"], ["sst"], ["para"], ["sts"], ["sst"]]


def test_round_robin_is_the_same_every_epoch(registry):
    s = sampler(registry, "round_robin")
    assert s.plan(1) == s.plan(2) == sampler(registry, "round_robin").plan(1)


# -- proportional / temperature --------------------------------------------------------------

def test_proportional_default_length_is_sum_of_batches(registry):
    s = sampler(registry, "proportional")
    assert s.one_task_per_step is True
    assert s.steps_per_epoch() == 4 + 10 + 19
    plan = s.plan(1)
    assert len(plan) == 33
    assert all(len(step) == 1 and step[0] in SIZES for step in plan)


def test_proportional_frequencies_match_sizes(registry):
    s = sampler(registry, {"name": "proportional", "steps_per_epoch": 20000})
    # p_t = N_t / sum N = 100/1000, 300/1000, 600/1000 (std of each estimate < 0.004)
    freq = frequencies(s.plan(1))
    for task, p in {"sts": 0.1, "sst": 0.3, "para": 0.6}.items():
        assert freq[task] == pytest.approx(p, abs=0.02)


def test_temperature_exponent_is_inverse_temperature(registry):
    sizes = {"a": 100, "b": 400, "c": 1600}
    s = sampler(registry, {"name": "temperature", "temperature": 2.0, "steps_per_epoch": 20000},
                context(sizes, {"a": 1, "b": 1, "c": 1}))
    # N^(1/2) = 10, 20, 40 -> p = 1/7, 2/7, 4/7
    assert s.exponent(1) == pytest.approx(0.5)
    weights = s.weights(1)
    assert weights == pytest.approx({"a": 10.0, "b": 20.0, "c": 40.0})
    freq = frequencies(s.plan(1))
    for task, p in {"a": 1 / 7, "b": 2 / 7, "c": 4 / 7}.items():
        assert freq[task] == pytest.approx(p, abs=0.02)


def test_temperature_one_is_proportional(registry):
    s = sampler(registry, {"name": "temperature", "temperature": 1.0})
    assert s.weights(1) == pytest.approx({"sts": 100.0, "sst": 300.0, "para": 600.0})


def test_temperature_must_be_positive(registry):
    with pytest.raises(SpecError, match=r"samplers\.temperature"):
        structure_component("samplers", {"name": "temperature", "temperature": 0.0}, registry)


# -- annealed ------------------------------------------------------------------------------

ANNEAL_SIZES = {"a": 1, "b": 32, "c": 1024}  # 32 = 2^5, 1024 = 2^10: powers stay integers


def test_annealed_alpha_schedule(registry):
    s = sampler(registry, "annealed", context(ANNEAL_SIZES, {"a": 1, "b": 1, "c": 1}, epochs=5))
    # alpha = 1 - 0.8 (e - 1) / (E - 1), E = 5
    for epoch, alpha in {1: 1.0, 2: 0.8, 3: 0.6, 4: 0.4, 5: 0.2}.items():
        assert s.exponent(epoch) == pytest.approx(alpha)
    # e = 1: proportional to N_t
    assert s.weights(1) == pytest.approx({"a": 1.0, "b": 32.0, "c": 1024.0})
    # e = 3: N^0.6 -> 1, 2^3, 2^6
    assert s.weights(3) == pytest.approx({"a": 1.0, "b": 8.0, "c": 64.0})
    # e = E: N^0.2 -> 1, 2, 4
    assert s.weights(5) == pytest.approx({"a": 1.0, "b": 2.0, "c": 4.0})


def test_annealed_single_epoch_is_proportional(registry):
    s = sampler(registry, "annealed", context(ANNEAL_SIZES, {"a": 1, "b": 1, "c": 1}, epochs=1))
    assert s.exponent(1) == 1.0
    assert s.weights(1) == pytest.approx({"a": 1.0, "b": 32.0, "c": 1024.0})


def test_annealed_last_epoch_frequencies(registry):
    s = sampler(registry, {"name": "annealed", "steps_per_epoch": 20000},
                context(ANNEAL_SIZES, {"a": 1, "b": 1, "c": 1}, epochs=5))
    freq = frequencies(s.plan(5))
    # weights 1, 2, 4 -> 1/7, 2/7, 4/7
    for task, p in {"a": 1 / 7, "b": 2 / 7, "c": 4 / 7}.items():
        assert freq.get(task, 0.0) == pytest.approx(p, abs=0.02)
    # first epoch: 1/1057, 32/1057, 1024/1057
    freq = frequencies(s.plan(1))
    assert freq["c"] == pytest.approx(1024 / 1057, abs=0.02)


def test_annealed_final_alpha_option(registry):
    s = sampler(registry, {"name": "annealed", "final_alpha": 0.0},
                context(ANNEAL_SIZES, {"a": 1, "b": 1, "c": 1}, epochs=3))
    # alpha = 1 - (1 - 0) (e - 1) / 2 : 1, 0.5, 0 -> the last epoch is uniform
    assert s.exponent(2) == pytest.approx(0.5)
    assert s.weights(3) == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})
    assert s.weights(2) == pytest.approx({"a": 1.0, "b": 32 ** 0.5, "c": 32.0})


# -- all_tasks -----------------------------------------------------------------------------

def test_all_tasks_every_task_every_step(registry):
    s = sampler(registry, "all_tasks")
    assert s.one_task_per_step is False
    assert s.steps_per_epoch() == 19  # the largest task's batches
    plan = s.plan(1)
    assert len(plan) == 19
    assert all(step == ["sts", "sst", "para"] for step in plan)
    # steps are independent lists (mutating one must not change the others)
    assert plan[0] is not plan[1]


def test_all_tasks_steps_per_epoch_option(registry):
    s = sampler(registry, {"name": "all_tasks", "steps_per_epoch": 4})
    assert s.steps_per_epoch() == 4
    assert s.plan(3) == [["sts", "sst", "para"]] * 4


# -- proportional_joint ---------------------------------------------------------------------

def test_proportional_joint_gives_each_task_its_single_pass(registry):
    s = sampler(registry, "proportional_joint")
    assert s.one_task_per_step is False
    assert s.steps_per_epoch() == 19  # the largest task's batches
    for epoch in (1, 2, 3):
        plan = s.plan(epoch)
        assert len(plan) == 19
        # each task joins exactly as many steps as it has batches: one pass over it per epoch
        assert Counter(t for step in plan for t in step) == BATCHES
        # the largest task is in every step, so no step is empty; within a step, the spec's order
        assert all(step[-1] == "para" for step in plan)
        assert all(step == [t for t in SIZES if t in step] for step in plan)
    # the positions are drawn: other steps hold the small tasks in another epoch or seed
    assert s.plan(1) != s.plan(2)
    assert sampler(registry, "proportional_joint", context(seed=12)).plan(1) != s.plan(1)


def test_proportional_joint_spreads_a_task_uniformly(registry):
    # over many epochs, each step position holds task t in batches_t / steps of the epochs
    s = sampler(registry, "proportional_joint", context(batches={"a": 5, "b": 20}, sizes={"a": 5, "b": 20}))
    epochs = 400
    hits = [0] * 20
    for epoch in range(1, epochs + 1):
        for i, step in enumerate(s.plan(epoch)):
            hits[i] += "a" in step
    # p = 5/20 per position; the std of each frequency over 400 epochs is 0.022
    assert all(abs(h / epochs - 0.25) < 0.1 for h in hits)


@pytest.mark.parametrize("name", ["round_robin", "proportional", "temperature", "annealed", "all_tasks"])
def test_steps_per_epoch_must_be_positive(registry, name):
    with pytest.raises(SpecError, match=r"samplers\.steps_per_epoch"):
        structure_component("samplers", {"name": name, "steps_per_epoch": 0}, registry)


# -- determinism ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["round_robin", "proportional", "temperature", "annealed", "all_tasks",
                                  "proportional_joint"])
def test_plan_is_a_pure_function_of_config_context_epoch(registry, name):
    first = sampler(registry, name)
    again = sampler(registry, name)  # a fresh object, as a resumed run builds
    assert first.plan(2) == again.plan(2)
    assert first.plan(2) == first.plan(2)
    # the epoch plan does not depend on which epochs were planned before
    first.plan(1)
    assert first.plan(2) == again.plan(2)


@pytest.mark.parametrize("name", ["proportional", "temperature", "annealed"])
def test_random_plans_differ_between_epochs_and_seeds(registry, name):
    value = {"name": name, "steps_per_epoch": 200}
    s = sampler(registry, value)
    assert s.plan(1) != s.plan(2)
    assert s.plan(2) != s.plan(3)
    assert sampler(registry, value, context(seed=12)).plan(1) != s.plan(1)
    # every task still appears (p >= 0.1 over 200 steps)
    assert {step[0] for step in s.plan(1)} == set(SIZES)
