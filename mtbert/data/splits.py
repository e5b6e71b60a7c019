"""Task data: read rows, check labels, tokenize once into arrays, and batch with dynamic padding.

Rows with an empty label are skipped and counted (the Quora files have two
such rows each); anything malformed stops the run before training with the
file, line and problem (DataError). A file is read in one pass, a chunk of
rows at a time through the fast tokenizer's batch API, into flat arrays
(mtbert/data/tokenized.py) that are, by default, written to the tokenized cache
(mtbert/data/cache.py) and memory-mapped: later runs with the same file,
tokenizer and settings map them without reading the file again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import weakref
from itertools import chain
from pathlib import Path
from typing import Iterator

import attrs
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mtbert.data.cache import Cache, MemorySink, file_fingerprint, key_of
from mtbert.base.distributed import shard
from mtbert.base.errors import DataError
from mtbert.data.fasttok import FastBertEncoder
from mtbert.plugin.interfaces import LabelSpec
from mtbert.data.tokenized import Strings, Tokens

log = logging.getLogger(__name__)

CHUNK = 8192  # rows read and tokenized at a time: bounded memory, and big enough for the batch API


@attrs.define
class Split:
    """One file of one task, read, checked and tokenized."""

    task: str
    name: str  # train / dev / test
    path: Path
    ids: Strings
    sequences: list[Tokens]  # one Tokens (single text, or a cross-encoded pair) or two (bi-encoded pair)
    labels: Tensor | None  # None for unlabeled (test) files
    skipped: int = 0  # rows dropped for an empty label
    cached: bool = False  # mapped from the tokenized cache rather than tokenized by this run
    fingerprint: str | None = None  # the reader's fingerprint of the bytes tokenized (None: given in memory)

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        """Tokens per example, all its sequences together."""
        return sum(sequence.lengths() for sequence in self.sequences)


# -- labels ------------------------------------------------------------------------------

def parse_label(raw, spec: LabelSpec, names: list[str] | None):
    """One label value -> int class / float score; ValueError says what is wrong."""
    if isinstance(raw, bool):
        raw = int(raw)
    text = raw.strip() if isinstance(raw, str) else raw
    if names is not None and isinstance(text, str) and text not in names and _class_number(text, len(names)):
        names = None  # numeric labels with names for them (the course's SST file): the number is the class
    if names is not None and isinstance(text, str):
        if text not in names:
            raise ValueError(f"label {_short(text)} is not one of the label_names {names} (nor a class "
                             f"number 0..{len(names) - 1})")
        index = names.index(text)
        if index >= (2 if spec.kind == "binary" else spec.num_labels or 0):
            raise ValueError(f"label {text!r} is class {index}, beyond the head's classes")
        return index
    if spec.real_valued:
        try:
            value = float(text)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"label {_short(raw)} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"label {_short(raw)} is not finite")
        if spec.low is not None and not spec.low <= value <= spec.high:
            raise ValueError(f"label {value} is outside the head's range [{spec.low}, {spec.high}]")
        return value
    try:
        number = float(text)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"label {_short(raw)} is not a class number (set data.label_names for text labels)") \
            from None
    count = 2 if spec.kind == "binary" else spec.num_labels
    if not math.isfinite(number) or number != int(number) or not 0 <= number < count:
        raise ValueError(f"label {_short(raw)} is not a class in 0..{count - 1}")
    return int(number)


def _class_number(text: str, count: int) -> bool:
    """Whether ``text`` is a whole number naming one of ``count`` classes ("3", "3.0")."""
    try:
        number = float(text)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(number) and number == int(number) and 0 <= number < count


def _short(raw) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_empty(raw) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


# -- reading -------------------------------------------------------------------------------

@attrs.define
class Rows:
    ids: list[str]
    texts: list[str]
    pairs: list[str] | None
    labels: list | None
    skipped: int
    explicit_ids: bool = True  # False: the file has no id column and the ids are the row numbers


def read_chunks(path: Path, reader, columns, label_spec: LabelSpec | None, limit: int | None,
                size: int = CHUNK) -> Iterator[Rows]:
    """Read a file through its reader and check every row, ``size`` checked rows at a time;
    label_spec None = no labels. ``skipped`` of each chunk counts the rows it dropped."""
    wanted = {"text": columns.text}
    if columns.text_pair:
        wanted["text_pair"] = columns.text_pair
    if label_spec is not None:
        wanted["label"] = columns.label
    if columns.id:
        wanted["id"] = columns.id
    duplicates = _DuplicateIds(path, reader) if columns.id else None
    taken = 0  # rows kept or skipped so far (what ``limit`` counts)
    count = 0  # rows kept so far (the ids of a file without an id column)

    def fresh() -> Rows:
        return Rows([], [], [] if columns.text_pair else None, [] if label_spec else None, 0, bool(columns.id))

    rows = fresh()
    for line, row in reader.rows(path):
        if limit is not None and taken >= limit:
            break
        taken += 1
        missing = [col for col in wanted.values() if col not in row]
        if missing:
            raise DataError(path, line, f"no column {missing[0]!r} (columns here: {sorted(row)})",
                            "map the task's columns in the spec (data.text, data.label ...) "
                            "or check the file's delimiter")
        if label_spec is not None and _is_empty(row[columns.label]):
            rows.skipped += 1
            continue
        for key in ("text", "text_pair"):
            if key in wanted and not isinstance(row[wanted[key]], str):
                raise DataError(path, line, f"column {wanted[key]!r} holds {_short(row[wanted[key]])}, not text")
            if key in wanted and not _encodable(row[wanted[key]]):
                raise DataError(path, line, f"column {wanted[key]!r} holds invalid Unicode (a lone surrogate)")
        ident = str(row[columns.id]).strip() if columns.id else str(count)
        if duplicates is not None:
            duplicates.add(ident, line)
        if label_spec is not None:
            try:
                rows.labels.append(parse_label(row[columns.label], label_spec, columns.label_names))
            except ValueError as exc:
                raise DataError(path, line, str(exc)) from None
        rows.ids.append(ident)
        rows.texts.append(row[columns.text].strip())
        if columns.text_pair:
            rows.pairs.append(row[columns.text_pair].strip())
        count += 1
        if len(rows.ids) == size:
            if duplicates is not None:
                duplicates.check_chunk()
            yield rows
            rows = fresh()
    if duplicates is not None:
        duplicates.check_chunk()
        duplicates.check_all(columns.id)
    if rows.ids or rows.skipped:
        yield rows


class _DuplicateIds:
    """Unique ids without holding every id string: an exact check within each chunk, and one
    over the whole file on 8-byte hashes; a clash of hashes is confirmed by reading the ids of
    the clashing lines again (rare: only when the file has a duplicate)."""

    def __init__(self, path: Path, reader):
        self.path, self.reader = path, reader
        self.chunk: dict[str, int] = {}
        self.hashes: list[np.ndarray] = []
        self.lines: list[np.ndarray] = []

    def add(self, ident: str, line: int) -> None:
        if ident in self.chunk:
            raise DataError(self.path, line, f"duplicate id {ident!r} (first on line {self.chunk[ident]})",
                            "ids name the rows of the prediction files, so they must be unique")
        self.chunk[ident] = line

    def check_chunk(self) -> None:
        if self.chunk:
            self.hashes.append(np.fromiter((_hash64(i) for i in self.chunk), dtype=np.int64, count=len(self.chunk)))
            self.lines.append(np.fromiter(self.chunk.values(), dtype=np.int64, count=len(self.chunk)))
            self.chunk = {}

    def check_all(self, id_column: str) -> None:
        if len(self.hashes) < 2:
            return  # one chunk: checked exactly already
        hashes, lines = np.concatenate(self.hashes), np.concatenate(self.lines)
        order = np.argsort(hashes, kind="stable")
        same = hashes[order][1:] == hashes[order][:-1]
        if not same.any():
            return
        suspects = set(lines[order[1:][same]].tolist()) | set(lines[order[:-1][same]].tolist())
        seen: dict[str, int] = {}
        for line, row in self.reader.rows(self.path):
            if line in suspects:
                ident = str(row[id_column]).strip()
                if ident in seen:
                    raise DataError(self.path, line, f"duplicate id {ident!r} (first on line {seen[ident]})",
                                    "ids name the rows of the prediction files, so they must be unique")
                seen[ident] = line


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little", signed=True)


def read_rows(path: Path, reader, columns, label_spec: LabelSpec | None, limit: int | None) -> Rows:
    """The whole file's checked rows at once (for small files: the report's dev labels)."""
    whole = Rows([], [], [] if columns.text_pair else None, [] if label_spec else None, 0, bool(columns.id))
    for rows in read_chunks(path, reader, columns, label_spec, limit):
        whole.ids += rows.ids
        whole.texts += rows.texts
        if whole.pairs is not None:
            whole.pairs += rows.pairs
        if whole.labels is not None:
            whole.labels += rows.labels
        whole.skipped += rows.skipped
    return whole


# -- tokenizing ----------------------------------------------------------------------------

def encode(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
           pair_encoding: str) -> list[dict]:
    """A chunk's token parts: one ([CLS] a [SEP] b [SEP] for a cross-encoded pair), or two for a bi-encoded pair."""
    fast = _fast_encoder(tokenizer)

    def tokenize(a, b):
        if fast is not None:
            ids, types = fast.encode(a, b, max_length)
            return {"input_ids": ids, "token_type_ids": types}
        return tokenizer(a, b, truncation=True, max_length=max_length, return_token_type_ids=True,
                         return_attention_mask=False)
    if pairs is not None and pair_encoding == "bi":
        return [tokenize(texts, None), tokenize(pairs, None)]
    return [tokenize(texts, pairs)]


