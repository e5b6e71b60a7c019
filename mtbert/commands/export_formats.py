"""The writers behind ``mtbert export --format``: one function per format, each filling a
fresh directory from a finished run's model (see mtbert/commands/export.py for the checks around them).

Each writer checks what it wrote before the directory is put in place: it
loads the export with the library it is for and compares its outputs with
mtbert's on a probe batch, so an export that would not load, or would load
to other numbers, is refused rather than written.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from mtbert.base.errors import MtbertError
from mtbert.plugin.interfaces import SentenceEmbedding, SequenceClassifier

PROBE = ["A man is playing a guitar.", "The movie was not good at all, and far too long."]
PROBE_PAIRS = ["Someone plays an instrument.", "It was a short and wonderful film."]


def probe_batch(tokenizer, pairs: bool, max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(PROBE, PROBE_PAIRS if pairs else None, truncation=True, max_length=max_length,
                     padding=True, return_tensors="pt", return_token_type_ids=True)


def save_tokenizer(tokenizer, directory: Path, max_length: int, token_types: bool = True) -> None:
    """The tokenizer, recording the length the model was trained and evaluated at: every library
    that loads it then truncates where mtbert does (not at the checkpoint's 512); without
    ``token_types`` (a model with one token type) it gives no token_type_ids, as mtbert feeds none."""
    kept = tokenizer.model_max_length
    tokenizer.model_max_length = max_length
    try:
        tokenizer.save_pretrained(str(directory))
    finally:
        tokenizer.model_max_length = kept
    if not token_types:  # written into its config: loaders pass it to the tokenizer's constructor
        path = Path(directory) / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["model_input_names"] = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _compare(what: str, ours: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> None:
    gap = (ours.float() - theirs.float()).abs().max().item()
    if not gap <= tolerance:
        raise MtbertError(f"the {what} export does not reproduce mtbert's outputs (largest difference {gap:.2e}, "
                          f"tolerance {tolerance:g}); nothing was written. Please report this as a bug.")


def _write_own_class(directory: Path, top: SequenceClassifier) -> None:
    """The model type's own sequence-classification class over the base model saved in ``directory``:
    the base read back by transformers (which undoes the layout it saves some families in, e.g. GTE's
    fused qkv), the head's top beside it, and the whole class saved by transformers again."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    base = AutoModel.from_pretrained(str(directory)).state_dict()
    config = AutoConfig.from_pretrained(str(directory))
    config.num_labels = len(top.label_names)
    full = AutoModelForSequenceClassification.from_config(config)
    weights = {f"{top.prefix}.{name}": t for name, t in base.items() if name in top.base_keys}
    weights.update(top.top)
    missing, unexpected = full.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise MtbertError(f"the {top.architecture} export does not fit the trained weights (missing "
                          f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); nothing was written. "
                          "Please report this as a bug.")
    for file in [*directory.glob("*.safetensors"), *directory.glob("*.safetensors.index.json")]:
        file.unlink()
    full.save_pretrained(str(directory))


