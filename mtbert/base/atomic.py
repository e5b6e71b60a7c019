"""Files and directories written all at once: a crash leaves the previous version whole.

A directory's new version is written into ``<dir>.tmp`` and swapped in with
two renames (``<dir>`` -> ``<dir>.old``, ``<dir>.tmp`` -> ``<dir>``). A crash
before the first leaves ``<dir>`` as it was; one between the two leaves only
``<dir>.old``, which :func:`recover` -- called by every reader -- puts back.
A file (:func:`write_file`) is written into a private temporary beside it and
renamed over it: readers see the old file or the new one, never half of one.
Either way a failure (a full disk, a signal) removes the temporary, and an OS
error becomes a :class:`WriteError` naming what was being written and where.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError

from mtbert.base.errors import WriteError


def recover(directory: Path) -> None:
    """Finish an interrupted swap by putting ``<dir>.old`` back when ``<dir>`` is missing."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    try:
        if not directory.exists() and old.is_dir():
            os.replace(old, directory)
    except OSError:  # an impossible path (e.g. a name too long) holds nothing to recover
        pass


def write_directory(directory: Path, fill: Callable[[Path], None], what: str = "files") -> None:
    """Replace ``directory`` by what ``fill(tmp)`` writes into a fresh temporary sibling.

    If writing fails (a full disk, a quota, a signal), the temporary sibling is
    removed and ``directory`` is left as it was; an OS error becomes a
    :class:`WriteError` naming ``what`` and the directory."""
    directory = Path(directory)
    recover(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, SafetensorError)):
            raise WriteError(what, directory, exc) from None
        raise
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def replacing(path: Path, what: str = "a file", training: bool = False, text: bool = True):
    """A file object for ``path``'s new content, written to a private temporary beside it and renamed
    over ``path`` when the block ends; any failure removes the temporary and leaves ``path`` as it was.
    ``training``: written by a training run (the error's advice is --resume's)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as fp:
            yield fp
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise WriteError(what, path, exc, training=training) from None
        raise


def write_file(path: Path, data: bytes | str, what: str = "a file", training: bool = False) -> None:
    """Replace ``path`` by ``data`` all at once (see :func:`replacing`)."""
    with replacing(path, what, training, text=isinstance(data, str)) as fp:
        fp.write(data)