_FAST: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fast_encoder(tokenizer) -> FastBertEncoder | None:
    """The ASCII fast path for this tokenizer (mtbert/data/fasttok.py), made once per tokenizer."""
    try:
        if tokenizer not in _FAST:
            _FAST[tokenizer] = FastBertEncoder.for_tokenizer(tokenizer)
        return _FAST[tokenizer]
    except TypeError:  # not weak-referenceable: build it each time
        return FastBertEncoder.for_tokenizer(tokenizer)


def _append_chunk(sink, rows: Rows, encoded: list[dict], ends: list[int], real_valued: bool) -> None:
    """One chunk's arrays onto the sink; ``ends`` is each part's running token count."""
    for p, part in enumerate(encoded):
        lengths = np.fromiter((len(r) for r in part["input_ids"]), dtype=np.int64, count=len(rows.ids))
        total = int(lengths.sum())
        sink.append(f"ids{p}", np.fromiter(chain.from_iterable(part["input_ids"]), dtype=np.int32, count=total))
        sink.append(f"types{p}", np.fromiter(chain.from_iterable(part["token_type_ids"]), dtype=np.int8,
                                             count=total))
        sink.append(f"offsets{p}", ends[p] + np.cumsum(lengths))
        ends[p] += total
    if rows.labels is not None:
        sink.append("labels", np.asarray(rows.labels, dtype=np.float32 if real_valued else np.int64))
    if rows.explicit_ids:
        encoded_ids = [i.encode("utf-8") for i in rows.ids]
        sink.append("rowids", np.frombuffer(b"".join(encoded_ids), dtype=np.uint8))
        lengths = np.fromiter((len(b) for b in encoded_ids), dtype=np.int64, count=len(encoded_ids))
        sink.append("rowid_offsets", ends[-1] + np.cumsum(lengths))
        ends[-1] += int(lengths.sum())


