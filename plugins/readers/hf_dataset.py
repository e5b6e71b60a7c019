"""hf_dataset: a Hugging Face ``datasets`` dataset; its columns are the columns.

The task's file (``train = ...``) names one of:

- a directory written by ``Dataset.save_to_disk`` (for a ``DatasetDict``, the
  split's subdirectory, e.g. ``"sst/train"``);
- another local directory of data files that ``datasets.load_dataset`` reads
  (Parquet, CSV, JSON ...), taking the reader's ``split`` (default "train");
- ``"hf://OWNER/NAME:SPLIT"``: a dataset on the Hugging Face Hub (needs the
  network or the local Hugging Face cache; offline it is a clear error).

Rows are numbered from 1, and problems name them as ``place:ROW``. The
tokenized cache is keyed by the saved files' bytes, or for a hub dataset by
the fingerprint ``datasets`` gives it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import attrs

from mtbert.base.errors import DataError, first_line
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Reader

HUB = "hf:"


@attrs.frozen
class HfDatasetOptions:
    split: str = "train"  # the split of a directory of data files read with load_dataset
    batch_rows: int = 4096  # rows converted to Python at a time

    def check(self):
        if self.batch_rows < 1:
            yield "batch_rows", f"must be at least 1, got {self.batch_rows}"


def hub_name(path: Path) -> tuple[str, str] | None:
    """("owner/name", split) if ``path`` came from "hf://owner/name:split" (joined to data.dir)."""
    parts = Path(path).parts
    if HUB not in parts:
        return None
    rest = "/".join(parts[parts.index(HUB) + 1:])
    name, _, split = rest.rpartition(":")
    return (name, split) if name and split else (rest, "")


class HfDatasetReader(Reader):
    """Datasets saved to disk, local data directories, or hub datasets (when reachable)."""

    def __init__(self, options: HfDatasetOptions):
        self.split, self.batch_rows = options.split, options.batch_rows
        self._opened: dict[str, object] = {}

    def locate(self, path: Path) -> None:
        hub = hub_name(path)
        if hub is not None:
            if not hub[1]:
                raise DataError(hub[0], None, "a hub dataset needs its split: \"hf://OWNER/NAME:SPLIT\"",
                                'e.g. train = "hf://stanfordnlp/sst2:train"')
            return
        if not Path(path).is_dir():
            hint = (" (a file: use the tsv, csv, jsonl or parquet reader)" if Path(path).is_file() else "")
            raise DataError(path, None, f"no dataset directory here{hint}",
                            "point the file at a directory written by Dataset.save_to_disk, "
                            'or name a hub dataset as "hf://OWNER/NAME:SPLIT"')
        if (Path(path) / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in Path(path).iterdir() if p.is_dir())
            raise DataError(path, None, f"a DatasetDict with splits {splits}, not one split",
                            f"point the file at one split's directory, e.g. \"{Path(path).name}/{splits[0]}\""
                            if splits else None)

    def fingerprint(self, path: Path) -> str:
        if hub_name(path) is not None:
            return "hub:" + str(getattr(self._open(path), "_fingerprint", "")) + ":" + "/".join(hub_name(path))
        return super().fingerprint(path)

    def _open(self, path: Path):
        key = str(path)
        if key in self._opened:
            return self._opened[key]
        try:
            import datasets
        except ImportError:
            raise DataError(path, None, "reading Hugging Face datasets needs the datasets package",
                            "pip install 'mtbert[formats]' (or datasets)") from None
        hub = hub_name(path)
        try:
            if hub is not None:
                dataset = datasets.load_dataset(hub[0], split=hub[1])
            elif (Path(path) / "state.json").is_file():  # what save_to_disk writes
                dataset = datasets.load_from_disk(str(path))
            else:
                dataset = datasets.load_dataset(str(path), split=self.split)
        except Exception as exc:  # noqa: BLE001 -- datasets raises many kinds; each is the user's to fix
            where = hub[0] if hub is not None else path
            fix = ("offline, only datasets already in the Hugging Face cache load: save it with "
                   "Dataset.save_to_disk where you are online and point the file at that directory"
                   if hub is not None else "check the directory holds a saved dataset or data files")
            raise DataError(where, None, f"cannot load the dataset ({type(exc).__name__}: "
                            f"{first_line(exc)})", fix) from None
        if not isinstance(dataset, datasets.Dataset):
            raise DataError(path, None, f"expected one split, got a {type(dataset).__name__}",
                            "point the file at one split")
        self._opened[key] = dataset
        return dataset

    def rows(self, path: Path) -> Iterator[tuple[int, dict]]:
        dataset = self._open(path)
        number = 0
        for batch in dataset.iter(batch_size=self.batch_rows):
            columns = list(batch)
            for values in zip(*batch.values()):
                number += 1
                yield number, dict(zip(columns, values))


@hookimpl
def register_readers(register):
    register("hf_dataset", HfDatasetReader, options=HfDatasetOptions)
