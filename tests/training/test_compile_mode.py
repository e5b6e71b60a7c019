"""train.compile_mode, issue 29's prepared fix (CUDA graphs through torch.compile's "reduce-overhead"
mode): off by default; where it is on, the encoder computes what it computes uncompiled."""

from __future__ import annotations

import pytest

from mtbert.base.errors import SpecError
from mtbert.config.spec import structure_spec, unstructure

from helpers import toy_data, toy_spec


COMPILED_AGAINST_EAGER = """
import copy, json, sys, torch
from mtbert.plugin.loading import default_registry
from mtbert.plugin.making import make
from mtbert.config.spec import structure_component
from mtbert.testing.runs import TINY_ENCODER
registry = default_registry()
encoder = make(registry, structure_component("encoders", TINY_ENCODER, registry)).eval()
compiled = torch.compile(encoder.forward, dynamic=True, mode="reduce-overhead")
worst = {}
for unpad in (False, True):  # and with minbert's unpad (the other prepared fix: a graph break at nonzero)
    for texts in (["a good movie", "the plot of the film was bad"], ["it was", "quite", "a very good film it was"]):
        batch = encoder.tokenizer(texts, padding=True, return_tensors="pt")
        real = batch["attention_mask"].bool()
        with torch.no_grad():
            encoder.unpad = False
            eager = encoder(batch["input_ids"], batch["attention_mask"]).states
            encoder.unpad = unpad
            fast = compiled(batch["input_ids"], batch["attention_mask"]).states
        worst[unpad] = max(worst.get(unpad, 0.0), float((fast[real] - eager[real]).abs().max()))
print(json.dumps({"worst": max(worst.values()), "cases": len(worst)}))
"""


def test_the_compiled_forward_equals_the_eager_one():
    """As the Trainer compiles it (dynamic shapes, the mode from the spec), at two batch shapes: on
    the CPU "reduce-overhead" runs inductor's generated code (the CUDA graphs are a GPU's); the
    states agree with the eager forward's to float32 rounding, padded and with ``unpad`` on. In a fresh process: inductor's C++
    build trips over the distutils shim that an in-process setuptools import (other tests) leaves."""
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", COMPILED_AGAINST_EAGER], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cases"] == 2 and result["worst"] <= 1e-5


def test_compile_mode_is_off_by_default_and_checked(registry, tmp_path):
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=8)))
    assert data["train"]["compile"] is False and data["train"]["compile_mode"] == "default"
    data["train"]["compile_mode"] = "graphs"
    with pytest.raises(SpecError) as error:
        structure_spec(data, registry)
    assert any(path == "train.compile_mode" for path, _ in error.value.problems)
