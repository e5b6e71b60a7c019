"""Spec fuzzing: whatever a user writes, validation answers with a Spec or a SpecError.

Four sources of specs, all generated with hypothesis:

(a) random TOML documents (nested tables of random keys and values, written
    with tomli_w and read back with tomllib) fed to ``structure_spec``;
(b) the real example specs, mutated: keys deleted, renamed with typos or
    added, values replaced by other types or wrapped in lists, component
    names changed. Deleting an optional key (or changing nothing) keeps an
    example valid;
(c) random ``--set`` overrides (``parse_override`` + ``apply_override``) on
    the example specs;
(d) random bytes and text as a spec FILE through ``load_spec``.

The only allowed outcomes are a Spec or a ``SpecError`` whose problems are
non-empty (path, message) string pairs. Inputs that currently crash
validation with another exception are kept out of the random strategies
and pinned down as regression tests at the end of this file.
"""

from __future__ import annotations

import copy
import math
import os
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

import attrs
import pytest
import tomli_w
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from mtbert.base.errors import SpecError
from mtbert.config.spec import (DataSpec, PhaseSpec, Spec, TaskData, TaskSpec, TrainSpec, apply_override, dump_spec,
                         load_spec, parse_override, structure_spec)

from helpers import ROOT


EXAMPLES = {p.stem: tomllib.loads(p.read_text(encoding="utf-8")) for p in sorted((ROOT / "examples").glob("*.toml"))}

# How many specs each property tries; the sum is the number of specs fuzzed per run. MTBERT_FUZZ_SCALE=10
# multiplies them all for a deeper search (the default keeps this file at about 20 s).
SCALE = max(1, int(os.environ.get("MTBERT_FUZZ_SCALE", "1")))
MAX_EXAMPLES = {
    "random_documents": 200,
    "mutated_examples": 250,
    "set_overrides": 200,
    "set_batch_size": 60,
    "spec_file_bytes": 80,
    "spec_file_text": 100,
    "spec_file_lines": 100,
}
MAX_EXAMPLES = {name: count * SCALE for name, count in MAX_EXAMPLES.items()}
TOTAL_SPECS_FUZZED = sum(MAX_EXAMPLES.values())


