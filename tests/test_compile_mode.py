"""train.compile_mode, issue 29's prepared fix (CUDA graphs through torch.compile's "reduce-overhead"
mode): off by default; where it is on, the encoder computes what it computes uncompiled."""

from __future__ import annotations

import copy

import pytest
import torch

from mtbert.errors import SpecError
from mtbert.spec import structure_spec, unstructure

from helpers import toy_data, toy_spec


def test_the_compiled_forward_equals_the_eager_one(tiny_encoder):
    """As the Trainer compiles it (dynamic shapes, the mode from the spec), at two batch shapes: on
    the CPU "reduce-overhead" runs inductor's generated code (the CUDA graphs are a GPU's); the
    states agree with the eager forward's to float32 rounding."""
    encoder = copy.deepcopy(tiny_encoder).eval()
    compiled = torch.compile(encoder.forward, dynamic=True, mode="reduce-overhead")
    for texts in (["a good movie", "the plot of the film was bad"], ["it was", "quite", "a very good film it was"]):
        batch = encoder.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            eager = encoder(batch["input_ids"], batch["attention_mask"]).states
            fast = compiled(batch["input_ids"], batch["attention_mask"]).states
        torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-5)


def test_compile_mode_is_off_by_default_and_checked(registry, tmp_path):
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=8)))
    assert data["train"]["compile"] is False and data["train"]["compile_mode"] == "default"
    data["train"]["compile_mode"] = "graphs"
    with pytest.raises(SpecError) as error:
        structure_spec(data, registry)
    assert any(path == "train.compile_mode" for path, _ in error.value.problems)
