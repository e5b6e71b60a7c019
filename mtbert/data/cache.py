"""The tokenized cache: a split's arrays on disk, written once, memory-mapped by every later run.

An entry is a directory named by the key (a hash of everything that
determines the arrays: the file's content, the reader, the tokenizer, the
columns, the maximum length, the pair encoding, the labels). It holds one raw
file per array and ``meta.json`` with each array's dtype, length and SHA-256.
Entries are built in a private temporary directory and renamed into place,
so a reader sees a whole entry or none; on every use the sizes and checksums
are checked, and an entry that does not match (or is no entry at all: a
directory without ``meta.json``, a file) is removed and rebuilt, never
trusted. Builders of one entry take turns on a lock file (``.locks/<key>``,
an OS lock that a dead process does not hold): the first builds, the others
then map its entry. A temporary left by a killed builder is swept by the next
build once its process is gone. Arrays are mapped copy-on-write: the pages are shared by every
process that maps them (the ranks of a torchrun job hold one copy) and
nothing is ever written back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from mtbert.base.atomic import alive, remove, sweep_dead  # noqa: F401  (tests name them here)
from mtbert.base.errors import MtbertError
from mtbert.base.paths import file_fingerprint  # noqa: F401  (the cache keys files by it)

log = logging.getLogger(__name__)

VERSION = 1  # bump when the layout or the tokenized content of an entry changes
BLOCK = 1 << 20


def key_of(parts: dict) -> str:
    text = json.dumps({"version": VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FileSink:
    """Arrays appended chunk by chunk to raw files, each with a running checksum."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.files: dict[str, tuple] = {}  # name -> (file, sha256, dtype, count)

    def append(self, name: str, array: np.ndarray) -> None:
        if name not in self.files:
            self.files[name] = [open(self.directory / f"{name}.bin", "wb"), hashlib.sha256(), array.dtype.str, 0]
        entry = self.files[name]
        data = np.ascontiguousarray(array, dtype=entry[2]).tobytes()
        entry[0].write(data)
        entry[1].update(data)
        entry[3] += len(array)

    def close(self, meta: dict) -> None:
        arrays = {}
        for name, (fp, digest, dtype, count) in self.files.items():
            fp.flush()
            os.fsync(fp.fileno())
            fp.close()
            arrays[name] = {"dtype": dtype, "count": count, "sha256": digest.hexdigest()}
        with open(self.directory / "meta.json", "w") as fp:
            json.dump({"version": VERSION, "arrays": arrays, **meta}, fp)

    def abandon(self) -> None:
        for fp, *_ in self.files.values():
            fp.close()


class Cache:
    """Entries under ``root``; see the module docstring."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def load(self, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
        """The entry's arrays (mapped) and its meta, or None if there is no sound entry (anything
        else at the entry's path is removed)."""
        entry = self.root / key
        if not (entry / "meta.json").is_file():
            if entry.exists() or entry.is_symlink():
                log.warning("tokenized cache %s is no entry (no meta.json); rebuilding it", entry)
                remove(entry)
            return None
        try:
            meta = json.loads((entry / "meta.json").read_text())
            assert meta["version"] == VERSION
            arrays = {}
            for name, info in meta["arrays"].items():
                arrays[name] = self._map(entry / f"{name}.bin", info)
        except Exception as exc:  # noqa: BLE001 -- whatever is wrong with it, it is rebuilt
            log.warning("tokenized cache %s is damaged (%s); rebuilding it", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return arrays, meta

    @staticmethod
    def _map(path: Path, info: dict) -> np.ndarray:
        dtype = np.dtype(info["dtype"])
        if path.stat().st_size != info["count"] * dtype.itemsize:
            raise ValueError(f"{path.name} has {path.stat().st_size} bytes, not {info['count'] * dtype.itemsize}")
        digest = hashlib.sha256()
        with open(path, "rb") as fp:
            while block := fp.read(BLOCK * 16):
                digest.update(block)
        if digest.hexdigest() != info["sha256"]:
            raise ValueError(f"{path.name}'s checksum does not match")
        if info["count"] == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="c", shape=(info["count"],))

    def discard(self, key: str) -> None:
        remove(self.root / key)

    @contextlib.contextmanager
    def turn(self, key: str):
        """Hold the entry's build lock: builders of one entry take turns (an OS lock: a dead holder
        holds nothing). Yields whether a lock was taken (False where the file system has none).
        When what runs under it fails (a malformed file), the lock file and the directories made
        for it are removed again: a failed run leaves no cache behind."""
        made = [p for p in [self.root / ".locks", self.root, *self.root.parents] if not p.exists()]
        path = self.root / ".locks" / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fp = open(path, "a+")
        except OSError:
            yield False
            return
        failed = True
        try:
            try:
                fcntl.flock(fp, fcntl.LOCK_EX)
            except OSError:
                yield False
            else:
                yield True
            failed = False
        finally:
            fp.close()  # releases the lock
            if failed:
                with contextlib.suppress(OSError):
                    path.unlink()
                _remove_empty(made)

    def sweep(self) -> None:
        """Remove the temporaries of builders that died (SIGKILL) mid-build; a live builder's stay."""
        sweep_dead(self.root, ".*.tmp-")

    def build(self, key: str, fill) -> tuple[dict[str, np.ndarray], dict]:
        """Write an entry with ``fill(sink) -> meta`` and map it. A failure (a full disk, a signal,
        a malformed row) leaves no entry and no temporary files behind."""
        made = [p for p in [self.root, *self.root.parents] if not p.exists()]  # removed again on failure
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.sweep()
            tmp = self.root / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
        except OSError as exc:
            raise MtbertError(f"cannot write the tokenized cache in {self.root}: {exc.strerror or exc}\n"
                              "  fix: set MTBERT_CACHE or data.cache_dir to a writable directory, "
                              "or data.cache = false") from None
        sink = FileSink(tmp)
        try:
            meta = fill(sink)
            sink.close(meta)
            target = self.root / key
            if (target.exists() or target.is_symlink()) and not (target / "meta.json").is_file():
                remove(target)  # not an entry (no meta.json: a sound entry always has one)
            try:
                os.rename(tmp, target)
            except OSError:  # another process finished the same entry first: use theirs
                if not (target / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            sink.abandon()
            shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(made)
            raise MtbertError(f"cannot write the tokenized cache in {self.root}: {exc.strerror or exc}\n"
                              "  fix: free some space, set MTBERT_CACHE or data.cache_dir elsewhere, "
                              "or data.cache = false") from None
        except BaseException:
            sink.abandon()
            shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(made)
            raise
        loaded = self.load(key)
        if loaded is None:
            raise MtbertError(f"the tokenized cache entry {self.root / key} just written cannot be read back\n"
                              "  fix: check the disk, or set data.cache = false")
        return loaded


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories this build made (deepest first) if nothing else was put in them."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


class MemorySink:
    """The same appends as FileSink, kept in memory (``data.cache = false``)."""

    def __init__(self):
        self.chunks: dict[str, list[np.ndarray]] = {}

    def append(self, name: str, array: np.ndarray) -> None:
        self.chunks.setdefault(name, []).append(np.ascontiguousarray(array))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for name in list(self.chunks):
            out[name] = np.concatenate(self.chunks.pop(name))
        return out
