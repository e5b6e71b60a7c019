"""A corpus of malformed data files: each one stops mtbert with a DataError before training.

The files live in ``tests/fixtures/malformed/`` (their README says, one line per
file, what is wrong and what mtbert must say). Every file is checked three
ways: through ``load_split`` (file, line and problem of the DataError);
through the whole program -- ``mtbert run`` in a subprocess for a
representative half, ``Trainer`` construction in-process for the rest --
where it must fail with exit 2 / a DataError and leave no run directory;
and the README is checked against the folder.

A file that crashes with anything but a DataError (or that loads although
it is malformed) is a bug in mtbert: its case carries ``bug=...`` and runs
as a strict xfail until the reader is fixed.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from mtbert.model.build import label_spec, make, pair_encoding
from mtbert.data.splits import load_split
from mtbert.base.errors import DataError
from mtbert.config.spec import SpecStructurer, TaskData, structure_component, structure_spec

from helpers import TINY_ENCODER, mtbert


CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "malformed"
README = CORPUS / "README.md"
POSITIVE = "crlf_mixed_ok.tsv"  # the positive control: mixed CRLF / LF line endings load fine
LONG = "long_field.tsv"  # generated at test time (a 2 MB field), not committed

# How each kind of file is read: the course's SST (5 classes) and STS (pairs, a 0..5 score) layouts.
SST_TASK = {"head": {"name": "classifier", "num_labels": 5}, "loss": "cross_entropy", "metrics": ["accuracy"]}
STS_TASK = {"head": {"name": "regression", "low": 0.0, "high": 5.0}, "loss": "mse", "metrics": ["pearson"]}
KINDS = {
    "sst": ({"reader": "tsv", "text": "sentence", "label": "sentiment"}, SST_TASK),
    "sts": ({"reader": "tsv", "text": "sentence1", "text_pair": "sentence2", "label": "similarity"}, STS_TASK),
    "sst-csv": ({"reader": "csv", "text": "sentence", "label": "sentiment"}, SST_TASK),
    "sst-jsonl": ({"reader": "jsonl", "text": "sentence", "label": "sentiment"}, SST_TASK),
}


class Case(NamedTuple):
    file: str
    kind: str
    line: int | None  # the line the DataError must name; None: a problem of the whole file
    words: tuple[str, ...]  # each must be in the problem; "a|b" accepts either
    # How the whole program is checked: "subprocess" (the installed `mtbert run`), "cli" (the same
    # click command in-process, CliRunner) or "trainer" (Trainer construction in-process).
    via: str = "trainer"
    bug: str | None = None  # observed behaviour when mtbert gets this file wrong (strict xfail)


CASES = [
    # columns and delimiters
    Case("missing_label_column.tsv", "sst", 2, ("no column 'sentiment'", "columns here: ['id', 'sentence']"),
         via="cli"),
    Case("comma_read_as_tsv.tsv", "sst", 2, ("no column 'sentence'", "id,sentence,sentiment"), via="cli"),
    Case("sts_missing_pair_column.tsv", "sts", 2, ("no column 'sentence2'",), via="cli"),
    Case("jsonl_missing_key.jsonl", "sst-jsonl", 2, ("no column 'sentence'", "'text'")),
    Case("duplicate_header.tsv", "sst", 1, ("duplicate column name", "'sentence'")),
    # class labels (SST: 0..4)
    Case("label_out_of_range.tsv", "sst", 3, ("label '7'", "not a class in 0..4"), via="cli"),
    Case("label_not_numeric.tsv", "sst", 2, ("label 'positive'", "not a class number", "label_names")),
    Case("label_negative.tsv", "sst", 4, ("label '-1'", "not a class in 0..4")),
    Case("label_fractional.tsv", "sst", 2, ("label '2.5'", "not a class in 0..4")),
    Case("label_nan.tsv", "sst", 3, ("label 'nan'", "not a class"), via="cli"),
    Case("label_inf.tsv", "sst", 2, ("label 'inf'", "not a class")),
    Case("all_labels_empty.tsv", "sst", None, ("no examples", "2 rows with empty labels")),
    # regression labels (STS: a score in [0, 5])
    Case("sts_label_above_5.tsv", "sts", 3, ("label 5.5", "outside the head's range [0.0, 5.0]"),
         via="subprocess"),
    Case("sts_label_negative.tsv", "sts", 2, ("label -0.5", "outside the head's range")),
    Case("sts_label_nan.tsv", "sts", 4, ("label 'NaN'", "not finite")),
    # empty files
    Case("empty.tsv", "sst", None, ("file is empty",), via="subprocess"),
    Case("header_only.tsv", "sst", None, ("no examples", "header but no rows"), via="cli"),
    Case("header_blank_lines.tsv", "sst", None, ("no examples", "header but no rows")),
    # quoting and fields
    Case("unclosed_quote.tsv", "sst", 3, ("malformed tab-separated row", "unexpected end of data"), via="cli"),
    Case("too_many_fields.tsv", "sst", 3, ("expected 3 fields", "got 4"), via="cli"),
    Case("too_few_fields.tsv", "sst", 3, ("expected 3 fields", "got 2")),
    Case("bare_cr_in_field.tsv", "sst", 3, ("malformed tab-separated row", "bare carriage return")),
    Case("junk_after_quote.csv", "sst-csv", 3, ("malformed ','-separated row", "expected after"),
         via="subprocess"),
    Case("duplicate_ids.tsv", "sst", 4, ("duplicate id 'a1'", "first on line 2"), via="cli"),
    # encodings and bytes
    Case("invalid_utf8.tsv", "sst", 3, ("not valid utf-8", "byte 48"), via="cli"),
    Case("utf16.tsv", "sst", 1, ("not valid utf-8", "byte 0"), via="cli"),
    Case("nul_byte.tsv", "sst", 3, ("NUL|null|\\x00|\\0",)),
    # JSON lines
    Case("jsonl_invalid_json.jsonl", "sst-jsonl", 3, ("invalid JSON",), via="subprocess"),
    Case("jsonl_not_object.jsonl", "sst-jsonl", 2, ("expected a JSON object", "list")),
    Case("jsonl_text_not_string.jsonl", "sst-jsonl", 2, ("'sentence'", "not text"), via="cli"),
    Case("jsonl_huge_int_label.jsonl", "sst-jsonl", 1, ("label",)),
    Case("jsonl_lone_surrogate.jsonl", "sst-jsonl", 2, ("sentence|surrogate|text",)),
    Case("jsonl_deep_nesting.jsonl", "sst-jsonl", 2, ("JSON",)),
]
BY_FILE = {c.file: c for c in CASES}
LONG_CASE = Case(LONG, "sst", 3, ("label '9'", "not a class in 0..4"))


def marked(case: Case, *extra_marks):
    marks = list(extra_marks)
    if case.bug:
        marks.append(pytest.mark.xfail(strict=True, reason=f"BUG: {case.bug}"))
    return pytest.param(case, marks=marks, id=case.file)


def assert_problem(problem: str, words: tuple[str, ...]) -> None:
    for word in words:
        assert any(alt.lower() in problem.lower() for alt in word.split("|")), (word, problem)


def where(path: Path, line: int | None) -> str:
    """How a DataError's message starts: ``<file>:<line>:`` or ``<file>:``."""
    return f"{path}:{line}:" if line is not None else f"{path}:"


