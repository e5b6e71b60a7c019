"""Shared fixtures: the registry, the course data, and a tiny random encoder.

Tests run on CPU. The course data is read from ../shared/data/cs224n (or
$MTBERT_DATA), never copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import DATA, TINY_ENCODER


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenized-cache")


@pytest.fixture(autouse=True)
def _quiet_and_deterministic(monkeypatch, _session_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # one tokenized cache for the session (entries are keyed by content, so sharing is sound),
    # never the repository's runs/.cache
    monkeypatch.setenv("MTBERT_CACHE", str(_session_cache))
    monkeypatch.delenv("MTBERT_DATA", raising=False)  # tests pass data dirs explicitly
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def registry():
    from mtbert.plugin.loading import default_registry

    reg = default_registry()
    assert not reg.failures, reg.failures
    return reg


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "ids-sst-train.csv").is_file():
        pytest.skip(f"course data not found at {DATA} (set MTBERT_DATA)")
    return DATA


@pytest.fixture(scope="session")
def tiny_encoder(registry):
    """A built tiny encoder (session-wide: building loads the tokenizer)."""
    from mtbert.model.build import make
    from mtbert.config.spec import structure_component

    return make(registry, structure_component("encoders", TINY_ENCODER, registry))


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A folder on a file system with no space left, made with ``prepare(folder)`` beforehand.

    A tiny tmpfs filled to the last byte where this process may mount one (root, as in CI);
    otherwise every write Python opens under the folder fails with ENOSPC, injected at ``open``.
    Yields a function: ``fill(prepare=None)`` -> the folder (``prepare`` writes what should be
    there before the disk fills: the previous output a failed write must leave whole)."""
    import builtins
    import errno
    import io
    import os
    import subprocess

    mounted = []

    def fill(prepare=None) -> Path:
        folder = tmp_path / "full"
        folder.mkdir()
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)],
                            capture_output=True).returncode == 0
        if prepare is not None:
            prepare(folder)
        if ok:
            mounted.append(folder)
            try:
                with open(folder / ".ballast", "wb", buffering=0) as fp:  # every block taken
                    while True:
                        fp.write(b"\0" * 4096)
            except OSError:
                pass
            return folder
        real_open = builtins.open

        def open_full(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and str(os.path.abspath(file)).startswith(str(folder)):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_full)
        monkeypatch.setattr(io, "open", open_full)
        return folder

    yield fill
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
