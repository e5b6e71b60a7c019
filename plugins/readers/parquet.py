"""parquet: an Apache Parquet file (pyarrow); its columns are the columns.

Rows are numbered from 1 in the file's order, and a problem found later
names the row as ``file:ROW`` the way a text file names its line. Values keep
their Parquet types: a label column may be integers, floats or strings; a
text column must hold strings (a null text is refused, a null label skips the
row like an empty one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import attrs

from mtbert.base.errors import DataError, first_line
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Reader


@attrs.frozen
class ParquetOptions:
    batch_rows: int = 8192  # rows converted to Python at a time

    def check(self):
        if self.batch_rows < 1:
            yield "batch_rows", f"must be at least 1, got {self.batch_rows}"


class ParquetReader(Reader):
    """Parquet files, read a record batch at a time (bounded memory on large files)."""

    def __init__(self, options: ParquetOptions):
        self.batch_rows = options.batch_rows

    def rows(self, path: Path) -> Iterator[tuple[int, dict]]:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(path, None, "reading Parquet needs pyarrow, which is not installed",
                            "pip install 'mtbert[formats]' (or pyarrow)") from None
        try:
            table = pq.ParquetFile(path)
            number = 0
            for batch in table.iter_batches(batch_size=self.batch_rows):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
        except (pa.ArrowException, OSError) as exc:
            raise DataError(path, None, f"not a readable Parquet file ({first_line(exc)})",
                            "check that the file is Parquet and whole (not truncated)") from None


@hookimpl
def register_readers(register):
    register("parquet", ParquetReader, options=ParquetOptions)
