"""Export a finished run for the tools people serve models with.

``export(run_dir, out, task=None, fmt="encoder")`` writes one of:

- ``encoder`` (default): the shared encoder as a plain Hugging Face model
  (``config.json``, ``model.safetensors`` with Hugging Face names, the
  tokenizer), for ``transformers.AutoModel``; its ``last_hidden_state``
  equals mtbert's encoder output. An encoder whose factory declares
  ``hf_export = True`` writes itself with ``save_hf(directory)``.
- ``transformers`` (needs ``task``): the task as
  ``BertForSequenceClassification``, for ``pipeline("text-classification")``
  and ``sentence_transformers.CrossEncoder``. Only a head that is exactly
  BERT's top (tanh pooler -> dropout -> one linear layer) maps onto it; the
  head says so through ``as_sequence_classifier()``.
- ``sentence-transformers``: the encoder with a task's sentence-vector recipe
  (``as_sentence_embedding()``: pooling, normalisation for a cosine head), or
  mean pooling without a task, as a SentenceTransformer directory.
- ``onnx``: the encoder with one task's head (or the encoder alone) traced by
  ``torch.onnx.export``, batch and length dynamic.

Each format's writer (mtbert/commands/export_formats.py) loads what it wrote with the
library it is for and compares outputs with mtbert's before anything is put
in place. Every export has a model card (``README.md``, mtbert/commands/modelcard.py).

The weights are the run's checkpoint (the best evaluation). Adapters: one
whose factory says ``mergeable = True`` (LoRA) is folded into the encoder's
own weights; any other (PALs, the BiLSTM on top) changes the network in a way
a plain BERT cannot express, and is refused for every format but ONNX, which
traces mtbert's own modules. ``OUT`` must not exist or be empty; it is written
into a temporary sibling and renamed into place, so a failed export leaves
nothing.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import attrs
from safetensors import SafetensorError

from mtbert.base.atomic import sweep_dead, temporary
from mtbert.base.errors import MtbertError, WriteError
from mtbert.commands.modelcard import model_card


@attrs.frozen
class Exported:
    path: Path
    model_type: str  # config.json's model_type ("bert", "roberta" ...), "onnx" for ONNX
    notes: list[str]  # what was done beyond copying weights (e.g. LoRA merged)
    format: str = "encoder"
    load: str = ""  # how to load it, one line


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MtbertError(f"{out} already holds files; export into a new or empty directory (nothing was changed)")


FORMATS = ("encoder", "transformers", "sentence-transformers", "onnx")
LOADS = {
    "encoder": "transformers.AutoModel.from_pretrained({out!r})",
    "transformers": "sentence_transformers.CrossEncoder({out!r}) (or transformers' "
                    "AutoModelForSequenceClassification)",
    "transformers-single": "transformers.pipeline(\"text-classification\", model={out!r})",
    "sentence-transformers": "sentence_transformers.SentenceTransformer({out!r}).encode(sentences)",
    "onnx": "onnxruntime.InferenceSession({out!r} + \"/model.onnx\") (tokenizer files beside it)",
}


def export(run_dir: str | Path, out: str | Path, registry=None, task: str | None = None,
           fmt: str = "encoder") -> Exported:
    """Write the run at ``run_dir`` into ``out`` as ``fmt``: the encoder for ``AutoModel``
    (default), one task as a sequence classifier, a SentenceTransformer, or ONNX."""
    from mtbert.commands import export_formats as formats
    from mtbert.model.build import pair_encoding
    from mtbert.runs.finished import open_run, with_model
    from mtbert.plugin.interfaces import SentenceEmbedding
    from mtbert.config.validation import export_problem

    if fmt not in FORMATS:
        raise MtbertError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    opened = open_run(run_dir, registry, weights=False)
    spec = opened.spec
    if task is not None and task not in spec.tasks:
        raise MtbertError(f"unknown task {task!r}; this run has: {', '.join(spec.tasks)}")
    if fmt == "transformers" and task is None:
        raise MtbertError("--format transformers writes one task's classifier: give --task "
                          f"({', '.join(spec.tasks)})")
    check_out(out)
    if fmt != "onnx":  # ONNX traces mtbert's own modules: any adapter exports
        problem = export_problem(spec, opened.registry)
        if problem:
            raise MtbertError(problem)
    model = with_model(opened).model
    head = model.heads[task] if task is not None else None
    pairs = task is not None and spec.tasks[task].data.text_pair is not None
    bi = pairs and pair_encoding(opened.registry, spec.tasks[task].head) == "bi"
    form = None
    if fmt == "transformers":
        form = head.as_sequence_classifier()
        if isinstance(form, str):
            raise MtbertError(refusal(task, spec.tasks[task].head.name, fmt, form, head, pairs and not bi))
        names = spec.tasks[task].data.label_names
        if names and len(names) == len(form.label_names):
            form = attrs.evolve(form, label_names=list(names))
        elif names and len(names) == 2 and len(form.label_names) == 1 and form.problem_type != "regression":
            form = attrs.evolve(form, label_names=[names[1]])  # one logit: the positive class's
    if fmt == "sentence-transformers" and pairs and not bi:
        raise MtbertError(refusal(task, spec.tasks[task].head.name, fmt,
                                  "the task reads each pair as one joint sequence (cross-encoded), so it never "
                                  "trained vectors of single sentences", head, cross_pair=True))
    if fmt == "sentence-transformers":
        form = head.as_sentence_embedding() if head is not None else SentenceEmbedding("mean")
        if isinstance(form, str):
            raise MtbertError(refusal(task, spec.tasks[task].head.name, fmt, form, head))
    notes = [module.merge(model.encoder) for module in model.adapters if hasattr(module, "merge")]
    max_length = spec.data.max_length

    def fill(directory: Path) -> None:
        if fmt == "encoder":
            model.encoder.save_hf(directory)
            formats.save_tokenizer(model.encoder.tokenizer, directory, max_length)
        elif fmt == "transformers":
            formats.write_transformers(directory, model, task, form, pairs, max_length)
        elif fmt == "sentence-transformers":
            formats.write_sentence_transformers(directory, model, form, task, max_length)
        else:
            formats.write_onnx(directory, model, task, bi, pairs, max_length)
        output = onnx_meaning(opened, task) if fmt == "onnx" else None
        card = model_card(opened, model, fmt, task, form, out, bi=bi, onnx_output=output)
        (directory / "README.md").write_text(card, encoding="utf-8")

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars of the self-checks are not the user's
    try:
        write_new_directory(out, fill)
    finally:
        hf_logging.enable_progress_bar()
    if fmt == "encoder":
        notes.append("the task heads are not part of the export (a Hugging Face model directory holds the encoder)")
    model_type = json.loads((out / "config.json").read_text()).get("model_type", "") \
        if (out / "config.json").is_file() else "onnx"
    load = LOADS[fmt] if fmt != "transformers" or pairs else LOADS["transformers-single"]
    return Exported(out, model_type, notes, fmt, load.format(out=str(out)))


def onnx_meaning(opened, task: str | None) -> str:
    """What model.onnx's output is, for the card."""
    if task is None:
        return "output: [batch, tokens, hidden], the shared encoder's token states"
    from mtbert.model.build import label_spec

    labels = label_spec(opened.registry, opened.spec.tasks[task].head)
    scale = f"{labels.high:g} x it" if labels.high is not None else "a multiple of it"
    what = {"multiclass": f"one logit per class ({labels.num_labels}); the largest is mtbert's answer",
            "binary": "one logit; above 0 means label 1",
            "regression": "the head's score (mtbert clips it to the label range)",
            "similarity": f"the cosine of the two sentences' vectors; mtbert's score is {scale}, clipped to the "
                          "label range"}
    return f"output: task {task}'s head output, {what.get(labels.kind, labels.kind)}"


def refusal(task: str, head_name: str, fmt: str, reason: str, head, cross_pair: bool = False) -> str:
    """One screen: what cannot be exported, why, and the formats that would take it."""
    works = ["onnx"]
    if not cross_pair and not isinstance(head.as_sentence_embedding(), str):
        works.append("sentence-transformers (its sentence vectors)")
    if not isinstance(head.as_sequence_classifier(), str):
        works.append("transformers")
    works.append("encoder (the shared encoder alone)")
    return (f"task {task!r} (head \"{head_name}\") cannot be exported as {fmt}: {reason}.\n"
            f"  formats that take it: {', '.join(works)}")


def write_new_directory(out: Path, fill) -> None:
    """``fill`` a temporary sibling of ``out``, then rename it into place; nothing is left on failure."""
    tmp = temporary(out, "export")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sweep_dead(out.parent, f".{glob.escape(out.name)}.export-")  # what a killed export left
        tmp.mkdir()
    except OSError as exc:
        raise WriteError("the export", out, exc, training=False) from None
    try:
        fill(tmp)
        check_out(out)  # still free (nothing raced us)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError("the export", out, exc, training=False) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
