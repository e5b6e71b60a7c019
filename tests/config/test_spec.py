"""The spec: structuring, every error with its path, overrides, precedence, round trip."""

from __future__ import annotations

import attrs
import pytest

from mtbert.base.errors import SpecError
from mtbert.config.spec import (apply_override, dump_spec, load_spec, parse_override, structure_spec)
from mtbert.plugin.structure import Structurer, at_least, probability

from helpers import TINY_ENCODER



def make_data(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "train.tsv").write_text("id\tsentence\tlabel\na\tgood\t1\nb\tbad\t0\n")
    (tmp_path / "pairs.tsv").write_text("id\ts1\ts2\tscore\na\tx\ty\t1.5\n")
    return tmp_path


def spec_data(data_dir) -> dict:
    return {
        "name": "t",
        "encoder": dict(TINY_ENCODER),
        "data": {"dir": str(data_dir)},
        "tasks": {
            "sent": {"data": {"train": "train.tsv", "dev": "train.tsv"},
                     "head": {"name": "classifier", "num_labels": 2}, "loss": "cross_entropy",
                     "metrics": ["accuracy"]},
            "sim": {"data": {"train": "pairs.tsv", "text": "s1", "text_pair": "s2", "label": "score"},
                    "head": "regression", "loss": "mse", "metrics": ["pearson"]},
        },
    }


def problems(excinfo) -> dict[str, str]:
    return dict(excinfo.value.problems)


def test_valid_spec_fills_defaults(registry, tmp_path):
    spec = structure_spec(spec_data(make_data(tmp_path)), registry)
    assert spec.sampler.name == "round_robin" and spec.gradient.name == "sum"
    assert spec.tasks["sent"].head.options.num_labels == 2
    assert spec.tasks["sent"].head.options.dropout == 0.1  # the plugin's default
    assert spec.train.lr == 2e-5
    from mtbert.config.phases import resolve_phases
    assert [(p.epochs, p.steps, p.tasks) for p in resolve_phases(spec)] == [(3, None, ["sent", "sim"])]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.train.lr = 1.0


def test_every_problem_reported_at_once_with_paths(registry, tmp_path):
    data = spec_data(make_data(tmp_path))
    data["tasks"]["sent"]["head"]["dropout"] = "high"
    data["tasks"]["sent"]["loss"] = "cross_entropyy"
    data["tasks"]["sim"]["data"]["dev"] = "missing.tsv"
    data["train"] = {"epoch": 3, "batch_size": 0}
    with pytest.raises(SpecError) as excinfo:
        structure_spec(data, registry)
    found = problems(excinfo)
    assert found["tasks.sent.head.dropout"] == 'expected float, got "high"'
    assert 'did you mean "cross_entropy"' in found["tasks.sent.loss"]
    assert found["tasks.sent.loss"].startswith('unknown loss "cross_entropyy"')
    assert "known: bce, " in found["tasks.sent.loss"] and ", cross_entropy, " in found["tasks.sent.loss"]
    assert "not found" in found["tasks.sim.data.dev"] and "missing.tsv" in found["tasks.sim.data.dev"]
    assert 'did you mean "epochs"' in found["train.epoch"]
    assert found["train.batch_size"] == "must be >= 1, got 0"
    assert len(found) == 5


def test_missing_required_and_wrong_table(registry, tmp_path):
    data = spec_data(make_data(tmp_path))
    del data["tasks"]["sent"]["head"]["num_labels"]
    data["tasks"]["sim"]["metrics"] = "pearson"
    with pytest.raises(SpecError) as excinfo:
        structure_spec(data, registry)
    found = problems(excinfo)
    assert found["tasks.sent.head.num_labels"] == "required (int) but missing"
    assert found["tasks.sim.metrics"] == 'expected a list, got "pearson"'


