"""The search space of mtbert tune: every problem named at its place, values set by path, each
parameter's every corner tried in the spec before a trial trains."""

from __future__ import annotations

import pytest

from mtbert.base.errors import SpecError
from mtbert.tune.settings import load_study, parse_settings
from mtbert.tune.space import label

from helpers import tune_files

TOML_SPACE = '''
trials = 4
[params."train.lr"]
type = "float"
low = 1e-4
high = 1e-2
log = true
[params.sampler]
type = "choice"
values = ["round_robin", "all_tasks"]
[params.gradient]
type = "choice"
values = ["sum", { name = "cagrad", c = 0.4 }]
[params."gradient.c"]
type = "float"
low = 0.1
high = 0.9
when = { gradient = "cagrad" }
'''


def problems(raw, tasks=("sent", "count")) -> dict:
    with pytest.raises(SpecError) as caught:
        parse_settings(raw, tasks)
    return dict(caught.value.problems)


def test_each_wrong_parameter_is_named_at_its_place():
    found = problems({"trials": 0, "sampler": "bayes", "objectives": ["sent", "nope"], "extra": 1, "params": {
        "train.lr": {"type": "float", "low": 1e-2, "high": 1e-4},
        "tasks.sent.weight": {"type": "float", "low": 0.0, "high": 2.0, "log": True},
        "train.steps": {"type": "int", "low": 1.5, "high": 3},
        "sampler": {"type": "choice", "values": []},
        "gradient.c": {"type": "float", "low": 0.1, "high": 0.9, "when": {"gradient": "cagrad"}},
        "seed": {"type": "range"},
    }})
    assert found["tune.trials"] == "expected an integer >= 1, got 0"
    assert "expected one of tpe, random, grid, nsga2" in found["tune.sampler"]
    assert "'nope' is neither \"overall\" nor a task" in found["tune.objectives"]
    assert "unknown key" in found["tune.extra"]
    assert found['tune.params."train.lr".high'] == "must be greater than low (0.01), got 0.0001"
    assert "a log scale needs low > 0" in found['tune.params."tasks.sent.weight".low']
    assert "expected an integer" in found['tune.params."train.steps".low']
    assert "non-empty list" in found['tune.params."sampler".values']
    assert "'gradient' is not a parameter given before this one" in found['tune.params."gradient.c".when']
    assert "expected one of float, int, choice" in found['tune.params."seed".type']


