"""Export a run's trained encoder as a plain Hugging Face model directory.

``export(run_dir, out)`` writes ``config.json``, ``model.safetensors`` (with
Hugging Face parameter names) and the tokenizer files, so that
``transformers.AutoModel.from_pretrained(out)`` loads the encoder exactly as
the run trained it (its ``last_hidden_state`` equals mtbert's encoder output):

- minbert: the config is ``BertConfig.to_hf()`` and each tensor is renamed
  with ``ours_to_hf``; the result is a ``BertModel``.
- hf: the wrapped transformers model saves itself (its own config).

The weights are the run's checkpoint (the best evaluation), rebuilt the way
``mtbert predict`` rebuilds it. Adapters: one whose factory says
``mergeable = True`` has a module whose ``merge(encoder)`` folds it into the
encoder's own weights (LoRA:
every wrapped linear becomes ``W + (alpha / r) B A``, the same function in
eval mode with no adapter at all). Any other (PALs, the BiLSTM on top)
changes the network in a way one plain BERT cannot express, and is refused
before anything is written.

The task heads are not part of the export: a Hugging Face model directory is
the encoder only. ``OUT`` must not exist or be empty; it is written into a
temporary sibling and renamed into place, so a failed export leaves nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import attrs

from .errors import CheckpointError, MtbertError

@attrs.frozen
class Exported:
    path: Path
    model_type: str  # config.json's model_type ("bert", "roberta" ...)
    notes: list[str]  # what was done beyond copying weights (e.g. LoRA merged)


def refusal(name: str) -> str:
    """Why an adapter cannot be exported as a plain Hugging Face model, and what to do instead."""
    return (f"the run uses adapter \"{name}\", which changes the network in a way a plain Hugging Face "
            "model cannot express (it cannot be merged into the encoder's own weights; e.g. "
            "PALs are task-specific layers, a different set per task).\n  instead: predict with the run "
            "itself (`mtbert predict RUN_DIR ...` or `mtbert.load(RUN_DIR).predict(...)`), or train with an "
            "adapter that merges (LoRA: adapters = [{ name = \"lora\" }])")


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MtbertError(f"{out} already holds files; export into a new or empty directory (nothing was changed)")


def _write_minbert(encoder, directory: Path) -> str:
    from safetensors.torch import save_file

    from .encoder import ours_to_hf

    tensors = {}
    for name, tensor in encoder.state_dict().items():
        try:
            hf_name = ours_to_hf(name)
        except KeyError:
            raise CheckpointError(f"encoder tensor {name} has no Hugging Face BERT name; this encoder "
                                  "holds more than a plain BERT and cannot be exported") from None
        tensors[hf_name] = tensor.detach().to("cpu").contiguous()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = encoder.config.to_hf()
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config["model_type"]


def _write_hf(encoder, directory: Path) -> str:
    model = encoder.model
    model.save_pretrained(str(directory))
    return model.config.model_type


def export(run_dir: str | Path, out: str | Path, registry=None) -> Exported:
    """Write the encoder of the run at ``run_dir`` into ``out`` in Hugging Face format."""
    from .build import build_model
    from .checkpoint import WEIGHTS, find_checkpoint, load_weights
    from .encoder import MinBert
    from .plugins import default_registry
    from .rundir import RunDir
    from .spec import load_spec

    run, out = RunDir(Path(run_dir)), Path(out)
    if not run.spec.is_file():
        raise MtbertError(f"{run.path} is not an mtbert run directory (no spec.toml)")
    check_out(out)
    registry = registry or default_registry()
    spec = load_spec(run.spec, registry, env={}, check_files=False)
    for adapter in spec.adapters:  # can it fold into the encoder's weights? (the factory's class says)
        factory = registry.get("adapters", adapter.name).factory
        if not getattr(factory, "mergeable", False):
            raise MtbertError(refusal(adapter.name))
    if find_checkpoint(run.path) != run.checkpoint:
        raise CheckpointError(f"{run.path} has no checkpoint yet ({run.checkpoint / WEIGHTS}): "
                              "the run has not saved a model (let it reach an evaluation)")
    model = build_model(spec, registry, restore=run.checkpoint / "encoder")
    load_weights(model, run.checkpoint)
    model.eval()
    encoder = model.encoder
    notes = [module.merge(encoder) for module in model.adapters]
    if isinstance(encoder, MinBert):
        write = _write_minbert
    elif hasattr(getattr(encoder, "model", None), "save_pretrained"):
        write = _write_hf
    else:
        raise MtbertError(f"encoder \"{spec.encoder.name}\" ({type(encoder).__name__}) is neither minbert nor "
                          "a transformers model (hf); export can write only those as Hugging Face models")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        model_type = write(encoder, tmp)
        encoder.tokenizer.save_pretrained(str(tmp))
        check_out(out)  # still free (nothing raced us)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    notes.append("the task heads are not part of the export (a Hugging Face model directory holds the encoder)")
    return Exported(out, model_type, notes)