def _tokenize_file(sink, path, reader, columns, label_spec, tokenizer, max_length, pair_encoding, labeled,
                   progress: bool, what: str) -> dict:
    """Read, check and tokenize the whole file onto ``sink``; returns the split's meta."""
    parts = 2 if columns.text_pair and pair_encoding == "bi" else 1
    ends = [0] * (parts + 1)  # running token counts per part, then the id bytes
    for p in range(parts):
        sink.append(f"offsets{p}", np.zeros(1, dtype=np.int64))
    if columns.id:
        sink.append("rowid_offsets", np.zeros(1, dtype=np.int64))
    count = skipped = 0
    bar = tqdm(desc=f"reading {what}", unit=" rows", disable=not progress, delay=1.0, leave=False)
    try:
        for rows in read_chunks(path, reader, columns, label_spec if labeled else None, columns.limit):
            skipped += rows.skipped
            if rows.ids:
                encoded = encode(tokenizer, rows.texts, rows.pairs, max_length, pair_encoding)
                _append_chunk(sink, rows, encoded, ends, label_spec.real_valued)
            count += len(rows.ids)
            bar.update(len(rows.ids) + rows.skipped)
    finally:
        bar.close()
    if not count:
        raise DataError(path, None, "no examples" + (f" ({skipped} rows with empty labels)" if skipped
                                                    else " (the file has a header but no rows)"))
    return {"rows": count, "skipped": skipped, "parts": parts, "labeled": labeled, "explicit_ids": bool(columns.id)}


