"""The tokenized cache: reused when nothing that decides it changed, rebuilt when anything did,
never trusted when damaged, and never left half-written."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mtbert.model.build import data_cache, label_spec, make
from mtbert.data.splits import load_split
from mtbert.data.cache import Cache
from mtbert.base.errors import DataError, MtbertError
from mtbert.config.spec import SpecStructurer, TaskData, structure_component, structure_spec, unstructure

from helpers import toy_data, toy_spec

CLASSES5 = {"name": "classifier", "num_labels": 5}


@pytest.fixture
def tok(tiny_encoder):
    return tiny_encoder.tokenizer


def columns(registry, **data) -> TaskData:
    structurer = SpecStructurer(registry)
    result = structurer.structure_attrs(TaskData, data, "data")
    assert not structurer.problems
    return result


def load(path, registry, tok, cache, *, max_length=32, reading=None, **data):
    cols = columns(registry, **data)
    reader = reading or make(registry, cols.reader)
    labels = label_spec(registry, structure_component("heads", CLASSES5, registry))
    return load_split("t", "train", path, reader, cols, labels, tok, max_length, "cross", True,
                      cache=cache, reader_id=repr(cols.reader))


def sst_file(path: Path, rows: int = 40, word: str = "good") -> Path:
    lines = ["id\tsentence\tlabel"] + [f"r{i}\t{word} film number {i}\t{i % 5}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def same(a, b) -> bool:
    return (list(a.ids) == list(b.ids) and torch.equal(a.labels, b.labels)
            and all(np.array_equal(p.input_ids.values, q.input_ids.values)
                    and np.array_equal(p.input_ids.offsets, q.input_ids.offsets)
                    and np.array_equal(p.token_type_ids.values, q.token_type_ids.values)
                    for p, q in zip(a.parts, b.parts)))


def entries(root: Path) -> list[Path]:
    return sorted(root.iterdir()) if root.is_dir() else []


class Refusing:
    """A reader that must not be asked for rows (a cache hit reads no file)."""

    def __init__(self, real):
        self.real = real

    def rows(self, path):
        raise AssertionError("the file was read again")

    def locate(self, path):
        return self.real.locate(path)

    def fingerprint(self, path):
        return self.real.fingerprint(path)


def test_second_load_maps_the_entry_without_reading_the_file(registry, tok, tmp_path):
    path, cache = sst_file(tmp_path / "a.tsv"), Cache(tmp_path / "cache")
    first = load(path, registry, tok, cache)
    assert not first.cached and len(entries(cache.root)) == 1
    second = load(path, registry, tok, cache, reading=Refusing(make(registry, columns(registry).reader)))
    assert second.cached and same(first, second)
    assert isinstance(second.parts[0].input_ids.values, np.memmap)
    uncached = load(path, registry, tok, None)
    assert not uncached.cached and same(first, uncached)


def test_anything_that_decides_the_tokens_keys_a_new_entry(registry, tok, tmp_path):
    path, cache = sst_file(tmp_path / "a.tsv"), Cache(tmp_path / "cache")
    load(path, registry, tok, cache)
    load(path, registry, tok, cache, max_length=16)
    load(path, registry, tok, cache, limit=10)
    load(path, registry, tok, cache, reader={"name": "tsv", "delimiter": "\t"})
    assert len(entries(cache.root)) == 4
    sst_file(path, word="bad")  # same size, other content
    changed = load(path, registry, tok, cache)
    assert not changed.cached and len(entries(cache.root)) == 5
    assert changed.parts[0].input_ids[0][1] == tok.convert_tokens_to_ids("bad")


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta", "missing"])
def test_a_damaged_entry_is_rebuilt_not_trusted(registry, tok, tmp_path, caplog, damage):
    path, cache = sst_file(tmp_path / "a.tsv"), Cache(tmp_path / "cache")
    good = load(path, registry, tok, cache)
    good = load(path, registry, tok, None)  # in memory: the first one maps the file damaged below
    entry = entries(cache.root)[0]
    ids = entry / "ids0.bin"
    if damage == "flip":
        data = bytearray(ids.read_bytes())
        data[5] ^= 1
        ids.write_bytes(bytes(data))
    elif damage == "truncate":
        ids.write_bytes(ids.read_bytes()[:-4])
    elif damage == "meta":
        (entry / "meta.json").write_text("{not json")
    else:
        ids.unlink()
    with caplog.at_level(logging.WARNING, logger="mtbert.data.cache"):
        again = load(path, registry, tok, cache)
    assert "damaged" in caplog.text and "rebuilding" in caplog.text
    assert not again.cached and same(good, again)
    assert load(path, registry, tok, cache).cached  # and the rebuilt entry is sound


def test_a_malformed_row_leaves_no_entry_and_no_temporary_files(registry, tok, tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("id\tsentence\tlabel\n" + "".join(f"r{i}\tok\t1\n" for i in range(20000)) + "r-x\tok\t9\n")
    cache = Cache(tmp_path / "deep" / "cache")
    with pytest.raises(DataError) as info:
        load(path, registry, tok, cache)
    assert info.value.line == 20002
    assert not (tmp_path / "deep").exists()  # the directories it made are gone too


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(registry, tok, tmp_path, monkeypatch):
    import errno

    from mtbert.data import cache as datacache

    def full(self, name, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datacache.FileSink, "append", full)
    cache = Cache(tmp_path / "cache")
    with pytest.raises(MtbertError) as info:
        load(sst_file(tmp_path / "a.tsv"), registry, tok, cache)
    assert "No space left on device" in str(info.value) and "data.cache = false" in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_directory_names_the_fix(registry, tok, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MtbertError) as info:
        load(sst_file(tmp_path / "a.tsv"), registry, tok, Cache(blocker / "cache"))
    assert "MTBERT_CACHE" in str(info.value) and "data.cache = false" in str(info.value)


def test_where_the_cache_lives(registry, tmp_path, monkeypatch):
    spec = toy_spec(registry, toy_data(tmp_path / "data", n=8))
    data = unstructure(spec)
    monkeypatch.delenv("MTBERT_CACHE")
    assert data_cache(structure_spec({**data, "out": str(tmp_path / "runs")}, registry)).root == \
        tmp_path / "runs" / ".cache"
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "env"))
    assert data_cache(spec).root == tmp_path / "env"
    explicit = structure_spec({**data, "data": {**data["data"], "cache_dir": str(tmp_path / "mine")}}, registry)
    assert data_cache(explicit).root == tmp_path / "mine"
    off = structure_spec({**data, "data": {**data["data"], "cache": False}}, registry)
    assert data_cache(off) is None


def test_a_run_with_the_cache_off_writes_no_cache(registry, tmp_path, monkeypatch):
    from mtbert.runs.rundir import RunDir
    from mtbert.training.loop import train

    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "cache"))
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=40), steps=2))
    spec = structure_spec({**data, "data": {**data["data"], "cache": False}}, registry)
    train(spec, registry, RunDir.create(spec, tmp_path / "run"), progress=False)
    assert not (tmp_path / "cache").exists()


def test_same_weights_from_the_cache_as_from_the_file(registry, tmp_path, monkeypatch):
    """A run on freshly tokenized data, a run mapping the cache, and a run with the cache off
    train bitwise the same weights."""
    from safetensors.torch import load_file

    from mtbert.runs.rundir import RunDir
    from mtbert.training.loop import train

    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "cache"))
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=80), steps=6, length_buckets=True))
    weights = []
    for name, cache in [("fresh", True), ("mapped", True), ("off", False)]:
        spec = structure_spec({**data, "data": {**data["data"], "cache": cache}}, registry)
        run = RunDir.create(spec, tmp_path / name)
        train(spec, registry, run, progress=False)
        weights.append(load_file(str(run.checkpoint / "model.safetensors")))
    assert len(entries(tmp_path / "cache")) == 2  # one per file: train and dev read the same file
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])
