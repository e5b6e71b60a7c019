"""mtbert: multitask fine-tuning of BERT-family encoders from one TOML spec."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from mtbert.commands.api import load


def __getattr__(name: str):
    # ``mtbert.load`` is mtbert.api.load, imported on first use so that
    # ``import mtbert`` stays light (no torch, no transformers).
    if name == "load":
        from mtbert.commands.api import load

        return load
    raise AttributeError(f"module 'mtbert' has no attribute {name!r}")