def _split_from(task, split, path, arrays: dict[str, np.ndarray], meta: dict, cached: bool,
                fingerprint: str | None = None) -> Split:
    sequences = [Tokens(arrays[f"ids{p}"], arrays[f"types{p}"], arrays[f"offsets{p}"]) for p in range(meta["parts"])]
    ids = Strings(meta["rows"], arrays.get("rowids"), arrays.get("rowid_offsets")) if meta["explicit_ids"] \
        else Strings(meta["rows"])
    labels = torch.from_numpy(arrays["labels"]) if meta["labeled"] else None
    return Split(task, split, Path(path), ids, sequences, labels, meta["skipped"], cached, fingerprint)


def texts_split(task: str, texts: list[str], pairs: list[str] | None, tokenizer, max_length: int,
                pair_encoding: str) -> Split:
    """An unlabeled split of sentences given in memory (the Python API's inputs), ids 0..n-1."""
    rows = Rows([str(i) for i in range(len(texts))], texts, pairs, None, 0, explicit_ids=False)
    sink, ends = MemorySink(), [0, 0, 0]
    encoded = encode(tokenizer, texts, pairs, max_length, pair_encoding)
    for p in range(len(encoded)):
        sink.append(f"offsets{p}", np.zeros(1, dtype=np.int64))
    _append_chunk(sink, rows, encoded, ends, False)
    meta = {"rows": len(texts), "skipped": 0, "parts": len(encoded), "labeled": False, "explicit_ids": False}
    return _split_from(task, "input", Path("<inputs>"), sink.arrays(), meta, False)


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides the token ids: the fast tokenizer's definition (or the vocabulary and settings).

    Without its "truncation" and "padding" settings: transformers writes the call's settings into
    the backend tokenizer when it tokenizes (mtbert passes max_length to every call, and the cache
    key holds it), so with them the same tokenizer had another fingerprint after the first text it
    tokenized, and the same spec wrote a new cache entry on every run."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        text = json.dumps(definition, sort_keys=True)
    else:
        text = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\0{text}".encode()).hexdigest()


