"""Checkpoints and states are byte for byte the same for the same tensors (mtbert/base/tensorfiles.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import torch
from safetensors.torch import load_file

from mtbert.base import tensorfiles

SCRIPT = """
import sys, torch
from mtbert.base import tensorfiles
tensors = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(3, dtype=torch.bfloat16), "c": torch.zeros(1, dtype=torch.int64)}
tensorfiles.save(tensors, sys.argv[1], metadata={k: "value " + k for k in "pqrstuvwxyz"})
"""


def test_the_same_tensors_give_the_same_bytes_in_every_process(tmp_path):
    """safetensors' own writer orders the metadata as a Rust hash map does, differently per process
    (four saves of one tensor with eight metadata keys gave four different files)."""
    digests = set()
    for i in range(4):
        path = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_what_is_written_reads_back_with_safetensors(tmp_path):
    tensors = {"w": torch.randn(3, 5), "i": torch.arange(7), "h": torch.randn(2, dtype=torch.float16)}
    tensorfiles.save(tensors, tmp_path / "x.safetensors", metadata={"format": "pt", "mtbert": "1"})
    back = load_file(str(tmp_path / "x.safetensors"))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    raw = (tmp_path / "x.safetensors").read_bytes()
    assert int.from_bytes(raw[:8], "little") % 8 == 0  # the data stays aligned


def test_a_file_can_be_rewritten_from_its_own_memory_mapped_tensors(tmp_path):
    """export loads model.safetensors (memory-mapped) and writes it back renamed: the bytes must be made
    before the file is truncated (truncating first read freed pages: a bus error)."""
    path = tmp_path / "m.safetensors"
    original = torch.randn(256, 256)
    tensorfiles.save({"w": original}, path)
    loaded = load_file(str(path))
    tensorfiles.save({f"bert.{k}": v for k, v in loaded.items()}, path)
    assert torch.equal(load_file(str(path))["bert.w"], original)
