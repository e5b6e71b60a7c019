"""The data layer: readers, label checks, tokenize-once, batching and streams.

Small files are written to ``tmp_path``; the course files are read in place
through the ``data_dir`` fixture. Everything runs on CPU with the tiny
encoder's (MiniLM) tokenizer.
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import pytest
import torch

from mtbert.model.build import label_spec, make
from mtbert.data.splits import (
    Split,
    TaskStream,
    Tokens,
    collate,
    eval_batches,
    load_split,
    parse_label,
    pass_order,
    read_rows,
)
from mtbert.base.errors import DataError, SpecError
from mtbert.plugin.interfaces import LabelSpec
from mtbert.config.spec import SpecStructurer, TaskData, structure_component

CLASSES5 = {"name": "classifier", "num_labels": 5}
SCORE05 = {"name": "regression", "low": 0.0, "high": 5.0}
HEADER = "id\tsentence\tlabel\n"


# -- helpers ---------------------------------------------------------------------------------

def reader(registry, value="tsv"):
    return make(registry, structure_component("readers", value, registry))


def columns(registry, **data) -> TaskData:
    """TaskData as the spec would build it (reader default "tsv" included)."""
    structurer = SpecStructurer(registry)
    result = structurer.structure_attrs(TaskData, data, "data")
    assert not structurer.problems, structurer.problems
    return result


def labels_of(registry, head="binary") -> LabelSpec:
    return label_spec(registry, structure_component("heads", head, registry))


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


def load(path, registry, tokenizer, *, head=CLASSES5, labeled=True, max_length=128,
         pair_encoding="cross", **data):
    cols = columns(registry, **data)
    return load_split("task", "train", path, make(registry, cols.reader), cols,
                      labels_of(registry, head), tokenizer, max_length, pair_encoding, labeled)


def read(path, registry, *, head=CLASSES5, labeled=True, **data):
    cols = columns(registry, **data)
    return read_rows(path, make(registry, cols.reader), cols,
                     labels_of(registry, head) if labeled else None, cols.limit)


def data_error(fn, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return info.value


def assert_where(err: DataError, path: Path, line: int | None):
    assert err.path == str(path)
    assert err.line == line
    where = f"{path}:{line}" if line is not None else str(path)
    assert str(err).startswith(where + ":"), str(err)


class CountingTokenizer:
    """Delegates to a real tokenizer and counts the calls."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.fixture(scope="session")
def tok(tiny_encoder):
    return tiny_encoder.tokenizer


def piece_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


def synthetic_split(lengths: list[int], labels: bool = True) -> Split:
    """A split whose example i has lengths[i] tokens (ids i*1000 + position, types 0)."""
    ids = [[i * 1000 + j + 1 for j in range(n)] for i, n in enumerate(lengths)]
    types = [[0] * n for n in lengths]
    label_tensor = torch.arange(len(lengths)) % 3 if labels else None
    return Split("t", "train", Path("x"), [str(i) for i in range(len(lengths))], [Tokens.from_lists(ids, types)],
                 label_tensor)


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


# -- readers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, sep", [("tsv", "\t"), ("csv", ","), ({"name": "csv", "delimiter": ";"}, ";")])
def test_tabular_reader_rows_quoting_multiline_and_blank_lines(registry, tmp_path, value, sep):
    other = "," if sep != "," else ";"  # a character that is NOT the separator stays inside a field
    lines = [
        sep.join(["id", "sentence", "label"]),                      # 1
        sep.join(["a", f'"has{sep}sep\tand tab ""quoted"""', "1"]),  # 2
        sep.join(["b", '"first line\nsecond line"', "2"]),          # 3-4: one field across two lines
        "",                                                          # 5 blank
        sep.join(["c", f"plain{other}text", "3"]),                   # 6
        "",                                                          # 7 blank
        "",                                                          # 8 blank
        sep.join(["d", "last", "4"]),                                # 9
    ]
    text = "\n".join(lines) + "\n\n"
    path = write(tmp_path, "f.txt", text)
    rows = list(reader(registry, value).rows(path))
    assert rows == [
        (2, {"id": "a", "sentence": f'has{sep}sep\tand tab "quoted"', "label": "1"}),
        (3, {"id": "b", "sentence": "first line\nsecond line", "label": "2"}),
        (6, {"id": "c", "sentence": f"plain{other}text", "label": "3"}),
        (9, {"id": "d", "sentence": "last", "label": "4"}),
    ]