def sound(arrays: dict, meta: dict) -> bool:
    """Whether a cache entry holds what a split is made of (a damaged or foreign meta.json is not)."""
    try:
        parts = meta["parts"]
        needed = [f"{a}{p}" for p in range(parts) for a in ("ids", "types", "offsets")]
        needed += ["labels"] * bool(meta["labeled"]) + ["rowids", "rowid_offsets"] * bool(meta["explicit_ids"])
        return (isinstance(meta["rows"], int) and isinstance(meta["skipped"], int) and parts in (1, 2)
                and all(name in arrays for name in needed))
    except (KeyError, TypeError):
        return False


CHANGED_RETRIES = 3  # reads of a file that keeps changing while it is read, before giving up


def _through_cache(cache: Cache, path, reader, reader_id, tokenizer, max_length, pair_encoding, labeled,
                   label_spec, columns, fill, what):
    """A split's arrays from the cache, built when needed, keyed by the very bytes tokenized.

    The key holds the file's fingerprint; a file rewritten while it is read (data regenerated as a
    sweep starts) would put one version's tokens under another's key, and every later run on that
    version would train on the wrong labels, silently. So the fingerprint is taken again after the
    file was tokenized: if it changed, the entry is not kept and the file is read again."""
    settings = {"reader": reader_id, "tokenizer": tokenizer_fingerprint(tokenizer), "max_length": max_length,
                "pair_encoding": pair_encoding, "labeled": labeled, "labels": repr(label_spec),
                "columns": [columns.text, columns.text_pair, columns.label, columns.id, columns.label_names,
                            columns.limit]}
    for _ in range(CHANGED_RETRIES):
        before = reader.fingerprint(path)
        key = key_of({"file": before, **settings})
        with cache.turn(key):  # builders of one entry take turns: the first builds, the others map it
            found = cache.load(key)
            if found is not None and not sound(*found):
                log.warning("tokenized cache %s holds no split; rebuilding it", cache.root / key)
                cache.discard(key)
                found = None
            if found is not None:
                log.debug("%s: mapped tokenized cache entry %s", what, cache.root / key)
                return found[0], found[1], True, before

            def checked_fill(sink):
                meta = fill(sink)
                if reader.fingerprint(path) != before:
                    raise FileChanged
                return meta

            try:
                arrays, meta = cache.build(key, checked_fill)
            except FileChanged:
                log.warning("%s: %s changed while it was read; reading it again", what, path)
                continue
        log.debug("%s: wrote tokenized cache entry %s", what, cache.root / key)
        return arrays, meta, False, before
    raise DataError(path, None, f"the file changed each of the {CHANGED_RETRIES} times it was read "
                    "(is something still writing it?)", "run again once the file is complete")


class FileChanged(Exception):
    """The file's fingerprint after tokenizing it is not the one it had before."""


def load_split(task: str, split: str, path: Path, reader, columns, label_spec: LabelSpec,
               tokenizer, max_length: int, pair_encoding: str, labeled: bool,
               cache: Cache | None = None, reader_id: str = "", progress: bool = False) -> Split:
    """A file read, checked and tokenized; with ``cache``, mapped from its entry when there is one."""
    reader.locate(path)
    what = f"{task} {split}"
    fill = lambda sink: _tokenize_file(sink, path, reader, columns, label_spec, tokenizer,  # noqa: E731
                                       max_length, pair_encoding, labeled, progress, what)
    if cache is None:
        sink = MemorySink()
        fingerprint = reader.fingerprint(path)  # what --resume compares (the file may change between runs)
        meta = fill(sink)
        arrays, cached = sink.arrays(), False
    else:
        arrays, meta, cached, fingerprint = _through_cache(cache, path, reader, reader_id, tokenizer, max_length,
                                                           pair_encoding, labeled, label_spec, columns, fill, what)
    if meta["skipped"]:
        log.info("%s: skipped %d row(s) with an empty label in %s", what, meta["skipped"], path)
    return _split_from(task, split, path, arrays, meta, cached, fingerprint)


# -- batching ------------------------------------------------------------------------------

