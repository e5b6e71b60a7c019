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