def fuzz_settings(name: str):
    return settings(max_examples=MAX_EXAMPLES[name], deadline=None, database=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


# -- the registry and a data directory where every course file exists (empty) ------------------------

@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz-data")
    for spec in EXAMPLES.values():
        for task in spec.get("tasks", {}).values():
            for split in ("train", "dev", "test"):
                if split in task.get("data", {}):
                    (path / task["data"][split]).touch()
    return path


def example_data(name: str, data_dir: Path) -> dict:
    data = copy.deepcopy(EXAMPLES[name])
    data.setdefault("data", {})["dir"] = str(data_dir)
    return data


def check_outcome(fn, *args, **kwargs):
    """Run one validation: a Spec, or a SpecError with well-formed problems. Anything else fails the test."""
    try:
        result = fn(*args, **kwargs)
    except SpecError as exc:
        assert exc.problems, "a SpecError without problems"
        for problem in exc.problems:
            assert isinstance(problem, tuple) and len(problem) == 2, problem
            path, message = problem
            assert isinstance(path, str) and isinstance(message, str) and message.strip(), problem
        assert exc.render().splitlines()[0].startswith(f"{len(exc.problems)} problem(s)")
        if currently_in_test_context():
            event("SpecError")  # --hypothesis-show-statistics shows how often each outcome came up
        return exc
    assert isinstance(result, Spec), result
    if currently_in_test_context():
        event("Spec")
    return result


# -- strategies -----------------------------------------------------------------------------------

def _field_names() -> list[str]:
    names = set()
    for cls in (Spec, DataSpec, TaskData, TaskSpec, TrainSpec, PhaseSpec):
        names |= {f.name for f in attrs.fields(cls)}
    return sorted(names)


SPEC_KEYS = _field_names() + ["sst", "sts", "para", "num_labels", "dropout", "pooling", "low", "high",
                              "pretrained", "init", "weight_decay", "warmup_ratio", "delimiter", "tasks"]

# Strings stay short and never start with "~": a home-directory path of an unknown user, and a file
# name longer than the file system allows, once crashed validation (see the regression tests at the end).
short_text = st.text(max_size=12).filter(lambda s: not s.startswith("~"))
keys = st.one_of(st.sampled_from(SPEC_KEYS), short_text)


def scalars(names: list[str]):
    return st.one_of(
        short_text,
        st.sampled_from(names),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.sampled_from([0, 1, 2, -1, 3, 5, 128]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.datetimes().map(lambda d: d.replace(microsecond=0)),
        st.dates(),
    )


def toml_values(names: list[str]):
    return st.recursive(scalars(names),
                        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
                        max_leaves=12)


@pytest.fixture(scope="module")
def component_names(registry) -> list[str]:
    return sorted({name for kind in registry.kinds() for name in registry.names(kind)})


def round_trip(document: dict) -> dict:
    """What a TOML file holding ``document`` reads back as."""
    return tomllib.loads(tomli_w.dumps(document))


# -- (a) random documents ------------------------------------------------------------------------------

@fuzz_settings("random_documents")
@given(data=st.data())
def test_random_documents_give_a_spec_or_a_spec_error(registry, component_names, fuzz_dir, data):
    document = data.draw(st.dictionaries(keys, toml_values(component_names), max_size=8), label="document")
    if data.draw(st.booleans(), label="real data dir"):
        document["data"] = {"dir": str(fuzz_dir)}  # file checks then run against existing files
    check_outcome(structure_spec, round_trip(document), registry)


# -- (b) mutations of the real examples ------------------------------------------------------------------

# Keys that can go without a replacement in any example: each has a default that fits every example.
OPTIONAL = ["name", "seed", "out", "optimizer", "scheduler", "data.max_length", "train.batch_size", "train.lr",
            "train.log_every", "optimizer.weight_decay", "scheduler.warmup_ratio", "tasks.*.prediction_column",
            "tasks.*.weight", "tasks.*.data.test", "tasks.*.head.dropout", "tasks.*.head.pooling",
            "phases.*.name"]
COMPONENT_KEYS = {"encoder", "sampler", "gradient", "optimizer", "scheduler", "head", "loss", "reader",
                  "metrics", "regularizers", "adapters"}


def dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def is_optional(path: tuple) -> bool:
    return any(fnmatchcase(dotted(path), pattern) for pattern in OPTIONAL)


def paths(node, prefix: tuple = ()):
    """Every (path, value) below ``node``; a path is a tuple of keys and list indices."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,), value
        yield from paths(value, prefix + (key,))


def at(document, path: tuple):
    for key in path:
        document = document[key]
    return document


def typo(key: str) -> st.SearchStrategy[str]:
    i = st.integers(0, max(len(key) - 1, 0))
    return st.one_of(
        i.map(lambda n: key[:n] + key[n + 1:]),  # a letter dropped
        i.map(lambda n: key[:n] + key[n:n + 2][::-1] + key[n + 2:]),  # two swapped
        i.map(lambda n: key[:n] + key[n:n + 1] * 2 + key[n + 1:]),  # one doubled
        st.just(key.upper()), st.just(key + "s"), st.just(key.replace("_", "-")), short_text,
    ).filter(lambda new: new != key)


def mutate(data, document: dict, names: list[str]) -> list[tuple[str, tuple]]:
    """Apply 0-3 random mutations to ``document`` in place; returns what was done."""
    done = []
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        op = data.draw(st.sampled_from(["delete", "replace", "rename", "insert", "component", "wrap", "nothing"]))
        everything = list(paths(document))
        if op == "nothing" or not everything:
            done.append(("nothing", ()))
            continue
        if op == "insert":
            tables = [()] + [p for p, v in everything if isinstance(v, dict)]
            where = data.draw(st.sampled_from(tables))
            key = data.draw(keys.filter(lambda k, t=at(document, where): k not in t))
            at(document, where)[key] = data.draw(toml_values(names))
            done.append((op, where + (key,)))
            continue
        if op == "component":
            choices = [p for p, _ in everything if p[-1] in COMPONENT_KEYS
                       or (len(p) > 1 and isinstance(p[-1], int) and p[-2] in COMPONENT_KEYS)]
            if not choices:
                continue
            path = data.draw(st.sampled_from(choices))
            new = data.draw(st.one_of(st.sampled_from(names), short_text))
            value = at(document, path)
            if isinstance(value, dict):
                value["name"] = new
            else:
                at(document, path[:-1])[path[-1]] = new
            done.append((op, path))
            continue
        path, value = data.draw(st.sampled_from(everything))
        parent = at(document, path[:-1])
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = data.draw(toml_values(names).filter(lambda v, old=value: type(v) is not type(old)))
        elif op == "wrap":
            parent[path[-1]] = [value]
        elif op == "rename":
            if not isinstance(parent, dict):
                continue
            new = data.draw(typo(path[-1]).filter(lambda k: k not in parent))
            parent[new] = parent.pop(path[-1])
        done.append((op, path))
    return done


@fuzz_settings("mutated_examples")
@given(data=st.data())
def test_mutated_examples_give_a_spec_or_a_spec_error(registry, component_names, fuzz_dir, data):
    name = data.draw(st.sampled_from(sorted(EXAMPLES)), label="example")
    document = example_data(name, fuzz_dir)
    done = mutate(data, document, component_names)
    outcome = check_outcome(structure_spec, round_trip(document), registry)
    harmless = all(op == "nothing" or (op == "delete" and is_optional(path)) for op, path in done)
    if harmless:
        assert isinstance(outcome, Spec), (name, done, outcome)
    # The resolved spec a run saves reads back as the same spec. (Not when data.dir is left out: that
    # spec skips the directory check, its resolved form does not -- see the regression test below.)
    if isinstance(outcome, Spec) and "dir" in document.get("data", {}):
        assert structure_spec(tomllib.loads(dump_spec(outcome)), registry) == outcome


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_deleting_any_optional_key_keeps_each_example_valid(registry, fuzz_dir, name):
    """The exhaustive version of (b)'s guarantee: each optional key the example has, deleted alone."""
    base = example_data(name, fuzz_dir)
    assert isinstance(structure_spec(copy.deepcopy(base), registry), Spec)
    optional = [p for p, _ in paths(base) if is_optional(p)]
    assert optional, name  # every example has some (e.g. name, seed)
    for path in optional:
        document = copy.deepcopy(base)
        del at(document, path[:-1])[path[-1]]
        assert isinstance(check_outcome(structure_spec, document, registry), Spec), (name, path)


def test_mutations_are_caught_with_their_path(registry, fuzz_dir):
    """A few mutations with a known answer, so the property above is not vacuous."""
    document = example_data("baseline", fuzz_dir)
    document["tasks"]["sst"]["head"] = [document["tasks"]["sst"]["head"]]  # wrapped in a list
    document["train"]["batchsize"] = document["train"].pop("batch_size")  # a typo
    document["tasks"]["sts"]["loss"] = "mse_loss"  # an unknown component
    problems = dict(check_outcome(structure_spec, document, registry).problems)
    assert problems["tasks.sst.head"].startswith("expected a head name or a table")
    assert 'did you mean "batch_size"' in problems["train.batchsize"]
    assert problems["tasks.sts.loss"].startswith('unknown loss "mse_loss"')


# -- (c) random --set overrides ----------------------------------------------------------------------------

# Key segments: no "No"-category characters such as "²" -- str.isdigit() accepts them but int() does not,
# which crashes apply_override on a list (see the regression test below).
segment = st.text(st.characters(blacklist_categories=("Cs", "No"), blacklist_characters=".="), min_size=1,
                  max_size=8)


def same_type(value, names: list[str]) -> st.SearchStrategy:
    """Plausible replacements for a leaf value: what a user tuning a spec would --set."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(0, 10)
    if isinstance(value, float):
        return st.floats(0.0, 2.0)
    if isinstance(value, str):
        return st.sampled_from(names + [value])
    return st.just(value)


@st.composite
def override_texts(draw, document: dict, names: list[str]) -> str:
    leaves = [(p, v) for p, v in paths(document) if not isinstance(v, (dict, list))]
    if draw(st.booleans()):  # an existing key, a value of its type
        path, value = draw(st.sampled_from(leaves))
        return f"{dotted(path)}={tomli_w.dumps({'v': draw(same_type(value, names))})[4:].strip()}"
    existing = [dotted(p) for p, _ in paths(document)]
    key = draw(st.one_of(
        st.sampled_from(existing),
        st.tuples(st.sampled_from(existing), segment).map(".".join),
        st.lists(st.one_of(segment, st.sampled_from(SPEC_KEYS)), min_size=1, max_size=4).map(".".join),
        short_text,
    ))
    raw = draw(st.one_of(
        st.one_of(st.sampled_from(names), short_text).map(lambda s: tomli_w.dumps({"v": s})[4:].strip()),
        scalars(names).map(lambda v: tomli_w.dumps({"v": v})[4:].strip()),
        st.lists(scalars(names), max_size=3).map(lambda v: tomli_w.dumps({"v": v})[4:].strip()),
        st.sampled_from(names), st.text(max_size=20).filter(lambda s: not s.strip().startswith("~")),
        st.sampled_from(["", "[", "{", "{name = 'mse'}", "1e999"]),
    ))
    return draw(st.sampled_from([f"{key}={raw}", f"{key} = {raw}", key]))


@fuzz_settings("set_overrides")
@given(data=st.data())
def test_set_overrides_give_a_spec_or_a_spec_error(registry, component_names, fuzz_dir, data):
    name = data.draw(st.sampled_from(sorted(EXAMPLES)), label="example")
    document = example_data(name, fuzz_dir)
    texts = data.draw(st.lists(override_texts(document, component_names), min_size=1, max_size=3), label="--set")

    def validate():
        for text in texts:
            apply_override(document, *parse_override(text))
        return structure_spec(document, registry)

    check_outcome(validate)


@fuzz_settings("set_batch_size")
@given(value=st.one_of(st.integers(-5, 10**6), st.floats(), st.text(max_size=5), st.booleans()))
def test_set_batch_size_takes_exactly_the_positive_integers(registry, fuzz_dir, value):
    document = example_data("baseline", fuzz_dir)
    apply_override(document, *parse_override(f"train.batch_size={tomli_w.dumps({'v': value})[4:].strip()}"))
    outcome = check_outcome(structure_spec, document, registry)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        assert outcome.train.batch_size == value
    else:
        assert isinstance(outcome, SpecError) and [p for p, _ in outcome.problems] == ["train.batch_size"]


# -- (d) random spec files ----------------------------------------------------------------------------------

EXAMPLE_LINES = sorted({line for p in (ROOT / "examples").glob("*.toml")
                        for line in p.read_text(encoding="utf-8").splitlines()})


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-files") / "spec.toml"


@fuzz_settings("spec_file_bytes")
@given(content=st.binary(max_size=300))
@example(content=b"\xff\xfe\x00n\x00a\x00m\x00e")  # UTF-16
@example(content=b"name = \"\xc3\x28\"")  # invalid UTF-8 inside a string
@example(content=b"\x00")
def test_random_bytes_as_a_spec_file(registry, spec_file, content):
    spec_file.write_bytes(content)
    outcome = check_outcome(load_spec, spec_file, registry, env={})
    assert isinstance(outcome, SpecError)


@fuzz_settings("spec_file_text")
@given(content=st.text(max_size=300))
@example(content="")
@example(content="tasks = 1")
@example(content="[tasks.x]\ndata = { train = 1 }")
def test_random_text_as_a_spec_file(registry, spec_file, content):
    spec_file.write_bytes(content.encode("utf-8", "surrogatepass"))
    check_outcome(load_spec, spec_file, registry, env={})


@fuzz_settings("spec_file_lines")
@given(lines=st.lists(st.one_of(st.sampled_from(EXAMPLE_LINES), short_text), max_size=60))
def test_shuffled_example_lines_as_a_spec_file(registry, spec_file, fuzz_dir, lines):
    """Real example lines in random order and number: often valid TOML, rarely a valid spec."""
    spec_file.write_text("\n".join(lines), encoding="utf-8")
    check_outcome(load_spec, spec_file, registry, env={"MTBERT_DATA": str(fuzz_dir)})


def test_the_fuzz_budget():
    assert TOTAL_SPECS_FUZZED == sum(MAX_EXAMPLES.values()) >= 900
    assert len(EXAMPLES) >= 20 and len(EXAMPLE_LINES) > 100


# -- inputs that once escaped as exceptions other than SpecError (found by fuzzing; now fixed) ---------------

def test_set_with_a_superscript_digit_list_index(registry, fuzz_dir):
    document = example_data("full_then_heads", fuzz_dir)
    with pytest.raises(SpecError):
        apply_override(document, *parse_override("phases.².epochs=1"))


def test_set_with_a_deeply_nested_value(registry):
    with pytest.raises(SpecError):
        parse_override("train.lr=" + "[" * 3000 + "]" * 3000)


def test_spec_file_with_deeply_nested_arrays(registry, spec_file):
    spec_file.write_text("name = " + "[" * 3000 + "]" * 3000 + "\n", encoding="utf-8")
    with pytest.raises(SpecError):
        load_spec(spec_file, registry, env={})


@pytest.mark.parametrize("key", ["data.dir", "init_from"])
def test_home_directory_of_an_unknown_user(registry, fuzz_dir, key):
    document = example_data("baseline", fuzz_dir)
    apply_override(document, *parse_override(f"{key}=~no_such_user_mtbert/x"))
    with pytest.raises(SpecError) as info:
        structure_spec(document, registry)
    assert key in dict(info.value.problems)


@pytest.mark.parametrize("key", ["data.dir", "tasks.sst.data.dev", "init_from"])
def test_overlong_file_name(registry, fuzz_dir, key):
    document = example_data("baseline", fuzz_dir)
    apply_override(document, key.split("."), "x" * 300)
    with pytest.raises(SpecError) as info:
        structure_spec(document, registry)
    assert key in dict(info.value.problems)


def test_a_spec_without_data_dir_checks_the_default_dir(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here
    document = copy.deepcopy(EXAMPLES["baseline"])
    del document["data"]["dir"]
    explicit = copy.deepcopy(EXAMPLES["baseline"])
    explicit["data"]["dir"] = "data"  # the documented default, written out
    assert "data.dir" in dict(check_outcome(structure_spec, explicit, registry).problems)
    outcome = check_outcome(structure_spec, document, registry)
    assert isinstance(outcome, SpecError), "validated although ./data and its files do not exist"
    assert "data.dir" in dict(outcome.problems)


def test_the_same_inputs_without_the_trigger_are_spec_errors(registry, fuzz_dir):
    """Controls for the regression tests: an ordinary missing path, index and nesting give SpecErrors."""
    document = example_data("full_then_heads", fuzz_dir)
    with pytest.raises(SpecError, match="no item 7 in a list of 2"):
        apply_override(document, *parse_override("phases.7.epochs=1"))
    for key, value in [("data.dir", "no_such_dir_mtbert/x"), ("init_from", "no_such_run_mtbert")]:
        document = example_data("baseline", fuzz_dir)
        apply_override(document, key.split("."), value)
        assert key in dict(check_outcome(structure_spec, document, registry).problems)
    value, depth = parse_override("train.lr=" + "[" * 20 + "]" * 20)[1], 1
    while value != []:
        value, depth = value[0], depth + 1
    assert depth == 20
    assert math.isinf(parse_override("train.lr=1e999")[1])
