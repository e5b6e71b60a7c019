"""Shared fixtures: the registry, the course data, and a tiny random encoder.

Tests run on CPU. The course data is read from ../shared/data/cs224n (or
$MTBERT_DATA), never copied into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MTBERT_DATA") or ROOT.parent / "shared" / "data" / "cs224n").resolve()

# A 2-layer, hidden-32 BERT with MiniLM's tokenizer and random weights: the
# encoder for fast tests. As spec data, so it can go straight into a spec.
TINY_ENCODER = {"name": "minbert", "pretrained": "minilm-l6", "init": "random", "num_layers": 2,
                "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}


@pytest.fixture(autouse=True)
def _quiet_and_deterministic(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MTBERT_DATA", raising=False)  # tests pass data dirs explicitly
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def registry():
    from mtbert.plugins import default_registry

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
    from mtbert.build import make
    from mtbert.spec import structure_component

    return make(registry, structure_component("encoders", TINY_ENCODER, registry))
