"""Task data: read rows, check labels, tokenize once, and batch with dynamic padding.

Rows with an empty label are skipped and counted (the Quora files have two
such rows each); anything malformed stops the run before training with the
file, line and problem (DataError).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import attrs
import torch
from torch import Tensor

from .distributed import shard
from .errors import DataError
from .interfaces import LabelSpec

log = logging.getLogger(__name__)


@attrs.define
class Tokens:
    """Token ids (and token types) of one sequence per example."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]


@attrs.define
class Split:
    """One file of one task, read, checked and tokenized."""

    task: str
    name: str  # train / dev / test
    path: Path
    ids: list[str]
    parts: list[Tokens]  # one Tokens (single text, or a cross-encoded pair) or two (bi-encoded pair)
    labels: Tensor | None  # None for unlabeled (test) files
    skipped: int = 0  # rows dropped for an empty label

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return [sum(len(p.input_ids[i]) for p in self.parts) for i in range(len(self))]


# -- labels ------------------------------------------------------------------------------

def parse_label(raw, spec: LabelSpec, names: list[str] | None):
    """One label value -> int class / float score; ValueError says what is wrong."""
    if isinstance(raw, bool):
        raw = int(raw)
    text = raw.strip() if isinstance(raw, str) else raw
    if names is not None and isinstance(text, str):
        if text not in names:
            raise ValueError(f"label {_short(text)} is not one of the label_names {names}")
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


def read_rows(path: Path, reader, columns, label_spec: LabelSpec | None, limit: int | None) -> Rows:
    """Read a file through its reader and check every row; label_spec None = no labels."""
    wanted = {"text": columns.text}
    if columns.text_pair:
        wanted["text_pair"] = columns.text_pair
    if label_spec is not None:
        wanted["label"] = columns.label
    if columns.id:
        wanted["id"] = columns.id
    rows = Rows([], [], [] if columns.text_pair else None, [] if label_spec else None, 0)
    seen: dict[str, int] = {}
    for line, row in reader.rows(path):
        if limit is not None and len(rows.texts) + rows.skipped >= limit:
            break
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
        ident = str(row[columns.id]).strip() if columns.id else str(len(rows.ids))
        if ident in seen:
            raise DataError(path, line, f"duplicate id {ident!r} (first on line {seen[ident]})",
                            "ids name the rows of the prediction files, so they must be unique")
        seen[ident] = line
        if label_spec is not None:
            try:
                rows.labels.append(parse_label(row[columns.label], label_spec, columns.label_names))
            except ValueError as exc:
                raise DataError(path, line, str(exc)) from None
        rows.ids.append(ident)
        rows.texts.append(row[columns.text].strip())
        if columns.text_pair:
            rows.pairs.append(row[columns.text_pair].strip())
    return rows


def tokenize(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> Tokens:
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length,
                        return_token_type_ids=True, return_attention_mask=False)
    return Tokens(encoded["input_ids"], encoded["token_type_ids"])


def encode(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, pair_encoding: str) -> list[Tokens]:
    """A split's token parts: one ([CLS] a [SEP] b [SEP] for a cross-encoded pair), or two for a bi-encoded pair."""
    if pairs is not None and pair_encoding == "bi":
        return [tokenize(tokenizer, texts, None, max_length), tokenize(tokenizer, pairs, None, max_length)]
    return [tokenize(tokenizer, texts, pairs, max_length)]


def load_split(task: str, split: str, path: Path, reader, columns, label_spec: LabelSpec,
               tokenizer, max_length: int, pair_encoding: str, labeled: bool) -> Split:
    if not Path(path).is_file():
        raise DataError(path, None, "file not found")
    rows = read_rows(path, reader, columns, label_spec if labeled else None, columns.limit)
    if not rows.ids:
        raise DataError(path, None, "no examples" + (f" ({rows.skipped} rows with empty labels)" if rows.skipped
                                                    else " (the file has a header but no rows)"))
    if rows.skipped:
        log.info("%s %s: skipped %d row(s) with an empty label in %s", task, split, rows.skipped, path)
    parts = encode(tokenizer, rows.texts, rows.pairs, max_length, pair_encoding)
    labels = None
    if rows.labels is not None:
        dtype = torch.float32 if label_spec.real_valued else torch.long
        labels = torch.tensor(rows.labels, dtype=dtype)
    return Split(task, split, Path(path), rows.ids, parts, labels, rows.skipped)


