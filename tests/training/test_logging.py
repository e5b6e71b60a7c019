"""The command line's logging: mtbert's lines carry its prefix, another library's never do."""

from __future__ import annotations

import logging

import pytest

from mtbert.commands.cli import setup_logging


@pytest.fixture
def restore_logging():
    """setup_logging replaces the root logger's handlers; give pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:], root.level = handlers, level


def test_only_mtbert_lines_carry_its_prefix(restore_logging, capsys, tmp_path):
    setup_logging(file=tmp_path / "log.txt")
    logging.getLogger("mtbert").info("run directory: runs/x")
    logging.getLogger("mtbert.data.splits").info("skipped 2 row(s)")
    logging.getLogger("mtbert_plugins.encoders.minbert").info("ignored 3 non-encoder tensors")
    logging.getLogger("tensorboard").info("No path found after runs/x/tb/events.out")  # what the event reader logs
    logging.getLogger("tensorboard").warning("a library's warning")
    logging.getLogger("somelib.io").error("a library's error")
    assert capsys.readouterr().err.splitlines() == [
        "[mtbert] run directory: runs/x",
        "[mtbert] skipped 2 row(s)",
        "[mtbert] ignored 3 non-encoder tensors",
        "warning: tensorboard: a library's warning",
        "error: somelib.io: a library's error"]
    logged = (tmp_path / "log.txt").read_text()
    for line in ("INFO mtbert: run directory: runs/x", "INFO mtbert.data.splits: skipped 2 row(s)",
                 "WARNING tensorboard: a library's warning"):
        assert line in logged


def test_verbose_shows_mtbert_debug_but_not_a_librarys(restore_logging, capsys):
    setup_logging(verbose=True)
    logging.getLogger("mtbert").debug("a detail")
    logging.getLogger("tensorboard").debug("a library's detail")
    assert capsys.readouterr().err.splitlines() == ["[mtbert] a detail"]