@pytest.fixture(scope="session")
def tok(tiny_encoder):
    return tiny_encoder.tokenizer


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> Path:
    """A 2 MB field on line 2 (it must not trip the csv field size limit), a bad label on line 3."""
    path = tmp_path_factory.mktemp("long") / LONG
    field = "word " * 400_000
    path.write_text(f"id\tsentence\tsentiment\na1\t{field}\t3\nb2\ta dull movie\t9\n", encoding="utf-8")
    assert path.stat().st_size > 2_000_000
    return path


def load(registry, tok, case: Case, path: Path):
    data, task = KINDS[case.kind]
    structurer = SpecStructurer(registry)
    columns = structurer.structure_attrs(TaskData, data, "data")
    assert not structurer.problems, structurer.problems
    head = structure_component("heads", task["head"], registry)
    return load_split("t", "train", path, make(registry, columns.reader), columns, label_spec(registry, head),
                      tok, 128, pair_encoding(registry, head), labeled=True)


def spec_data(case: Case, data_dir: Path, out: Path) -> dict:
    """A one-task spec on the tiny encoder whose train file is ``case.file``."""
    data, task = KINDS[case.kind]
    return {"name": "malformed", "out": str(out), "encoder": dict(TINY_ENCODER),
            "data": {"dir": str(data_dir)}, "train": {"epochs": 1, "batch_size": 2},
            "tasks": {"t": {"data": {**data, "train": case.file}, **task}}}


