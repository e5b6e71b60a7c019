"""safetensors files with the same bytes for the same tensors.

``safetensors.torch.save_file`` writes the header's ``__metadata__`` from a
Rust hash map, whose order changes from process to process: two saves of
identical tensors differed byte for byte, so ``cmp`` or a checksum could not
confirm that a resumed run ends with the same checkpoint. ``save`` writes the
same tensors and metadata with the header's keys sorted (the format allows
any order; readers look names up), so equal tensors give equal files.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from safetensors.torch import save as serialize
from torch import Tensor


def to_bytes(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    raw = serialize(tensors, metadata=metadata)
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text + raw[8 + size:]


def save(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """What ``safetensors.torch.save_file`` writes, with a deterministic header. The bytes are made
    before the file is opened: the tensors may be memory-mapped from the very file being replaced."""
    data = to_bytes(tensors, metadata)
    with open(path, "wb") as fp:
        fp.write(data)