# -- batching ------------------------------------------------------------------------------

PART_SUFFIX = ("", "_b")  # batch keys of the first and second sequence of a bi-encoded pair


def collate(split: Split, indices: list[int], pad_id: int) -> dict[str, Tensor]:
    """Pad the examples at ``indices`` to the longest among them (dynamic padding)."""
    batch: dict[str, Tensor] = {}
    for part, suffix in zip(split.parts, PART_SUFFIX):
        lengths = [len(part.input_ids[i]) for i in indices]
        width = max(lengths)
        # padded as Python lists, then one tensor per field (not one per row: this runs every step)
        batch["input_ids" + suffix] = torch.tensor(
            [part.input_ids[i] + [pad_id] * (width - n) for i, n in zip(indices, lengths)], dtype=torch.long)
        batch["token_type_ids" + suffix] = torch.tensor(
            [part.token_type_ids[i] + [0] * (width - n) for i, n in zip(indices, lengths)], dtype=torch.long)
        batch["attention_mask" + suffix] = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    if split.labels is not None:
        batch["labels"] = split.labels[indices]
    batch["index"] = torch.tensor(indices)
    return batch


def pass_order(lengths: list[int], batch_size: int, generator: torch.Generator,
               buckets: bool) -> list[list[int]]:
    """One shuffled pass over a split as a list of batches of indices.

    With ``buckets``, the shuffled examples are cut into chunks of 50 batches,
    each chunk sorted by length and cut into batches, and the batches are
    shuffled again: batches hold similar lengths (little padding) while the
    order stays random.
    """
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


class TaskStream:
    """An endless supply of training batches for one task, reshuffled each pass.

    The state is (pass number, position), and each pass's order is a pure
    function of (seed, pass number), so a stream can be restored exactly.
    In a run of ``world`` processes, every rank draws the same global batches
    of ``batch_size x world`` examples and keeps its own shard of each
    (``share`` is the shard's fraction of its global batch); global batches
    too small to give every rank an example are left out.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, pad_id: int, buckets: bool,
                 rank: int = 0, world: int = 1):
        self.split, self.batch_size, self.seed = split, batch_size * world, seed
        self.pad_id, self.buckets, self.rank, self.world = pad_id, buckets, rank, world
        self.lengths = split.lengths()
        self.pass_number, self.position, self.share = 0, 0, 1.0
        self._order = self._make_order()

    def _make_order(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.pass_number)
        order = pass_order(self.lengths, self.batch_size, generator, self.buckets)
        return [batch for batch in order if len(batch) >= self.world]

    @property
    def batches_per_pass(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def next_batch(self) -> dict[str, Tensor]:
        if self.position >= len(self._order):
            self.pass_number, self.position = self.pass_number + 1, 0
            self._order = self._make_order()
        indices = self._order[self.position]
        self.position += 1
        mine = shard(indices, self.rank, self.world)
        self.share = len(mine) / len(indices)
        return collate(self.split, mine, self.pad_id)

    def state(self) -> dict[str, int]:
        return {"pass_number": self.pass_number, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        self.pass_number, self.position = state["pass_number"], state["position"]
        self._order = self._make_order()


def eval_batches(split: Split, batch_size: int, pad_id: int) -> Iterator[dict[str, Tensor]]:
    """Batches sorted by length (fastest to evaluate); ``index`` restores the order."""
    lengths = split.lengths()
    order = sorted(range(len(split)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield collate(split, order[start:start + batch_size], pad_id)
