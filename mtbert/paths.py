"""Path checks that answer "no" instead of raising on odd user input.

``~nosuchuser/x`` makes ``expanduser`` raise, and a name longer than the file
system allows makes ``is_dir`` raise; for a spec either is simply a path that
does not exist.
"""

from __future__ import annotations

from pathlib import Path


def expand(path: str | Path) -> Path:
    try:
        return Path(path).expanduser()
    except RuntimeError:  # an unknown user in ~user
        return Path(path)


def is_dir(path: str | Path) -> bool:
    try:
        return expand(path).is_dir()
    except OSError:  # e.g. a name too long
        return False


def is_file(path: str | Path) -> bool:
    try:
        return expand(path).is_file()
    except OSError:
        return False