def test_head_loss_and_metric_kinds_must_agree(registry, tmp_path):
    data = spec_data(make_data(tmp_path))
    data["tasks"]["sim"]["loss"] = "cross_entropy"
    data["tasks"]["sim"]["metrics"] = ["pearson", "accuracy"]
    with pytest.raises(SpecError) as excinfo:
        structure_spec(data, registry)
    found = problems(excinfo)
    assert "regression outputs" in found["tasks.sim.loss"]
    assert "tasks.sim.metrics[1]" in found and "pearson" not in found.get("tasks.sim.metrics[0]", "")


def test_data_dir_must_exist(registry, tmp_path):
    data = spec_data(tmp_path / "nowhere")
    with pytest.raises(SpecError) as excinfo:
        structure_spec(data, registry)
    assert "not found" in problems(excinfo)["data.dir"]


def test_step_contract_enforced(registry, tmp_path):
    """A gradient method that needs every task per step refuses a one-task sampler."""
    import types
    from mtbert.plugin.hookspecs import hookimpl
    from mtbert.plugin.interfaces import GradientMethod
    from mtbert.plugin.loading import build_registry

    class Joint(GradientMethod):
        """needs all tasks"""
        needs_all_tasks = True

    module = types.ModuleType("joint_plugin")
    module.register_gradient_methods = hookimpl(lambda register: register("joint", Joint))
    reg = build_registry(modules=[("joint_plugin", module, "test")])
    data = spec_data(make_data(tmp_path))
    data["gradient"] = "joint"
    with pytest.raises(SpecError) as excinfo:
        structure_spec(data, reg)
    message = problems(excinfo)["gradient"]
    assert "one task per step" in message and 'sampler = "all_tasks"' in message
    data["sampler"] = "all_tasks"
    assert structure_spec(data, reg).gradient.name == "joint"


def test_overrides_parse_toml_values():
    assert parse_override("train.lr=2e-5") == (["train", "lr"], 2e-5)
    assert parse_override("train.length_buckets=false") == (["train", "length_buckets"], False)
    assert parse_override("tasks.sts.loss.name=mse") == (["tasks", "sts", "loss", "name"], "mse")
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    with pytest.raises(SpecError):
        parse_override("train.lr")


def test_override_turns_component_name_into_table():
    data = {"tasks": {"sts": {"loss": "pearson"}}}
    apply_override(data, ["tasks", "sts", "loss", "name"], "mse")
    assert data["tasks"]["sts"]["loss"] == {"name": "mse"}
    apply_override(data, ["train", "lr"], 1e-3)
    assert data["train"] == {"lr": 1e-3}
    data["phases"] = [{"epochs": 1}, {"epochs": 3}]
    apply_override(data, ["phases", "1", "epochs"], 2)
    assert data["phases"] == [{"epochs": 1}, {"epochs": 2}]
    with pytest.raises(SpecError, match="no item 2 in a list of 2"):
        apply_override(data, ["phases", "2", "epochs"], 2)
    with pytest.raises(SpecError, match="cannot set a key inside it"):
        apply_override(data, ["train", "lr", "x"], 2)


def test_precedence_file_env_set(registry, tmp_path):
    import tomli_w

    good = make_data(tmp_path / "good")
    data = spec_data(tmp_path / "elsewhere")  # the file's dir does not exist
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(SpecError):
        load_spec(path, registry, env={})
    spec = load_spec(path, registry, env={"MTBERT_DATA": str(good)})
    assert spec.data.dir == str(good)
    spec = load_spec(path, registry, overrides=(f"data.dir={good}", "train.lr=2e-5",
                                                "tasks.sim.loss.name=mse"),
                     env={"MTBERT_DATA": str(tmp_path / "wrong")})
    assert spec.data.dir == str(good) and spec.train.lr == 2e-5


def test_bad_toml_and_missing_file(registry, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(bad, registry, env={})
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "none.toml", registry, env={})


def test_resolved_spec_round_trips(registry, tmp_path):
    import tomllib

    spec = structure_spec(spec_data(make_data(tmp_path)), registry)
    text = dump_spec(spec)
    assert 'num_labels = 2' in text and 'dropout = 0.1' in text
    assert structure_spec(tomllib.loads(text), registry) == spec