def test_tabular_reader_skips_blank_lines_before_the_header(registry, tmp_path):
    path = write(tmp_path, "f.tsv", "\n" + HEADER + "a\tx\t1\n")
    assert list(reader(registry).rows(path)) == [(3, {"id": "a", "sentence": "x", "label": "1"})]


def test_tsv_reader_handles_crlf_line_endings(registry, tmp_path):
    path = write(tmp_path, "f.tsv", "id\tsentence\tlabel\r\na\t\"two\r\nlines\"\t1\r\nb\tx\t0\r\n")
    assert list(reader(registry).rows(path)) == [
        (2, {"id": "a", "sentence": "two\r\nlines", "label": "1"}),
        (4, {"id": "b", "sentence": "x", "label": "0"}),
    ]


def test_reader_delimiter_option_is_checked(registry):
    with pytest.raises(SpecError, match="one character"):
        structure_component("readers", {"name": "csv", "delimiter": ";;"}, registry)


def test_jsonl_reader_rows_and_line_numbers(registry, tmp_path):
    path = write(tmp_path, "f.jsonl",
                 '{"id": "a", "sentence": "x\\ty", "label": 3}\n'
                 "\n"
                 "   \n"
                 '{"id": "b", "sentence": "say \\"hi\\"\\nthere", "label": "1.0"}\n')
    assert list(reader(registry, "jsonl").rows(path)) == [
        (1, {"id": "a", "sentence": "x\ty", "label": 3}),
        (4, {"id": "b", "sentence": 'say "hi"\nthere', "label": "1.0"}),
    ]


def test_jsonl_task_loads_through_load_split(registry, tmp_path, tok):
    path = write(tmp_path, "f.jsonl",
                 '{"id": 7, "sentence": " good ", "label": 3}\n'
                 '{"id": 8, "sentence": "bad", "label": null}\n'
                 '{"id": 9, "sentence": "fine", "label": "2"}\n')
    split = load(path, registry, tok, reader="jsonl")
    assert split.ids == ["7", "9"]
    assert split.skipped == 1
    assert split.labels.tolist() == [3, 2]
    assert split.sequences[0].input_ids[0] == [tok.cls_token_id, *piece_ids(tok, "good"), tok.sep_token_id]


# -- malformed files -------------------------------------------------------------------------

@pytest.mark.parametrize("bad_row, got", [("b\tonly two", 2), ("b\tone\t1\textra", 4)])
def test_wrong_number_of_fields(registry, tmp_path, bad_row, got):
    path = write(tmp_path, "f.tsv", HEADER + "a\t\"two\nlines\"\t1\n\n" + bad_row + "\nc\tz\t1\n")
    err = data_error(list, reader(registry).rows(path))
    assert_where(err, path, 5)  # after the 2-line row (2-3) and the blank line 4
    assert "expected 3 fields" in err.problem and f"got {got}" in err.problem


def test_unclosed_quote(registry, tmp_path):
    path = write(tmp_path, "f.tsv", HEADER + "a\tfine\t1\nb\t\"never closed\t1\nc\tz\t2\n")
    err = data_error(list, reader(registry).rows(path))
    assert_where(err, path, 3)
    assert "malformed" in err.problem and "end of data" in err.problem


def test_broken_quoting_is_refused_by_strict_csv(registry, tmp_path):
    path = write(tmp_path, "f.csv", "id,sentence,label\na,fine,1\nb,\"quoted\"junk,1\n")
    err = data_error(list, reader(registry, "csv").rows(path))
    assert_where(err, path, 3)
    assert "malformed" in err.problem and "expected after" in err.problem


