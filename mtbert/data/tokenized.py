"""Tokenized data as flat arrays: a few bytes per token instead of a Python int.

A split's token ids are one flat int32 array with an offsets array (row i
is ``values[offsets[i]:offsets[i + 1]]``); token types are int8 beside it.
The arrays may live in memory or be memory-mapped from the cache
(mtbert/data/cache.py): nothing here cares which. Batches are gathered from
them with one vectorised index, never through per-row Python lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np


def _position(i: int, size: int) -> int:
    """A sequence index (negative counts from the end) checked against ``size``."""
    position = i + size if i < 0 else i
    if not 0 <= position < size:
        raise IndexError(i)
    return position


class Ragged(Sequence):
    """Rows of different lengths in one flat array; ``ragged[i]`` is row i as a list."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values, self.offsets = values, offsets

    @classmethod
    def from_lists(cls, rows: list[list[int]], dtype) -> "Ragged":
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter(chain.from_iterable(rows), dtype=dtype, count=int(offsets[-1]))
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = _position(i, len(self))
        return self.values[self.offsets[i]:self.offsets[i + 1]].tolist()

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, indices: np.ndarray, fill: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``indices`` padded with ``fill`` to the longest of them, and the mask of real entries."""
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        width = int(lengths.max()) if len(indices) else 0
        mask = np.arange(width) < lengths[:, None]
        where = np.where(mask, starts[:, None] + np.arange(width), 0)
        out = self.values[where].astype(np.int64)
        out[~mask] = fill
        return out, mask


class Tokens:
    """Token ids and token types of one sequence per example (they share the offsets)."""

    def __init__(self, ids: np.ndarray, types: np.ndarray, offsets: np.ndarray):
        self.input_ids = Ragged(ids, offsets)
        self.token_type_ids = Ragged(types, offsets)

    @classmethod
    def from_lists(cls, ids: list[list[int]], types: list[list[int]]) -> "Tokens":
        ragged = Ragged.from_lists(ids, np.int32)
        return cls(ragged.values, Ragged.from_lists(types, np.int8).values, ragged.offsets)

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return self.input_ids.lengths()


class Strings(Sequence):
    """Row ids: UTF-8 bytes in one array with offsets, or, with no id column, the numbers 0..n-1."""

    def __init__(self, count: int, blob: np.ndarray | None = None, offsets: np.ndarray | None = None):
        self.count, self.blob, self.offsets = count, blob, offsets

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = _position(i, len(self))
        if self.blob is None:
            return str(i)
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)

    __hash__ = None