@attrs.frozen
class Inner:
    rate: float = attrs.field(default=0.1, validator=probability)
    mode: str = "a"


@attrs.frozen
class Outer:
    count: int = attrs.field(validator=at_least(1))
    inner: Inner = attrs.Factory(Inner)
    names: list[str] = attrs.Factory(list)
    pair: tuple[float, float] = (0.0, 1.0)
    table: dict[str, int] = attrs.Factory(dict)


@pytest.mark.parametrize("value, path, message", [
    ({"count": True}, "count", "expected int, got true"),
    ({"count": 1.5}, "count", "expected int, got 1.5"),
    ({"count": 0}, "count", "must be >= 1, got 0"),
    ({"count": 1, "inner": {"rate": 1.0}}, "inner.rate", "must be in [0, 1), got 1.0"),
    ({"count": 1, "inner": {"rate": float("nan")}}, "inner.rate", "expected a finite number, got nan"),
    ({"count": 1, "names": ["a", 2]}, "names[1]", "expected str, got 2"),
    ({"count": 1, "pair": [1.0]}, "pair", "expected a list of 2 items, got 1"),
    ({"count": 1, "table": {"k": "v"}}, "table.k", 'expected int, got "v"'),
    ({"count": 1, "inner": 3}, "inner", "expected a table, got 3"),
])
def test_structurer_messages(value, path, message):
    structurer = Structurer()
    assert structurer.structure(Outer, value) is None
    assert structurer.problems == [(path, message)]


def test_structurer_accepts_ints_for_floats():
    structurer = Structurer()
    out = structurer.structure(Outer, {"count": 2, "pair": [0, 1], "inner": {"rate": 0}})
    assert out == Outer(count=2, pair=(0.0, 1.0), inner=Inner(rate=0.0))
    assert isinstance(out.pair[0], float)


def test_a_method_that_draws_nothing_has_no_seed_and_older_specs_still_load(registry):
    """CAGrad, MGDA, IMTL-G, Nash-MTL, Aligned-MTL and DB-MTL draw nothing: no seed option and no
    generator; a spec written when they had one (seed = 0) still loads (the key is retired, ignored).
    PCGrad draws its order: it keeps its seed."""
    import attrs
    from mtbert.model.build import make
    from mtbert.config.spec import structure_component

    for name in ("cagrad", "mgda", "imtl", "nash_mtl", "aligned_mtl", "db_mtl"):
        component = structure_component("gradients", {"name": name, "seed": 0}, registry)
        assert "seed" not in attrs.fields_dict(type(component.options)), name
        assert make(registry, component).generator is None, name
    with pytest.raises(SpecError):  # an unknown key is still an error
        structure_component("gradients", {"name": "cagrad", "sed": 0}, registry)
    pcgrad = make(registry, structure_component("gradients", {"name": "pcgrad", "seed": 4}, registry))
    assert pcgrad.generator is not None


@pytest.mark.parametrize("name, expected", [
    ("../../x", "is not a folder name"), ("/abs", "is not a folder name"), ("a/b", "is not a folder name"),
    ("..", "is not a folder name"), ("", "name is empty"), ("  ", "name is empty"), ("a\nb", "control characters"),
])
def test_run_names_that_are_not_one_folder_are_refused(registry, tmp_path, name, expected):
    """The run goes to <out>/<name>: a name may not climb out of out or be empty."""
    data = spec_data(make_data(tmp_path))
    data["name"] = name
    with pytest.raises(SpecError) as excinfo:
        structure_spec(data, registry)
    assert expected in problems(excinfo)["name"]


def test_max_length_above_the_encoders_positions_is_refused(registry, tmp_path):
    data = spec_data(make_data(tmp_path))
    data["data"]["max_length"] = 100_000
    with pytest.raises(SpecError) as excinfo:
        structure_spec(data, registry)
    assert problems(excinfo)["data.max_length"] == ('100000 tokens, but encoder "minbert" takes at most 512; '
                                                     'set data.max_length = 512 or less')
    data["data"]["max_length"] = 512
    assert structure_spec(data, registry).data.max_length == 512
