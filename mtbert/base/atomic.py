"""Directories written all at once: a crash leaves the previous version whole.

The new version is written into ``<dir>.tmp`` and swapped in with two renames
(``<dir>`` -> ``<dir>.old``, ``<dir>.tmp`` -> ``<dir>``). A crash before the
first leaves ``<dir>`` as it was; one between the two leaves only
``<dir>.old``, which :func:`recover` -- called by every reader -- puts back.
"""

from __future__ import annotations

import os
import shutil
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