PART_SUFFIX = ("", "_b")  # batch keys of the first and second sequence of a bi-encoded pair


def collate(split: Split, indices, pad_id: int) -> dict[str, Tensor]:
    """Pad the examples at ``indices`` to the longest among them (dynamic padding)."""
    indices = np.asarray(indices, dtype=np.int64)
    batch: dict[str, Tensor] = {}
    for part, suffix in zip(split.sequences, PART_SUFFIX):
        ids, mask = part.input_ids.padded(indices, pad_id)
        types, _ = part.token_type_ids.padded(indices, 0)
        batch["input_ids" + suffix] = torch.from_numpy(ids)
        batch["token_type_ids" + suffix] = torch.from_numpy(types)
        batch["attention_mask" + suffix] = torch.from_numpy(mask.astype(np.int64))
    index = torch.from_numpy(indices.copy())
    if split.labels is not None:
        batch["labels"] = split.labels[index]
    batch["index"] = index
    return batch


def pass_order(lengths, batch_size: int, generator: torch.Generator, buckets: bool) -> list[np.ndarray]:
    """One shuffled pass over a split as a list of batches of indices.

    With ``buckets``, the shuffled examples are cut into chunks of 50 batches,
    each chunk sorted by length and cut into batches, and the batches are
    shuffled again: batches hold similar lengths (little padding) while the
    order stays random.
    """
    order = torch.randperm(len(lengths), generator=generator).numpy()
    if buckets:
        # one stable sort by (chunk, length) is each chunk sorted by length, ties kept in shuffled order
        lengths = np.asarray(lengths, dtype=np.int64)
        chunk_of = np.arange(len(order)) // (50 * batch_size)
        order = order[np.lexsort((lengths[order], chunk_of))]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if not buckets:
        return batches
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


class TaskStream:
    """An endless supply of training batches for one task, reshuffled each pass.

    The state is (pass number, position), and each pass's order is a pure
    function of (seed, pass number), so a stream can be restored exactly.
    In a run of ``world`` processes, every rank draws the same global batches
    of ``batch_size x world`` examples and keeps its own shard of each
    (``take`` hands back the shard's fraction of its global batch with it);
    global batches too small to give every rank an example are left out.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, pad_id: int, buckets: bool,
                 rank: int = 0, world: int = 1):
        self.split, self.batch_size, self.seed = split, batch_size * world, seed
        self.pad_id, self.buckets, self.rank, self.world = pad_id, buckets, rank, world
        self.lengths = split.lengths()
        self.pass_number, self.position = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.pass_number)
        order = pass_order(self.lengths, self.batch_size, generator, self.buckets)
        return [batch for batch in order if len(batch) >= self.world]

    @property
    def batches_per_pass(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def take(self) -> tuple[dict[str, Tensor], float]:
        """The next batch of this rank, and its share of the global batch (1 in one process): the
        loop weighs the batch's loss by it, so that the average across ranks is the global batch's."""
        if self.position >= len(self._order):
            self.pass_number, self.position = self.pass_number + 1, 0
            self._order = self._make_order()
        indices = self._order[self.position]
        self.position += 1
        mine = shard(indices, self.rank, self.world)
        return collate(self.split, mine, self.pad_id), len(mine) / len(indices)

    def next_batch(self) -> dict[str, Tensor]:
        """The next batch of this rank (``take`` without its share)."""
        return self.take()[0]

    def state_dict(self) -> dict[str, int]:
        return {"pass_number": self.pass_number, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pass_number, self.position = state["pass_number"], state["position"]
        self._order = self._make_order()


def eval_batches(split: Split, batch_size: int, pad_id: int) -> Iterator[dict[str, Tensor]]:
    """Batches sorted by length (fastest to evaluate); ``index`` restores the order."""
    order = np.argsort(split.lengths(), kind="stable")
    for start in range(0, len(order), batch_size):
        yield collate(split, order[start:start + batch_size], pad_id)
