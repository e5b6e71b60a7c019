"""Typed errors for mistakes a user can make and fix.

Everything a user supplies (spec, data, checkpoint, plugin) that is wrong
raises a subclass of :class:`MtbertError`. Only ``cli.py`` turns these into a
message and an exit code; anything else that escapes is a bug in mtbert and
is allowed to show its traceback.
"""

from __future__ import annotations

import errno
import os
import re


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An outside library's exception in one short line, for a message that names the fix."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__


class MtbertError(Exception):
    """A problem the user can fix; the message says where and how."""

    exit_code = 2
    title = "error"


class SpecError(MtbertError):
    """One or more problems in a spec, each with its path."""

    title = "spec error"

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{len(self.problems)} problem(s) in {self.source or 'the spec'}:"
        lines = [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in self.problems]
        return "\n".join([head, *lines])


class DataError(MtbertError):
    """A data file that cannot be read; names the file, line and problem."""

    title = "data error"

    def __init__(self, path: str, line: int | None, problem: str, fix: str | None = None):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        message = f"{where}: {problem}"
        if fix:
            message += f"\n  fix: {fix}"
        super().__init__(message)


class CheckpointError(MtbertError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""

    title = "checkpoint error"


class PluginError(MtbertError):
    """An unknown component name, or a plugin that does not meet its interface."""

    title = "plugin error"


class TrainingError(MtbertError):
    """A run that had to stop (e.g. repeated non-finite losses)."""

    title = "training stopped"


class WriteError(MtbertError):
    """Something mtbert writes (a state, a checkpoint) could not be written: a full disk, a quota."""

    title = "cannot write"

    def __init__(self, what: str, directory, cause: BaseException, fix: str | None = None, training: bool = True):
        self.what, self.directory = what, directory
        reason = getattr(cause, "strerror", None) or str(cause).strip().splitlines()[-1]
        number = getattr(cause, "errno", None)
        found = re.search(r"\(os error (\d+)\)", str(cause))  # safetensors' Rust errors carry the OS's number
        if number is None and found:
            number = int(found.group(1))
            reason = os.strerror(number)
        if fix is None:
            fix = {errno.ENOENT: f"{directory} or the folder it is in no longer exists (did another process "
                                 "remove it?)",
                   errno.EACCES: "give this user write access there, or write elsewhere",
                   errno.EROFS: "the file system is read-only: write elsewhere",
                   errno.ENOTDIR: "a part of that path is a file, not a folder: choose another place",
                   errno.EEXIST: "a part of that path is a file, not a folder: choose another place",
                   errno.ENAMETOOLONG: "the name is too long for the file system: choose a shorter one"}.get(
                number, "free space on that disk (or point --out elsewhere), then continue with "
                        "`mtbert run SPEC --resume RUN_DIR`" if training else "free space on that disk, or write elsewhere")
        kept = ", and the best checkpoint saved so far is intact" if training else ""
        super().__init__(f"could not write {what} into {directory}: {reason}.\n"
                         f"  Nothing was half-written: {directory} keeps what it held before{kept}.\n  fix: {fix}")


class Stopped(MtbertError):
    """The run was asked to stop (SIGTERM) and saved a state it can resume from."""

    title = "stopped"
    exit_code = 143  # 128 + SIGTERM, what schedulers expect of a process they terminated
