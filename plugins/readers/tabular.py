"""tsv / csv: delimited text files with a header row and csv-style quoting.

The course's files are ``tsv``: tab-separated, a header naming the columns
(the first, unnamed, is a row index), fields quoted with double quotes when
they hold tabs or quotes. Rows are yielded with the line they start on, so
every problem found later can name it.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Iterator

import attrs

from mtbert.base.errors import DataError
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Reader

# Quora questions can be long; the csv module's default cap is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@attrs.frozen
class TabularOptions:
    delimiter: str | None = None  # default: tab for tsv, comma for csv
    encoding: str = "utf-8"

    def check(self):
        if self.delimiter is not None and len(self.delimiter) != 1:
            yield "delimiter", f"must be one character, got {self.delimiter!r}"


class TabularReader(Reader):
    default_delimiter = ","

    def __init__(self, options: TabularOptions):
        self.delimiter = options.delimiter or self.default_delimiter
        self.encoding = options.encoding

    def rows(self, path: Path) -> Iterator[tuple[int, dict[str, str]]]:
        with open(path, "rb") as fp:
            yield from self._rows(path, self._decoded_lines(path, fp))

    def _decoded_lines(self, path: Path, fp) -> Iterator[str]:
        """Physical lines decoded one at a time, so a bad byte is reported on its own line."""
        offset = 0
        for number, raw in enumerate(fp, start=1):
            try:
                line = raw.decode(self.encoding)
            except UnicodeDecodeError as exc:
                raise DataError(path, number, f"not valid {self.encoding} text ({exc.reason} at byte "
                                f"{offset + exc.start} of the file)", "re-save the file as UTF-8") from None
            if "\0" in line:
                raise DataError(path, number, "contains a NUL byte: binary data, or text in another encoding "
                                "(UTF-16?)", "re-save the file as UTF-8 text")
            offset += len(raw)
            yield line

    def _rows(self, path, lines):
        reader = csv.reader(lines, delimiter=self.delimiter, strict=True)
        start = 1
        try:
            header = next(reader, None)
            while header == []:  # blank lines before the header
                start = reader.line_num + 1
                header = next(reader, None)
            if header is None:
                raise DataError(path, None, "file is empty", "a header row naming the columns is needed")
            if len(set(header)) != len(header):
                dupes = sorted({h for h in header if header.count(h) > 1})
                raise DataError(path, start, f"duplicate column name(s) in the header: {dupes}")
            start = reader.line_num + 1
            for row in reader:
                if not row:  # a blank line
                    start = reader.line_num + 1
                    continue
                if len(row) != len(header):
                    raise DataError(path, start, f"expected {len(header)} fields like the header, got {len(row)}",
                                    _field_hint(self.delimiter))
                yield start, dict(zip(header, row))
                start = reader.line_num + 1
        except csv.Error as exc:
            problem, fix = str(exc), "check the quoting on this line"
            if "new-line character seen in unquoted field" in problem:
                problem = "a bare carriage return (\\r) inside a field"
                fix = "save the file with \\n or \\r\\n line ends, or quote the field"
            raise DataError(path, start, f"malformed {'tab' if self.delimiter == chr(9) else repr(self.delimiter)}"
                            f"-separated row: {problem}", fix) from None


def _field_hint(delimiter: str) -> str:
    name = "tab" if delimiter == "\t" else repr(delimiter)
    return (f"fields are separated by {name}; quote a field that contains the separator "
            '("like\tthis"), or set the reader\'s delimiter')


class TsvReader(TabularReader):
    """Tab-separated values with a header (the CS224N course format)."""

    default_delimiter = "\t"


class CsvReader(TabularReader):
    """Comma-separated values with a header."""

    default_delimiter = ","


@hookimpl
def register_readers(register):
    register("tsv", TsvReader, options=TabularOptions)
    register("csv", CsvReader, options=TabularOptions)
