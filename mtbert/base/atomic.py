"""Files and directories written all at once: a crash leaves the previous version whole.

A directory's new version is written into ``<dir>.tmp`` and swapped in with
two renames (``<dir>`` -> ``<dir>.old``, ``<dir>.tmp`` -> ``<dir>``). A crash
before the first leaves ``<dir>`` as it was; one between the two leaves only
``<dir>.old``, which :func:`recover` -- called by every reader -- puts back.
A file (:func:`write_file`) is written into a private temporary beside it and
renamed over it: readers see the old file or the new one, never half of one.
Temporaries carry their writer's pid, so the next writer removes those of
processes killed mid-write (:func:`sweep_dead`) and leaves a live one's.
Either way a failure (a full disk, a signal) removes the temporary, and an OS
error becomes a :class:`WriteError` naming what was being written and where.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
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


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but is another user's
        return True
    return True


def remove(path: Path) -> None:
    """A file, a link or a directory tree, whichever ``path`` is; no error if it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def temporary(path: Path, kind: str = "tmp") -> Path:
    """A private temporary beside ``path``: ``.<name>.<kind>-<pid>-<random>`` (the pid lets a later
    writer tell a dead process's leftover from a live writer's file)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def sweep_dead(folder: Path, prefix: str) -> None:
    """Remove the temporaries in ``folder`` whose names start with ``prefix`` (a glob) followed by
    the pid of a process that no longer runs (killed mid-write); a live writer's stay."""
    try:
        found = list(Path(folder).glob(prefix + "*"))
    except OSError:
        return
    for path in found:
        match = re.search(r"[.-](?:tmp|export|report)-(\d+)-", path.name)
        if match and not alive(int(match.group(1))):
            remove(path)


@contextlib.contextmanager
def replacing(path: Path, what: str = "a file", training: bool = False, text: bool = True):
    """A file object for ``path``'s new content, written to a private temporary beside it and renamed
    over ``path`` when the block ends; any failure removes the temporary and leaves ``path`` as it was.
    ``training``: written by a training run (the error's advice is --resume's)."""
    path = Path(path)
    sweep_dead(path.parent, f".{glob.escape(path.name)}.tmp-")
    tmp = temporary(path)
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
