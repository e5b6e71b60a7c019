"""jsonl: one JSON object per line; keys are the columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import attrs

from mtbert.base.errors import DataError
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Reader


@attrs.frozen
class JsonlOptions:
    encoding: str = "utf-8"


class JsonlReader(Reader):
    """JSON Lines: one object per line, blank lines ignored."""

    def __init__(self, options: JsonlOptions):
        self.encoding = options.encoding

    def rows(self, path: Path) -> Iterator[tuple[int, dict]]:
        with open(path, "rb") as fp:
            for number, raw in enumerate(fp, start=1):
                try:
                    line = raw.decode(self.encoding)
                except UnicodeDecodeError as exc:
                    raise DataError(path, number, f"not valid {self.encoding} text ({exc.reason})",
                                    "re-save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(path, number, f"invalid JSON: {exc.msg} at column {exc.colno}") from None
                except RecursionError:
                    raise DataError(path, number, "JSON nested too deeply to read") from None
                if not isinstance(row, dict):
                    raise DataError(path, number, f"expected a JSON object, got {type(row).__name__}")
                yield number, row


@hookimpl
def register_readers(register):
    register("jsonl", JsonlReader, options=JsonlOptions)