# -- (a) every file through load_split ----------------------------------------------------

@pytest.mark.parametrize("case", [marked(c) for c in CASES])
def test_load_split_names_file_line_and_problem(registry, tok, case):
    path = CORPUS / case.file
    with pytest.raises(DataError) as info:
        load(registry, tok, case, path)
    err = info.value
    assert err.path == str(path)
    assert err.line == case.line, str(err)
    assert str(err).startswith(where(path, case.line) + " "), str(err)
    assert_problem(err.problem, case.words)
    assert len(str(err).splitlines()) <= 3


def test_a_2mb_field_is_read_and_the_next_line_is_named(registry, tok, long_file):
    with pytest.raises(DataError) as info:
        load(registry, tok, LONG_CASE, long_file)
    err = info.value
    assert err.path == str(long_file) and err.line == 3
    assert_problem(err.problem, LONG_CASE.words)
    assert len(str(err)) < 500  # the message never echoes the huge field


def test_mixed_crlf_and_lf_is_not_malformed(registry, tok):
    split = load(registry, tok, Case(POSITIVE, "sst", None, ()), CORPUS / POSITIVE)
    assert split.ids == ["a1", "b2", "c3"]
    assert split.labels.tolist() == [3, 1, 2]


# -- (b) the whole program: nothing is created, no traceback ----------------------------------

SUBPROCESS_CASES = [c for c in CASES if c.via == "subprocess"]
CLI_CASES = [c for c in CASES if c.via == "cli"]
IN_PROCESS_CASES = [c for c in CASES if c.via == "trainer"]


def write_spec(case: Case, tmp: Path) -> tuple[Path, Path]:
    import tomli_w

    out = tmp / "runs"
    spec = tmp / "spec.toml"
    spec.write_text(tomli_w.dumps(spec_data(case, CORPUS, out)))
    return spec, out


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory):
    """The installed `mtbert run` on a spec per case, run concurrently (each is a fresh interpreter)."""

    def run(case: Case):
        spec, out = write_spec(case, tmp_path_factory.mktemp("cli"))
        return case.file, (mtbert("run", spec, "--no-progress"), out)

    with ThreadPoolExecutor(max_workers=len(SUBPROCESS_CASES)) as pool:
        return dict(pool.map(run, SUBPROCESS_CASES))


def assert_one_screen_data_error(case: Case, stdout: str, stderr: str, out: Path) -> None:
    assert stderr.startswith("mtbert: data error: "), stderr
    assert where(CORPUS / case.file, case.line) in stderr
    assert_problem(stderr, case.words)
    assert "Traceback" not in stderr + stdout
    assert len(stderr.splitlines()) <= 6
    assert not out.exists()  # no run directory: the data was refused before training


@pytest.mark.parametrize("case", [marked(c) for c in SUBPROCESS_CASES])
def test_mtbert_run_stops_with_a_data_error(subprocess_results, case):
    result, out = subprocess_results[case.file]
    assert result.returncode == 2, result.stderr
    assert_one_screen_data_error(case, result.stdout, result.stderr, out)