def test_pruning_needs_one_objective_and_the_grid_discrete_values():
    found = problems({"objectives": ["sent", "count"], "pruner": "median",
                      "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "sampler": "grid"})
    assert "with several objectives" in found["tune.pruner"]
    assert "give each float a step" in found["tune.sampler"]
    settings = parse_settings({"objectives": "sent,count", "params": {"train.lr": {
        "type": "float", "low": 0.1, "high": 0.3, "step": 0.1}}, "sampler": "grid"}, ("sent", "count"))
    assert settings.pruner == "none" and settings.objectives == ("sent", "count")
    assert settings.space.grid() == {"train.lr": pytest.approx([0.1, 0.2, 0.3])}


def test_a_condition_names_an_earlier_choice_and_one_of_its_labels():
    found = problems({"params": {
        "gradient": {"type": "choice", "values": ["sum", {"name": "pcgrad"}]},
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2},
        "gradient.c": {"type": "float", "low": 0.1, "high": 0.9, "when": {"gradient": "cagrad"}},
        "train.steps": {"type": "int", "low": 1, "high": 3, "when": {"train.lr": 1e-3}}}})
    assert "draws one of ['sum', 'pcgrad'], never 'cagrad'" in found['tune.params."gradient.c".when']
    assert "only a choice can condition" in found['tune.params."train.steps".when']


def test_choices_are_labelled_by_component_name_or_by_their_options_when_names_repeat():
    assert label({"name": "cagrad", "c": 0.4}, [{"name": "cagrad", "c": 0.4}, "sum"]) == "cagrad"
    twins = [{"name": "cagrad", "c": 0.4}, {"name": "cagrad", "c": 0.8}]
    assert label(twins[1], twins) == '{"c":0.8,"name":"cagrad"}'
    assert label(3, [3, 4]) == 3 and label("sum", ["sum"]) == "sum"  # what Optuna stores as it is
    assert label([1, 2], [[1, 2]]) == "[1,2]"


class FixedTrial:
    """Draws what it is told, as an Optuna trial would (the space's only contact with Optuna)."""

    def __init__(self, **chosen):
        self.chosen = chosen

    def suggest_categorical(self, name, labels):
        assert self.chosen[name] in labels
        return self.chosen[name]

    def suggest_float(self, name, low, high, step=None, log=False):
        assert low <= self.chosen[name] <= high
        return self.chosen[name]

    suggest_int = suggest_float


def test_drawn_values_are_set_by_path_in_order_and_conditions_decide_what_is_drawn():
    import tomllib

    space = parse_settings(tomllib.loads(TOML_SPACE), ("sent", "count")).space
    values, drawn = space.sample(FixedTrial(**{"train.lr": 1e-3, "sampler": "all_tasks", "gradient": "cagrad",
                                               "gradient.c": 0.7}))
    data = space.apply({"gradient": "sum", "train": {"lr": 2e-5}}, values)
    assert data["gradient"] == {"name": "cagrad", "c": 0.7}  # the component drawn, then its option set inside
    assert data["train"]["lr"] == 1e-3 and data["sampler"] == "all_tasks"
    values, drawn = space.sample(FixedTrial(**{"train.lr": 1e-3, "sampler": "round_robin", "gradient": "sum"}))
    assert "gradient.c" not in values and drawn["gradient"] == "sum"  # its condition does not hold


def test_every_corner_is_tried_in_the_spec_before_any_trial(registry, tmp_path):
    spec, space = tune_files(tmp_path, registry, TOML_SPACE.replace('"all_tasks"', '"proportional"')
                             + '[params."train.lrr"]\ntype = "float"\nlow = 0.1\nhigh = 0.2\n'
                             + '[params."train.batch_size"]\ntype = "int"\nlow = 0\nhigh = 4\n', steps=4)
    with pytest.raises(SpecError) as caught:
        load_study(spec, space, registry)
    found = caught.value.problems
    assert caught.value.source == str(space)
    assert any(place == 'params."train.lrr" = 0.1' and "lrr" in message for place, message in found)
    assert any(place == 'params."train.batch_size" = 0' and "train.batch_size" in message for place, message in found)
    # cagrad needs a sampler of several tasks a step; no sampler in the space gives one
    assert any(place == 'params."gradient" = cagrad' and "draws one task per step" in message
               for place, message in found)


def test_a_value_valid_beside_another_choice_passes(registry, tmp_path):
    """cagrad with round_robin is invalid, with all_tasks valid: the space is fine, the trial that draws
    the unfit pair fails with its reason."""
    spec, space = tune_files(tmp_path, registry, TOML_SPACE, steps=4)
    study = load_study(spec, space, registry)
    assert [p.path for p in study.settings.space.params] == ["train.lr", "sampler", "gradient", "gradient.c"]


def test_a_tune_table_in_the_spec_is_the_space_and_a_run_ignores_it(registry, tmp_path):
    from mtbert.config.spec import load_spec

    spec, _ = tune_files(tmp_path, registry, None, steps=4)
    spec.write_text(spec.read_text() + "\n[tune]\ntrials = 2\n[tune.params.\"train.lr\"]\ntype = \"float\"\n"
                    "low = 0.001\nhigh = 0.01\n")
    assert load_study(spec, None, registry, options={"parallel": 3}).settings.parallel == 3
    assert load_spec(spec, registry).train.steps == 4  # mtbert run / validate take the spec alone
    bare, _ = tune_files(tmp_path / "bare", registry, None, steps=4)
    with pytest.raises(SpecError, match="no search space"):
        load_study(bare, None, registry)


def test_the_shipped_space_fits_the_baseline(registry, data_dir):
    from helpers import ROOT

    study = load_study(ROOT / "examples" / "baseline.toml", ROOT / "examples" / "tune" / "space.toml", registry,
                       env={"MTBERT_DATA": str(data_dir)})
    assert study.settings.trials == 20 and study.name == "baseline"
    assert [p.path for p in study.settings.space.params][-1] == "gradient.c"
