"""Sentence vectors from token states."""

from __future__ import annotations

from torch import Tensor

from mtbert.plugin.interfaces import Encoded

POOLINGS = ("cls", "pooler", "mean")


def pool(encoded: Encoded, how: str) -> Tensor:
    """[CLS] state, BERT's tanh pooler over it, or the mean over real tokens.

    Sentence-transformers checkpoints (such as MiniLM) were trained with mean
    pooling; BERT's pooler was trained by next-sentence prediction.
    """
    if how == "cls":
        return encoded.states[:, 0]
    if how == "pooler":
        if encoded.pooled is None:
            raise ValueError("this encoder has no pooler; use pooling = \"cls\" or \"mean\"")
        return encoded.pooled
    if how == "mean":
        mask = encoded.mask.unsqueeze(-1).to(encoded.states.dtype)
        return (encoded.states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    raise ValueError(f"unknown pooling {how!r}; known: {', '.join(POOLINGS)}")