@pytest.fixture
def restore_logging():
    """The run command reconfigures the root logger onto CliRunner's stream; put it back afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("case", [marked(c) for c in CLI_CASES])
def test_run_command_stops_with_a_data_error(tmp_path, restore_logging, case):
    from click.testing import CliRunner

    from mtbert.commands.cli import main

    spec, out = write_spec(case, tmp_path)
    result = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert isinstance(result.exception, SystemExit), result.exc_info  # user_errors' exit, not a crash
    assert result.exit_code == 2, result.stderr
    assert_one_screen_data_error(case, result.stdout, result.stderr, out)


def trainer_error(registry, case: Case, data_dir: Path, out: Path) -> DataError:
    from mtbert.training.loop import Trainer

    spec = structure_spec(spec_data(case, data_dir, out), registry)
    with pytest.raises(DataError) as info:
        Trainer(spec, registry, progress=False)
    assert not out.exists()
    return info.value


@pytest.mark.parametrize("case", [marked(c) for c in IN_PROCESS_CASES])
def test_trainer_refuses_before_training(registry, tmp_path, case):
    err = trainer_error(registry, case, CORPUS, tmp_path / "runs")
    assert err.path == str(CORPUS / case.file)
    assert err.line == case.line, str(err)
    assert_problem(err.problem, case.words)


def test_trainer_refuses_the_2mb_field_file(registry, tmp_path, long_file):
    err = trainer_error(registry, LONG_CASE, long_file.parent, tmp_path / "runs")
    assert err.path == str(long_file) and err.line == 3


def test_trainer_accepts_the_positive_control(registry, tmp_path):
    from mtbert.training.loop import Trainer

    case = Case(POSITIVE, "sst", None, ())
    trainer = Trainer(structure_spec(spec_data(case, CORPUS, tmp_path / "runs"), registry), registry,
                      progress=False)
    assert len(trainer.tasks["t"].splits["train"]) == 3


# -- (c) the corpus and its README agree --------------------------------------------------------

def readme_entries() -> dict[str, str]:
    """File name -> its README line (lines like "- `name` ...")."""
    entries = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^- `([^`]+)`", line)
        if match:
            assert match.group(1) not in entries, f"{match.group(1)} listed twice"
            entries[match.group(1)] = line
    return entries


def test_corpus_is_listed_in_the_readme_and_tested():
    files = sorted(p.name for p in CORPUS.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name != README.name)
    entries = readme_entries()
    assert sorted(set(files) - set(entries)) == []  # every file in the folder is described
    assert sorted(set(entries) - set(files)) == [LONG]  # ... and only the generated one is not committed
    assert "generated at test time" in entries[LONG]
    assert "positive control" in entries[POSITIVE]
    malformed = [f for f in files if f != POSITIVE]
    assert len(malformed) >= 20
    assert sorted(BY_FILE) == sorted(malformed)  # every malformed file has a test case
    assert (len(SUBPROCESS_CASES) + len(CLI_CASES)) * 2 >= len(CASES) - 1  # about half through `mtbert run`
    assert {CASES[i].kind for i in range(len(CASES)) if CASES[i].via == "subprocess"} == set(KINDS)
    for name, line in entries.items():
        if name != POSITIVE:
            assert "→" in line, line  # "what is wrong → what mtbert must say"
    for path in CORPUS.iterdir():
        assert path.stat().st_size < 10_000, path  # small files only; big inputs are generated


def test_corpus_files_have_the_course_layouts():
    """Sanity of the corpus itself: the tabular files start with the course's headers (or are broken on
    purpose right there), so each tests one problem."""
    headers = {"sst": "id\tsentence\tsentiment", "sts": "id\tsentence1\tsentence2\tsimilarity"}
    for case in CASES:
        raw = (CORPUS / case.file).read_bytes()
        if case.kind in headers and case.file not in {"missing_label_column.tsv", "comma_read_as_tsv.tsv",
                                                      "sts_missing_pair_column.tsv", "duplicate_header.tsv",
                                                      "empty.tsv", "utf16.tsv"}:
            assert raw.startswith(headers[case.kind].encode() + b"\n"), case.file
    assert (CORPUS / "utf16.tsv").read_bytes()[:2] == b"\xff\xfe"  # a UTF-16 (LE, with BOM) file
    assert (CORPUS / "empty.tsv").read_bytes() == b""
    assert b"\x00" in (CORPUS / "nul_byte.tsv").read_bytes()
    assert b"\r\n" in (CORPUS / POSITIVE).read_bytes() and b"3\nb2" in (CORPUS / POSITIVE).read_bytes()
    with pytest.raises(UnicodeDecodeError):
        (CORPUS / "invalid_utf8.tsv").read_text(encoding="utf-8")