def write_transformers(directory: Path, model, task: str, top: SequenceClassifier, pairs: bool,
                       max_length: int) -> None:
    """``BertForSequenceClassification``: the encoder under ``bert.``, the head's linear layer as
    ``classifier``; config with num_labels, id2label, problem_type."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from mtbert.base import tensorfiles

    encoder = model.encoder
    model_type = encoder.save_hf(directory)
    if top.top is not None:  # the model type's own class, written by transformers (its own file layout)
        _write_own_class(directory, top)
    else:
        files = sorted(directory.glob("*.safetensors"))
        base = {name: t for file in files for name, t in load_file(str(file)).items()}
        for file in files:
            file.unlink()
        if model_type != "bert":
            raise MtbertError(f"the encoder is a {model_type!r} model; this head exports as BERT's pooler -> "
                              "linear classifier, which only a BERT encoder has; train the task with head "
                              "\"own_classifier\" (the model type's own classification head) to export it")
        weights = {f"bert.{name}": t for name, t in base.items()}
        if "bert.pooler.dense.weight" not in weights:
            raise MtbertError("the encoder has no pooler weights; a BERT sequence classifier needs them")
        weights["classifier.weight"] = top.linear.weight.detach().cpu().contiguous()
        weights["classifier.bias"] = top.linear.bias.detach().cpu().contiguous()
        tensorfiles.save(weights, directory / "model.safetensors", metadata={"format": "pt"})
    architecture = top.architecture or "BertForSequenceClassification"
    config = json.loads((directory / "config.json").read_text())
    labels = top.label_names
    config.update(architectures=[architecture], problem_type=top.problem_type,
                  id2label={str(i): n for i, n in enumerate(labels)}, label2id={n: i for i, n in enumerate(labels)})
    if len(labels) == 1:  # CrossEncoder: give the head's raw score, not a sigmoid of it
        config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    token_types = getattr(encoder, "uses_token_types", True)
    save_tokenizer(encoder.tokenizer, directory, max_length, token_types)

    loaded = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    batch = probe_batch(encoder.tokenizer, pairs, max_length)
    # a model with one token type (RoBERTa) gets no token_type_ids, as its tokenizer (as saved) gives none
    given = {k: v for k, v in batch.items() if token_types or k != "token_type_ids"}
    with torch.no_grad():
        theirs = loaded(**given).logits
        ours = model(task, dict(batch))
    _compare("transformers", ours.reshape(theirs.shape), theirs, 1e-4)


def write_sentence_transformers(directory: Path, model, how: SentenceEmbedding, task: str | None,
                                max_length: int) -> None:
    """A SentenceTransformer directory: the encoder (Transformer), its Pooling, Normalize if the
    head compares unit vectors; written by sentence-transformers itself."""
    try:
        from sentence_transformers import SentenceTransformer
        try:  # sentence-transformers >= 6
            from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
        except ImportError:
            from sentence_transformers.models import Normalize, Pooling, Transformer
    except ImportError:
        raise MtbertError("the sentence-transformers export needs the sentence-transformers package: "
                          "pip install sentence-transformers") from None
    from mtbert.model.pooling import pool

    encoder = model.encoder
    staging = directory / "0_Transformer"
    staging.mkdir()
    encoder.save_hf(staging)
    save_tokenizer(encoder.tokenizer, staging, max_length)
    transformer = Transformer(str(staging), max_seq_length=max_length)
    pooling = Pooling(encoder.hidden_size, pooling_mode=how.pooling)
    modules = [transformer, pooling] + ([Normalize()] if how.normalize else [])
    st = SentenceTransformer(modules=modules, device="cpu")
    final = directory / "model"
    st.save(str(final))
    for item in final.iterdir():  # the SentenceTransformer at the directory's top, as the Hub has them
        item.rename(directory / item.name)
    final.rmdir()
    _remove_tree(staging)

    loaded = SentenceTransformer(str(directory), device="cpu")
    theirs = loaded.encode(PROBE, convert_to_tensor=True, show_progress_bar=False)
    batch = probe_batch(encoder.tokenizer, False, max_length)
    with torch.no_grad():
        ours = pool(model.encode(task, batch), how.pooling).float()
        if how.normalize:
            ours = nn.functional.normalize(ours, dim=-1)
    _compare("sentence-transformers", ours, theirs, 1e-5)


class _TaskGraph(nn.Module):
    """The model as one function of tensors, for tracing: the task's head output, or the
    encoder's token states without a task."""

    def __init__(self, model, task: str | None, bi: bool):
        super().__init__()
        self.model, self.task, self.bi = model, task, bi

    def forward(self, input_ids, attention_mask, token_type_ids, input_ids_b=None, attention_mask_b=None,
                token_type_ids_b=None):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if self.task is None:
            return self.model.encode(None, batch).states
        if self.bi:
            batch.update(input_ids_b=input_ids_b, attention_mask_b=attention_mask_b, token_type_ids_b=token_type_ids_b)
        return self.model(self.task, batch)


def write_onnx(directory: Path, model, task: str | None, bi: bool, pairs: bool, max_length: int) -> list[str]:
    """``model.onnx``: inputs input_ids, attention_mask, token_type_ids (and the ``_b`` three for a
    bi-encoded pair), batch and length dynamic; output the head's (or the encoder's) output.
    Checked under onnxruntime when it is installed; returns the input names."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MtbertError("the onnx export needs the onnx package: pip install onnx onnxruntime") from None
    tokenizer = model.encoder.tokenizer
    names = ["input_ids", "attention_mask", "token_type_ids"]
    batch = probe_batch(tokenizer, pairs and not bi, max_length)
    args = [batch[n] for n in names]
    if bi:
        second = probe_batch(tokenizer, False, max_length) if not pairs else tokenizer(
            PROBE_PAIRS, truncation=True, max_length=max_length, padding=True, return_tensors="pt",
            return_token_type_ids=True)
        names += ["input_ids_b", "attention_mask_b", "token_type_ids_b"]
        args += [second[n] for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = _TaskGraph(model, task, bi).eval()
    output = "states" if task is None else "output"
    from torch.export import Dim

    batch_dim = Dim("batch")
    lengths = {"": Dim("length", max=max_length), "_b": Dim("length_b", max=max_length)}
    dynamic = {n: {0: batch_dim, 1: lengths["_b" if n.endswith("_b") else ""]} for n in names}
    path = directory / "model.onnx"
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter's notes (no torchvision, axis renames) are not the user's
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, tuple(args), input_names=names, output_names=[output],
                                        dynamic_shapes=dynamic, dynamo=True, verbose=False)
            program.save(str(path))
    finally:
        quiet.setLevel(level)
    save_tokenizer(tokenizer, directory, max_length)
    try:
        import onnxruntime
    except ImportError:
        return names
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # and a batch of another size and length than the traced one: the axes really are dynamic
    short = ["Short."]
    other = [a[:1] for a in args]
    encoded = tokenizer(short, short if pairs and not bi else None, return_tensors="pt", return_token_type_ids=True)
    other[:3] = [encoded[n] for n in ("input_ids", "attention_mask", "token_type_ids")]
    if bi:
        encoded = tokenizer(["A much longer second sentence than the first."], return_tensors="pt",
                            return_token_type_ids=True)
        other[3:] = [encoded[n] for n in ("input_ids", "attention_mask", "token_type_ids")]
    for tensors in (args, other):
        theirs = torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, tensors)})[0])
        with torch.no_grad():
            ours = graph(*tensors)
        _compare("onnx", ours, theirs, 1e-4)
    return names


def _remove_tree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)