def test_empty_file(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", "")
    err = data_error(list, reader(registry).rows(path))
    assert_where(err, path, None)
    assert "empty" in err.problem
    err = data_error(load, path, registry, tok, label="label")
    assert err.line is None and "empty" in err.problem


def test_header_only_file_has_no_examples(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "\n")
    err = data_error(load, path, registry, tok)
    assert_where(err, path, None)
    assert "no examples" in err.problem and "header" in err.problem


def test_all_labels_empty_has_no_examples(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "a\tx\t\nb\ty\t \n")
    err = data_error(load, path, registry, tok)
    assert_where(err, path, None)
    assert "no examples" in err.problem and "2 rows with empty labels" in err.problem


def test_invalid_utf8_tsv_is_a_data_error(registry, tmp_path):
    path = write(tmp_path, "f.tsv", HEADER.encode() + b"a\tok\t1\nb\tbad \xff byte\t1\n")
    err = data_error(list, reader(registry).rows(path))
    assert err.path == str(path)
    assert "utf-8" in err.problem and "UTF-8" in str(err)


def test_invalid_utf8_tsv_names_the_line(registry, tmp_path):
    path = write(tmp_path, "f.tsv", HEADER.encode() + b"a\tok\t1\nb\tbad \xff byte\t1\n")
    err = data_error(list, reader(registry).rows(path))
    assert err.line == 3


def test_invalid_utf8_tsv_byte_offset_is_the_files(registry, tmp_path):
    head = HEADER.encode() + b"".join(b"%d\thello there\t1\n" % i for i in range(2000))
    path = write(tmp_path, "f.tsv", head + b"x\tbad \xff\t1\n")
    err = data_error(list, reader(registry).rows(path))
    offset = len(head) + len(b"x\tbad ")  # where the 0xff byte is in the file
    assert f"at byte {offset} of the file)" in err.problem, err.problem


def test_invalid_utf8_jsonl_names_the_line(registry, tmp_path):
    path = write(tmp_path, "f.jsonl", b'{"id": "a", "sentence": "ok", "label": 1}\n'
                                      b'{"id": "b", "sentence": "bad \xff", "label": 1}\n')
    err = data_error(list, reader(registry, "jsonl").rows(path))
    assert_where(err, path, 2)
    assert "utf-8" in err.problem


def test_duplicate_column_names(registry, tmp_path):
    path = write(tmp_path, "f.tsv", "id\tsentence\tid\na\tx\tb\n")
    err = data_error(list, reader(registry).rows(path))
    assert_where(err, path, 1)
    assert "duplicate column" in err.problem and "'id'" in err.problem


def test_comma_file_read_as_tsv_misses_the_columns(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", "id,sentence,label\na,hello,1\n")  # really comma-separated
    err = data_error(load, path, registry, tok)
    assert_where(err, path, 2)
    assert "no column 'sentence'" in err.problem and "id,sentence,label" in err.problem
    assert "delimiter" in str(err)


def test_missing_pair_column(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", "id\tsentence1\tlabel\na\tx\t1\n")
    err = data_error(load, path, registry, tok, head="binary", text="sentence1", text_pair="sentence2")
    assert_where(err, path, 2)
    assert "no column 'sentence2'" in err.problem


@pytest.mark.parametrize("head, raw, words", [
    (CLASSES5, "abc", "not a class number"),
    (CLASSES5, "7", "not a class in 0..4"),
    (CLASSES5, "-1", "not a class in 0..4"),
    (CLASSES5, "2.5", "not a class in 0..4"),
    ("binary", "2", "not a class in 0..1"),
    (SCORE05, "5.5", "outside the head's range [0.0, 5.0]"),
    (SCORE05, "-0.1", "outside the head's range"),
    (SCORE05, "nan", "not finite"),
    (SCORE05, "inf", "not finite"),
    (SCORE05, "high", "not a number"),
])
def test_bad_labels_name_file_and_line(registry, tmp_path, tok, head, raw, words):
    path = write(tmp_path, "f.tsv", HEADER + "a\tfine\t1\n\nb\tbad\t" + raw + "\nc\tz\t1\n")
    err = data_error(load, path, registry, tok, head=head)
    assert_where(err, path, 4)
    assert words in err.problem, err.problem


def test_nan_class_label_is_a_data_error(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "a\tfine\tnan\n")
    err = data_error(load, path, registry, tok)
    assert_where(err, path, 2)


def test_infinite_class_label_is_a_data_error(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "a\tfine\tinf\n")
    err = data_error(load, path, registry, tok)
    assert_where(err, path, 2)


def test_duplicate_ids(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "a\tx\t1\nb\ty\t2\n\"a\"\tz\t3\n")
    err = data_error(load, path, registry, tok)
    assert_where(err, path, 4)
    assert "duplicate id 'a'" in err.problem and "first on line 2" in err.problem


def test_rows_with_empty_labels_do_not_claim_ids(registry, tmp_path, tok):
    # the skipped row's id is not recorded, so a later labelled row may use it
    path = write(tmp_path, "f.tsv", HEADER + "a\tx\t\na\ty\t2\n")
    split = load(path, registry, tok)
    assert split.ids == ["a"] and split.skipped == 1


def test_without_id_column_ids_are_row_numbers(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", "sentence\tlabel\nx\t1\ny\t\nz\t2\n")
    for cols in (attrs.evolve(columns(registry), id=None), columns(registry, id="")):
        rows = read_rows(path, reader(registry), cols, labels_of(registry, CLASSES5), None)
        assert rows.ids == ["0", "1"] and rows.texts == ["x", "z"] and rows.skipped == 1


def test_unknown_label_name(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "a\tx\tpositive\nb\ty\tneutral\n")
    err = data_error(load, path, registry, tok, head="binary", label_names=["negative", "positive"])
    assert_where(err, path, 3)
    assert "'neutral'" in err.problem and "label_names" in err.problem


def test_jsonl_invalid_json_line(registry, tmp_path):
    path = write(tmp_path, "f.jsonl", '{"id": "a", "sentence": "x", "label": 1}\n\n{"id": "b", "sentence": }\n')
    err = data_error(list, reader(registry, "jsonl").rows(path))
    assert_where(err, path, 3)
    assert "invalid JSON" in err.problem


def test_jsonl_line_that_is_a_list(registry, tmp_path):
    path = write(tmp_path, "f.jsonl", '{"id": "a", "sentence": "x", "label": 1}\n["b", "y", 1]\n')
    err = data_error(list, reader(registry, "jsonl").rows(path))
    assert_where(err, path, 2)
    assert "expected a JSON object" in err.problem and "list" in err.problem


def test_jsonl_text_that_is_a_number(registry, tmp_path, tok):
    path = write(tmp_path, "f.jsonl", '{"id": "a", "sentence": "x", "label": 1}\n{"id": "b", "sentence": 5, "label": 1}\n')
    err = data_error(load, path, registry, tok, reader="jsonl")
    assert_where(err, path, 2)
    assert "'sentence'" in err.problem and "5" in err.problem and "not text" in err.problem


# -- parse_label -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["3", "3.0", " 3 ", 3, 3.0])
def test_parse_multiclass_label(raw):
    value = parse_label(raw, LabelSpec("multiclass", 5), None)
    assert value == 3 and type(value) is int


@pytest.mark.parametrize("raw, expected", [("0.0", 0), ("1.0", 1), ("0", 0), (1, 1), (True, 1), (False, 0)])
def test_parse_binary_label(raw, expected):
    value = parse_label(raw, LabelSpec("binary"), None)
    assert value == expected and type(value) is int


def test_parse_label_names():
    names = ["negative", "positive"]
    assert parse_label("negative", LabelSpec("binary"), names) == 0
    assert parse_label(" positive ", LabelSpec("binary"), names) == 1
    with pytest.raises(ValueError, match="'neutral' is not one of the label_names"):
        parse_label("neutral", LabelSpec("binary"), names)
    # numeric labels with names for them (the course's SST file with label_names): the number is the class
    assert parse_label("1", LabelSpec("binary"), names) == 1
    assert parse_label("3", LabelSpec("multiclass", 5), ["a", "b", "c", "d", "e"]) == 3
    with pytest.raises(ValueError, match="nor a class number 0..1"):
        parse_label("2", LabelSpec("binary"), names)
    assert parse_label("1", LabelSpec("binary"), ["1", "0"]) == 0  # names that are numbers: names first


def test_parse_label_name_beyond_the_heads_classes():
    with pytest.raises(ValueError):
        parse_label("positive", LabelSpec("binary"), ["negative", "neutral", "positive"])


@pytest.mark.parametrize("raw, expected", [("2.4", 2.4), (" 0 ", 0.0), ("5.0", 5.0), (3, 3.0), (4.25, 4.25)])
def test_parse_regression_label(raw, expected):
    value = parse_label(raw, LabelSpec("regression", low=0.0, high=5.0), None)
    assert value == pytest.approx(expected) and type(value) is float


def test_parse_regression_label_without_range():
    assert parse_label("-12.5", LabelSpec("regression"), None) == -12.5
    with pytest.raises(ValueError, match="not finite"):
        parse_label("-inf", LabelSpec("regression"), None)


# -- empty labels ------------------------------------------------------------------------------

def test_empty_labels_are_skipped_and_counted(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "a\tx\t1\nb\ty\t\nc\tz\t \nd\tw\t\"\"\ne\tv\t0\n")
    split = load(path, registry, tok, head="binary")
    assert split.ids == ["a", "e"]
    assert split.skipped == 3
    assert split.labels.tolist() == [1, 0] and split.labels.dtype == torch.long
    assert len(split.sequences[0].input_ids) == 2


def test_regression_labels_are_float(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "a\tx\t1.5\nb\ty\t5\n")
    split = load(path, registry, tok, head=SCORE05)
    assert split.labels.dtype == torch.float32 and split.labels.tolist() == [1.5, 5.0]


def test_unlabeled_file_ignores_label_column(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", "id\tsentence\na\tx\nb\ty\n")  # no label column at all
    split = load(path, registry, tok, labeled=False)
    assert split.ids == ["a", "b"] and split.labels is None and split.skipped == 0


@pytest.mark.real
def test_real_quora_train_skips_its_two_empty_labels(registry, data_dir, tok):
    path = data_dir / "quora-train.csv"
    split = load(path, registry, tok, head="binary", text="sentence1", text_pair="sentence2",
                 label="is_duplicate")
    assert len(split) == 14137 and split.skipped == 2
    assert len(split) + split.skipped == 14139
    assert set(split.labels.unique().tolist()) == {0, 1}
    assert len(set(split.ids)) == len(split)
    types = split.sequences[0].token_type_ids
    assert all(t[0] == 0 and t[-1] == 1 for t in types[:200])  # cross-encoded pairs


@pytest.fixture(scope="module")
def sst_train(registry, data_dir, tok):
    return load(data_dir / "ids-sst-train.csv", registry, tok, label="sentiment")


@pytest.mark.real
def test_real_sst_train(sst_train):
    assert len(sst_train) == 8544 and sst_train.skipped == 0
    assert sorted(sst_train.labels.unique().tolist()) == [0, 1, 2, 3, 4]
    assert sst_train.ids[0] == "32a4f146782cbde1b7fa65799"
    assert len(set(sst_train.ids)) == 8544
    assert max(sst_train.lengths()) <= 128


@pytest.mark.real
def test_real_sst_test_student_odd_header(registry, data_dir, tok):
    path = data_dir / "ids-sst-test-student.csv"
    line, first = next(iter(reader(registry).rows(path)))
    assert line == 2 and list(first) == ["0", "", "id", "sentence"]
    split = load(path, registry, tok, labeled=False, label="sentiment")
    assert len(split) == 2210 and split.labels is None
    assert split.ids[:2] == ["b7573736a6ddf7be102b7fee0", "d17a8752e342834fd18b31aaa"]
    assert len(set(split.ids)) == 2210


# -- tokenization ------------------------------------------------------------------------------

PAIR_FILE = "id\ts1\ts2\tlabel\na\ta cat\tthe dog sat\t1\nb\tlonger first sentence here\tshort\t0\n"


def test_cross_encoded_pair(registry, tmp_path, tok):
    path = write(tmp_path, "p.tsv", PAIR_FILE)
    split = load(path, registry, tok, head="binary", text="s1", text_pair="s2")
    assert len(split.sequences) == 1
    a, b = piece_ids(tok, "a cat"), piece_ids(tok, "the dog sat")
    cls, sep = tok.cls_token_id, tok.sep_token_id
    ids, types = split.sequences[0].input_ids[0], split.sequences[0].token_type_ids[0]
    assert ids == [cls, *a, sep, *b, sep]
    assert [i for i, t in enumerate(ids) if t == sep] == [len(a) + 1, len(a) + len(b) + 2]
    assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert split.lengths()[0] == len(a) + len(b) + 3


def test_bi_encoded_pair(registry, tmp_path, tok):
    path = write(tmp_path, "p.tsv", PAIR_FILE)
    split = load(path, registry, tok, head="binary", text="s1", text_pair="s2", pair_encoding="bi")
    assert len(split.sequences) == 2
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert split.sequences[0].input_ids[0] == [cls, *piece_ids(tok, "a cat"), sep]
    assert split.sequences[1].input_ids[0] == [cls, *piece_ids(tok, "the dog sat"), sep]
    assert all(t == 0 for part in split.sequences for seq in part.token_type_ids for t in seq)
    assert split.lengths().tolist() == [len(split.sequences[0].input_ids[i]) + len(split.sequences[1].input_ids[i]) for i in (0, 1)]
    batch = collate(split, [0, 1], tok.pad_token_id)
    assert {"input_ids", "token_type_ids", "attention_mask", "input_ids_b", "token_type_ids_b",
            "attention_mask_b", "labels", "index"} == set(batch)
    assert batch["attention_mask_b"].sum(1).tolist() == [len(split.sequences[1].input_ids[i]) for i in (0, 1)]
    assert batch["input_ids_b"].shape[1] == max(len(s) for s in split.sequences[1].input_ids)


def test_single_text_task_ignores_bi_encoding(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "a\tx\t1\n")
    split = load(path, registry, tok, pair_encoding="bi")
    assert len(split.sequences) == 1


def test_max_length_truncates(registry, tmp_path, tok):
    long = " ".join(["word"] * 40)
    path = write(tmp_path, "p.tsv", f"id\ts1\ts2\tlabel\na\t{long}\t{long}\t1\nb\tshort\tone\t0\n")
    single = load(path, registry, tok, head="binary", text="s1", max_length=8)
    assert [len(s) for s in single.sequences[0].input_ids][0] == 8
    assert single.sequences[0].input_ids[0][-1] == tok.sep_token_id
    pair = load(path, registry, tok, head="binary", text="s1", text_pair="s2", max_length=10)
    ids, types = pair.sequences[0].input_ids[0], pair.sequences[0].token_type_ids[0]
    assert len(ids) == 10 and ids.count(tok.sep_token_id) == 2 and ids[-1] == tok.sep_token_id
    assert 0 in types and 1 in types
    assert len(pair.sequences[0].input_ids[1]) < 10  # short examples are not padded at load time
    bi = load(path, registry, tok, head="binary", text="s1", text_pair="s2", max_length=8, pair_encoding="bi")
    assert len(bi.sequences[0].input_ids[0]) == 8 and len(bi.sequences[1].input_ids[0]) == 8


def test_limit_reads_the_first_rows(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "".join(f"r{i}\ttext {i}\t{i % 5}\n" for i in range(10)))
    split = load(path, registry, tok, limit=3)
    assert split.ids == ["r0", "r1", "r2"] and split.labels.tolist() == [0, 1, 2]
    # the limit counts rows read, skipped ones included
    path = write(tmp_path, "g.tsv", HEADER + "a\tx\t1\nb\ty\t\nc\tz\t2\nd\tw\t3\n")
    split = load(path, registry, tok, limit=3)
    assert split.ids == ["a", "c"] and split.skipped == 1


def test_limit_stops_before_a_later_malformed_row(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "a\tx\t1\nb\ty\t2\nc\tz\tnot-a-label\n")
    assert load(path, registry, tok, limit=2).ids == ["a", "b"]


def test_text_is_stripped(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", HEADER + "a\t  hello  \t1\n")
    rows = read(path, registry)
    assert rows.texts == ["hello"]


# -- tokenize once -----------------------------------------------------------------------------

@pytest.mark.parametrize("encoding, calls", [("cross", 1), ("bi", 2)])
def test_load_split_tokenizes_once(registry, tmp_path, tok, encoding, calls):
    # non-ASCII text, so that the tokenizer itself is used (mtbert/data/fasttok.py takes plain ASCII)
    rows = "".join(f"r{i}\tfirst {i} café\tsecond sentence {i} naïve\t{i % 2}\n" for i in range(50))
    path = write(tmp_path, "p.tsv", "id\ts1\ts2\tlabel\n" + rows)
    counting = CountingTokenizer(tok)
    split = load(path, registry, counting, head="binary", text="s1", text_pair="s2", pair_encoding=encoding)
    assert len(split) == 50
    assert counting.calls == calls
    stream = TaskStream(split, batch_size=8, seed=3, pad_id=tok.pad_token_id, buckets=True)
    for _ in range(3 * stream.batches_per_pass):
        stream.next_batch()
    list(eval_batches(split, 16, tok.pad_token_id))
    assert counting.calls == calls


# -- batching ----------------------------------------------------------------------------------

def test_collate_pads_dynamically(registry, tmp_path, tok):
    sentences = ["one", "a somewhat longer sentence than the others", "two words", "three words here"]
    path = write(tmp_path, "f.tsv", HEADER + "".join(f"r{i}\t{s}\t{i}\n" for i, s in enumerate(sentences)))
    split = load(path, registry, tok, max_length=64)
    lengths = split.lengths()
    pad = tok.pad_token_id
    indices = [2, 0, 3]
    batch = collate(split, indices, pad)
    width = max(lengths[i] for i in indices)
    assert width < max(lengths) < 64
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (3, width)
    assert batch["attention_mask"].sum(1).tolist() == [lengths[i] for i in indices]
    for row, i in enumerate(indices):
        n = lengths[i]
        assert batch["input_ids"][row, :n].tolist() == split.sequences[0].input_ids[i]
        assert (batch["input_ids"][row, n:] == pad).all()
        assert (batch["attention_mask"][row, n:] == 0).all() and (batch["token_type_ids"][row, n:] == 0).all()
    assert batch["labels"].tolist() == [2, 0, 3]
    assert batch["index"].tolist() == indices
    assert collate(split, [1], pad)["input_ids"].shape == (1, max(lengths))


def test_collate_keeps_pair_token_types(registry, tmp_path, tok):
    path = write(tmp_path, "p.tsv", PAIR_FILE)
    split = load(path, registry, tok, head="binary", text="s1", text_pair="s2")
    batch = collate(split, [1, 0], tok.pad_token_id)
    n0 = split.lengths()[0]
    assert batch["token_type_ids"][1, :n0].tolist() == split.sequences[0].token_type_ids[0]
    assert batch["token_type_ids"][1, n0:].sum() == 0
    assert batch["labels"].tolist() == [0, 1]


def test_collate_without_labels(registry, tmp_path, tok):
    path = write(tmp_path, "f.tsv", "id\tsentence\na\tx\n")
    split = load(path, registry, tok, labeled=False)
    batch = collate(split, [0], tok.pad_token_id)
    assert "labels" not in batch and batch["index"].tolist() == [0]


@pytest.mark.parametrize("n, batch_size, buckets", [(1, 4, False), (103, 8, False), (103, 8, True),
                                                    (1000, 4, True), (400, 8, True)])
def test_pass_order_covers_each_index_once(n, batch_size, buckets):
    lengths = [(i * 37) % 29 + 1 for i in range(n)]
    batches = pass_order(lengths, batch_size, torch.Generator().manual_seed(1), buckets)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert len(batches) == math.ceil(n / batch_size)
    assert sum(len(b) < batch_size for b in batches) <= 1
    assert all(0 < len(b) <= batch_size for b in batches)


def test_pass_order_without_buckets_is_a_plain_shuffle():
    lengths = list(range(1, 41))
    batches = pass_order(lengths, 10, torch.Generator().manual_seed(5), buckets=False)
    expected = torch.randperm(40, generator=torch.Generator().manual_seed(5)).tolist()
    assert [i for b in batches for i in b] == expected


def test_pass_order_buckets_sort_each_chunk_by_length():
    n, batch_size = 300, 4  # one chunk (50 batches = 200 examples) and a partial second chunk
    lengths = [(i * 53) % 61 + 1 for i in range(n)]
    batches = pass_order(lengths, batch_size, torch.Generator().manual_seed(2), buckets=True)
    assert all([lengths[i] for i in b] == sorted(lengths[i] for i in b) for b in batches)
    # the batches of one chunk are consecutive slices of that chunk sorted by length: grouped by
    # chunk and ordered by their shortest example, their lengths never go down
    order = torch.randperm(n, generator=torch.Generator().manual_seed(2)).tolist()
    for chunk in (set(order[:200]), set(order[200:])):
        mine = sorted((b for b in batches if set(b) <= chunk), key=lambda b: (lengths[b[0]], lengths[b[-1]]))
        assert sum(len(b) for b in mine) == len(chunk)  # no batch mixes chunks
        flat = [lengths[i] for b in mine for i in b]
        assert flat == sorted(flat)
    # the batches are shuffled: not simply in length order
    firsts = [lengths[b[0]] for b in batches]
    assert firsts != sorted(firsts)


@pytest.mark.real
def test_buckets_reduce_padding_on_sst(sst_train):
    lengths = sst_train.lengths()
    plain = pass_order(lengths, 32, torch.Generator().manual_seed(0), buckets=False)
    bucketed = pass_order(lengths, 32, torch.Generator().manual_seed(0), buckets=True)
    padded_plain, padded_bucketed = padded_tokens(plain, lengths), padded_tokens(bucketed, lengths)
    assert padded_bucketed < padded_plain / 3, (padded_bucketed, padded_plain)
    # collate pads exactly that much
    pad_id = 0
    total = sum(int((collate(sst_train, b, pad_id)["attention_mask"] == 0).sum()) for b in bucketed)
    assert total == padded_bucketed


def stream_indices(stream: TaskStream, count: int) -> list[list[int]]:
    return [stream.next_batch()["index"].tolist() for _ in range(count)]


@pytest.mark.parametrize("buckets", [False, True])
def test_task_stream_passes_and_reshuffles(buckets):
    lengths = [(i * 7) % 13 + 2 for i in range(30)]
    split = synthetic_split(lengths)
    stream = TaskStream(split, batch_size=4, seed=5, pad_id=0, buckets=buckets)
    assert stream.batches_per_pass == 8
    first = stream_indices(stream, 8)
    assert stream.state_dict() == {"pass_number": 0, "position": 8}
    second = stream_indices(stream, 8)
    assert stream.state_dict() == {"pass_number": 1, "position": 8}
    for one_pass in (first, second):
        assert sorted(i for b in one_pass for i in b) == list(range(30))
    assert [i for b in first for i in b] != [i for b in second for i in b]
    assert stream_indices(stream, 1) and stream.state_dict() == {"pass_number": 2, "position": 1}


def test_task_stream_depends_on_seed():
    split = synthetic_split([5] * 40)
    a = stream_indices(TaskStream(split, 8, seed=1, pad_id=0, buckets=False), 5)
    b = stream_indices(TaskStream(split, 8, seed=1, pad_id=0, buckets=False), 5)
    c = stream_indices(TaskStream(split, 8, seed=2, pad_id=0, buckets=False), 5)
    assert a == b and a != c


@pytest.mark.parametrize("drawn", [3, 8, 11])  # mid pass, at a pass boundary, in the second pass
def test_task_stream_restore_resumes_exactly(drawn):
    lengths = [(i * 11) % 17 + 1 for i in range(30)]
    split = synthetic_split(lengths)
    stream = TaskStream(split, batch_size=4, seed=9, pad_id=0, buckets=True)
    stream_indices(stream, drawn)
    state = stream.state_dict()
    expected = [stream.next_batch() for _ in range(12)]  # crosses at least one pass boundary

    resumed = TaskStream(split, batch_size=4, seed=9, pad_id=0, buckets=True)
    resumed.load_state_dict(dict(state))
    got = [resumed.next_batch() for _ in range(12)]
    for want, have in zip(expected, got):
        assert torch.equal(want["index"], have["index"])
        assert torch.equal(want["input_ids"], have["input_ids"])
        assert torch.equal(want["labels"], have["labels"])
    fresh = TaskStream(split, batch_size=4, seed=9, pad_id=0, buckets=True)
    assert [b["index"].tolist() for b in got] != stream_indices(fresh, 12)  # restoring mattered


def test_eval_batches_cover_each_index_once_sorted_by_length():
    lengths = [(i * 13) % 23 + 1 for i in range(50)]
    split = synthetic_split(lengths)
    batches = list(eval_batches(split, 16, pad_id=0))
    assert [len(b["index"]) for b in batches] == [16, 16, 16, 2]
    flat = [i for b in batches for i in b["index"].tolist()]
    assert sorted(flat) == list(range(50))
    assert [lengths[i] for i in flat] == sorted(lengths)
    for b in batches:
        assert b["input_ids"].shape[1] == max(lengths[i] for i in b["index"].tolist())
        assert torch.equal(b["labels"], split.labels[b["index"]])


@pytest.mark.real
def test_eval_batches_on_sst(sst_train):
    batches = list(eval_batches(sst_train, 128, pad_id=0))
    flat = torch.cat([b["index"] for b in batches]).tolist()
    assert sorted(flat) == list(range(len(sst_train)))
    lengths = sst_train.lengths()
    assert [lengths[i] for i in flat] == sorted(lengths)


# -- the array-backed batches equal the list-based ones they replaced ----------------------------

def list_pass_order(lengths, batch_size, generator, buckets):
    """The batching of the list-based data layer (before issue 14), kept as the reference."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if not buckets:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    chunk = 50 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        piece = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        batches += [piece[i:i + batch_size] for i in range(0, len(piece), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def list_collate(ids, types, labels, indices, pad_id):
    lengths = [len(ids[i]) for i in indices]
    width = max(lengths)
    return {"input_ids": torch.tensor([ids[i] + [pad_id] * (width - n) for i, n in zip(indices, lengths)]),
            "token_type_ids": torch.tensor([types[i] + [0] * (width - n) for i, n in zip(indices, lengths)]),
            "attention_mask": (torch.arange(width) < torch.tensor(lengths)[:, None]).long(),
            "labels": labels[indices], "index": torch.tensor(indices)}


@pytest.mark.parametrize("buckets", [False, True])
@pytest.mark.parametrize("rows,batch_size", [(1000, 8), (3457, 32), (64, 64)])
def test_array_batches_equal_the_list_based_batches(rows, batch_size, buckets):
    rng = torch.Generator().manual_seed(rows)
    lengths = torch.randint(2, 40, (rows,), generator=rng).tolist()  # many ties: the sort must be stable
    ids = [torch.randint(0, 30000, (n,), generator=rng).tolist() for n in lengths]
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]
    labels = torch.arange(rows) % 5
    split = Split("t", "train", Path("x"), [str(i) for i in range(rows)], [Tokens.from_lists(ids, types)], labels)
    for seed in (1, 2):
        new = pass_order(split.lengths(), batch_size, torch.Generator().manual_seed(seed), buckets)
        old = list_pass_order(lengths, batch_size, torch.Generator().manual_seed(seed), buckets)
        assert [b.tolist() for b in new] == old
        for batch in old[:20]:
            got, want = collate(split, batch, 0), list_collate(ids, types, labels, batch, 0)
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
