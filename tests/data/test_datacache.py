"""The tokenized cache: reused when nothing that decides it changed, rebuilt when anything did,
never trusted when damaged, and never left half-written."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mtbert.model.build import data_cache, make
from mtbert.data.cache import Cache
from mtbert.base.errors import DataError, MtbertError
from mtbert.config.spec import structure_spec, unstructure

from helpers import task_columns as columns, tokenized_split as load, toy_data, toy_spec

@pytest.fixture
def tok(tiny_encoder):
    return tiny_encoder.tokenizer


def sst_file(path: Path, rows: int = 40, word: str = "good") -> Path:
    lines = ["id\tsentence\tlabel"] + [f"r{i}\t{word} film number {i}\t{i % 5}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def same(a, b) -> bool:
    return (list(a.ids) == list(b.ids) and torch.equal(a.labels, b.labels)
            and all(np.array_equal(p.input_ids.values, q.input_ids.values)
                    and np.array_equal(p.input_ids.offsets, q.input_ids.offsets)
                    and np.array_equal(p.token_type_ids.values, q.token_type_ids.values)
                    for p, q in zip(a.sequences, b.sequences)))


def entries(root: Path) -> list[Path]:
    """What the cache holds besides its build locks (.locks/, kept: an OS lock file is not a temporary)."""
    return sorted(p for p in root.iterdir() if p.name != ".locks") if root.is_dir() else []


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
    assert isinstance(second.sequences[0].input_ids.values, np.memmap)
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
    assert changed.sequences[0].input_ids[0][1] == tok.convert_tokens_to_ids("bad")


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


# -- issue 26: the key is the bytes tokenized; no stale, foreign or half-built entry is ever used --

class RewritingMidway:
    """The real reader, except that after ``after`` rows it rewrites the file it reads with
    ``content`` (once): data regenerated while a run tokenizes it."""

    def __init__(self, real, content: str, after: int = 10):
        self.real, self.content, self.after, self.done = real, content, after, False

    def rows(self, path):
        for n, row in enumerate(self.real.rows(path)):
            if n == self.after and not self.done:
                self.done = True
                Path(path).write_text(self.content)
            yield row

    def locate(self, path):
        return self.real.locate(path)

    def fingerprint(self, path):
        return self.real.fingerprint(path)


def labelled(path: Path, label: int, rows: int = 40) -> str:
    text = "\n".join(["id\tsentence\tlabel"] + [f"r{i}\tfilm number {i}\t{label}" for i in range(rows)]) + "\n"
    path.write_text(text)
    return text


def test_a_file_rewritten_while_it_is_tokenized_is_read_again_and_keyed_by_what_was_read(registry, tok, tmp_path):
    """v1 (every label 0) is replaced by v2 (every label 4) after 10 rows were read: the entry must
    not hold a mix, nor v2's tokens under v1's key (a later run on v1 trained on v2's labels)."""
    path, cache = tmp_path / "a.tsv", Cache(tmp_path / "cache")
    labelled(path, 0)
    v2 = labelled(tmp_path / "v2.tsv", 4)
    reader = RewritingMidway(make(registry, columns(registry).reader), v2)
    split = load(path, registry, tok, cache, reading=reader)
    assert reader.done and split.labels.tolist() == [4] * 40  # what the file holds now, read whole
    labelled(path, 0)  # v1 again: its own entry, its own labels
    again = load(path, registry, tok, cache)
    assert not again.cached and again.labels.tolist() == [0] * 40
    assert load(path, registry, tok, cache).labels.tolist() == [0] * 40


def test_the_tokenizer_fingerprint_does_not_change_as_it_tokenizes(registry, tok, tmp_path):
    """transformers writes the call's truncation settings into the backend tokenizer: the cache
    key changed after the first non-ASCII text, and the same spec wrote a new entry every run."""
    from mtbert.data.splits import tokenizer_fingerprint

    before = tokenizer_fingerprint(tok)
    tok(["Ça a été très bien, naïve café"], truncation=True, max_length=8)
    assert tokenizer_fingerprint(tok) == before
    path, cache = tmp_path / "a.tsv", Cache(tmp_path / "cache")
    path.write_text("id\tsentence\tlabel\n" + "".join(f"r{i}\tcafé numéro {i}\t{i % 5}\n" for i in range(12)))
    load(path, registry, tok, cache)
    assert load(path, registry, tok, cache).cached and len(entries(cache.root)) == 1


@pytest.mark.parametrize("junk", ["empty_directory", "a_file", "meta_without_labels"])
def test_what_is_no_entry_at_an_entrys_path_is_replaced(registry, tok, tmp_path, junk):
    """A directory without meta.json, a file, or a meta.json that does not describe a split at the
    entry's path: rebuilt, where it blocked every later run with a 'free some space' hint or
    ended in a KeyError."""
    path, cache = sst_file(tmp_path / "a.tsv"), Cache(tmp_path / "cache")
    first = load(path, registry, tok, cache)
    entry = entries(cache.root)[0]
    import json
    import shutil
    if junk == "meta_without_labels":
        meta = json.loads((entry / "meta.json").read_text())
        del meta["arrays"]["labels"]
        (entry / "meta.json").write_text(json.dumps(meta))
    else:
        shutil.rmtree(entry)
        entry.mkdir() if junk == "empty_directory" else entry.write_text("not an entry")
    rebuilt = load(path, registry, tok, cache)
    assert not rebuilt.cached and same(first, rebuilt)
    assert load(path, registry, tok, cache).cached and len(entries(cache.root)) == 1


def test_a_full_disk_while_an_entry_is_written_is_one_message_and_leaves_nothing(registry, tok, tmp_path,
                                                                                   monkeypatch):
    import errno

    from mtbert.data import cache as cache_module

    path, cache = sst_file(tmp_path / "a.tsv", rows=40), Cache(tmp_path / "cache")

    def full(self, name, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.FileSink, "append", full)
    with pytest.raises(MtbertError) as error:
        load(path, registry, tok, cache)
    assert "No space left on device" in str(error.value) and "fix:" in str(error.value)
    assert not cache.root.exists() or entries(cache.root) == []


def test_temporaries_of_dead_builders_are_swept_and_a_live_ones_kept(registry, tok, tmp_path):
    import subprocess
    import sys

    cache = Cache(tmp_path / "cache")
    cache.root.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = cache.root / f".abc.tmp-{dead}-0000aaaa"
    live = cache.root / f".abd.tmp-{os.getpid()}-0000bbbb"
    for d in (stale, live):
        d.mkdir()
        (d / "ids0.bin").write_bytes(b"x")
    load(sst_file(tmp_path / "a.tsv"), registry, tok, cache)
    assert not stale.exists() and live.exists()


def test_builders_of_one_entry_take_turns(registry, tok, tmp_path):
    """Two threads load the same split at once: one tokenizes, the other maps its entry."""
    import threading

    path, cache = sst_file(tmp_path / "a.tsv", rows=200), Cache(tmp_path / "cache")
    real = make(registry, columns(registry).reader)
    reads = []

    class Counting:
        def rows(self, p):
            reads.append(1)
            yield from real.rows(p)

        def locate(self, p):
            return real.locate(p)

        def fingerprint(self, p):
            return real.fingerprint(p)

    results = []
    threads = [threading.Thread(target=lambda: results.append(load(path, registry, tok, cache, reading=Counting())))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and len(reads) == 1 and sorted(r.cached for r in results) == [False, True]
    assert same(*results) and len(entries(cache.root)) == 1


BUILD = """
import sys, time
sys.path.insert(0, {tests!r})
from mtbert.plugin.loading import default_registry
from mtbert.data.cache import Cache
from mtbert.model.build import make
from mtbert.config.spec import structure_component
from helpers import TINY_ENCODER, tokenized_split as load
registry = default_registry()
tok = make(registry, structure_component("encoders", TINY_ENCODER, registry)).tokenizer
import mtbert.data.cache as cache_module
real = cache_module.FileSink.append
def slow(self, name, array):  # a build long enough to be caught in the middle
    time.sleep(0.05)
    return real(self, name, array)
cache_module.FileSink.append = slow
print("building", flush=True)
load({path!r}, registry, tok, Cache({cache!r}))
"""


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_signal_while_an_entry_is_built_leaves_no_temporary_after_the_next_run(registry, tok, tmp_path,
                                                                                  signal_name):
    """A real process stopped mid-build: SIGINT cleans up at once; after SIGKILL or SIGTERM (no handler
    outside training) the next run sweeps the dead builder's temporary and builds the entry whole."""
    import signal
    import subprocess
    import sys
    import time

    path, cache = sst_file(tmp_path / "a.tsv", rows=3000), Cache(tmp_path / "cache")
    tests = str(Path(__file__).resolve().parents[1])
    code = BUILD.format(tests=tests, path=str(path), cache=str(cache.root))
    builder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert builder.stdout.readline().strip() == "building"
    deadline = time.monotonic() + 60
    while not any(".tmp-" in p.name for p in entries(cache.root)):  # the temporary entry exists: mid-build
        assert time.monotonic() < deadline and builder.poll() is None, builder.stderr.read()
        time.sleep(0.02)
    builder.send_signal(getattr(signal, signal_name))
    builder.wait(timeout=60)
    assert builder.returncode != 0
    if signal_name == "SIGINT":
        assert entries(cache.root) == []  # KeyboardInterrupt removed its own temporary
    split = load(path, registry, tok, cache)
    assert not split.cached and len(split) == 3000
    assert [p.name for p in entries(cache.root) if ".tmp-" in p.name] == [] and len(entries(cache.root)) == 1
