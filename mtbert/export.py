"""Export a run's trained encoder as a plain Hugging Face model directory.

``export(run_dir, out)`` writes ``config.json``, ``model.safetensors`` (with
Hugging Face parameter names) and the tokenizer files, so that
``transformers.AutoModel.from_pretrained(out)`` loads the encoder exactly as
the run trained it (its ``last_hidden_state`` equals mtbert's encoder output).
An encoder whose factory declares ``hf_export = True`` writes itself with
``save_hf(directory)`` (minbert: renamed tensors and ``BertConfig.to_hf()``,
a ``BertModel``; hf: the wrapped transformers model saves itself).

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

import os
import secrets
import shutil
from pathlib import Path

import attrs

from .errors import MtbertError

@attrs.frozen
class Exported:
    path: Path
    model_type: str  # config.json's model_type ("bert", "roberta" ...)
    notes: list[str]  # what was done beyond copying weights (e.g. LoRA merged)


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MtbertError(f"{out} already holds files; export into a new or empty directory (nothing was changed)")


def export(run_dir: str | Path, out: str | Path, registry=None) -> Exported:
    """Write the encoder of the run at ``run_dir`` into ``out`` in Hugging Face format."""
    from .finished import open_run, with_model
    from .validation import export_problem

    out = Path(out)
    opened = open_run(run_dir, registry, weights=False)
    check_out(out)
    problem = export_problem(opened.spec, opened.registry)
    if problem:
        raise MtbertError(problem)
    model = with_model(opened).model
    encoder = model.encoder
    notes = [module.merge(encoder) for module in model.adapters]  # each mergeable: folds into the weights
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        model_type = encoder.save_hf(tmp)
        encoder.tokenizer.save_pretrained(str(tmp))
        check_out(out)  # still free (nothing raced us)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    notes.append("the task heads are not part of the export (a Hugging Face model directory holds the encoder)")
    return Exported(out, model_type, notes)
