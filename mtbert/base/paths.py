"""Paths and files: checks that answer "no" instead of raising on odd user input, a file's
fingerprint, and where a run keeps its checkpoint.

``~nosuchuser/x`` makes ``expanduser`` raise, and a name longer than the file
system allows makes ``is_dir`` raise; for a spec either is simply a path that
does not exist.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20  # bytes read at a time when hashing a file
WEIGHTS = "model.safetensors"  # a checkpoint's weights, in RUN/checkpoint/ (mtbert/runs/checkpoint.py)


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


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a directory's files (names and bytes, in name order)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fp:
            while block := fp.read(BLOCK):
                digest.update(block)
    return digest.hexdigest()


def find_checkpoint(path: str | Path) -> Path | None:
    """A run directory or a checkpoint directory -> the checkpoint directory, if there is one."""
    from mtbert.base.atomic import recover

    path = Path(path)
    recover(path / "checkpoint")
    for candidate in (path / "checkpoint", path):
        if is_file(candidate / WEIGHTS):
            return candidate
    return None
