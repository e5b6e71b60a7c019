"""The Python API: reload a trained run and predict on in-memory texts.

    import mtbert

    model = mtbert.load("runs/baseline")            # device="cuda" for a GPU
    model.tasks                                      # ['sst', 'para', 'sts']
    model.predict("sst", ["A gorgeous film.", "Dull."])          # [4, 1]
    model.predict("sts", [("A man sings.", "A man is singing.")])  # [4.61]

Texts are tokenized exactly as in training (the run's tokenizer, the spec's
``data.max_length``, the head's pair encoding), batched with dynamic padding
and passed through the task's head; predictions come back in input order:
ints for classification heads, floats for regression and similarity heads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

from mtbert.base.errors import MtbertError


class Model:
    """A trained run, ready to predict on lists of sentences or sentence pairs."""

    def __init__(self, predictor):
        self._predictor = predictor
        self.spec = predictor.spec
        self.device = predictor.device

    def __repr__(self) -> str:
        return f"<mtbert.Model {self.spec.name!r}: tasks {', '.join(self.tasks)}; {self.device}>"

    @property
    def tasks(self) -> list[str]:
        """The run's task names, in spec order."""
        return list(self.spec.tasks)

    def takes_pairs(self, task: str) -> bool:
        """Whether ``task`` reads sentence pairs (its data has a ``text_pair`` column)."""
        return self._task(task).data.text_pair is not None

    def _task(self, task: str):
        if task not in self.spec.tasks:
            raise MtbertError(f"unknown task {task!r}; this run has: {', '.join(self.spec.tasks)}")
        return self.spec.tasks[task]

    def _check_inputs(self, task: str, inputs) -> tuple[list[str], list[str] | None]:
        pairs = self.takes_pairs(task)
        want = "(sentence1, sentence2) pairs" if pairs else "sentences"
        if isinstance(inputs, (str, bytes, dict)) or not isinstance(inputs, Iterable):
            raise MtbertError(f"inputs must be a list of {want}, got {_describe(inputs)}"
                              + ("; wrap a single input in a list" if isinstance(inputs, str) else ""))
        inputs = list(inputs)
        firsts, seconds = [], []
        for i, item in enumerate(inputs):
            is_pair = (isinstance(item, (tuple, list)) and len(item) == 2
                       and all(isinstance(s, str) for s in item))
            if pairs and not is_pair:
                raise MtbertError(f"task {task!r} takes sentence pairs: give a list of (sentence1, sentence2) "
                                  f"tuples; input {i} is {_describe(item)}")
            if not pairs and not isinstance(item, str):
                hint = (" (a pair; this task takes one sentence per input)" if is_pair else "")
                raise MtbertError(f"task {task!r} takes single sentences: give a list of str; "
                                  f"input {i} is {_describe(item)}{hint}")
            if pairs:
                firsts.append(item[0].strip())  # stripped like the data reader's rows
                seconds.append(item[1].strip())
            else:
                firsts.append(item.strip())
        return firsts, (seconds if pairs else None)

    def predict(self, task: str, inputs, batch_size: int = 64) -> list:
        """Predictions of ``task`` for a list of sentences (single-text tasks) or of
        (sentence1, sentence2) pairs (pair tasks), in input order: class ids (int) for
        classification heads, scores (float) for regression and similarity heads."""
        from mtbert.model.build import label_spec, pair_encoding
        from mtbert.data.splits import texts_split
        from mtbert.training.prediction import predict

        spec = self._task(task)
        texts, pairs = self._check_inputs(task, inputs)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise MtbertError(f"batch_size must be a positive int, got {batch_size!r}")
        if not texts:
            return []
        p = self._predictor
        tokenizer, max_length = p.model.encoder.tokenizer, p.spec.data.max_length
        split = texts_split(task, texts, pairs, tokenizer, max_length, pair_encoding(p.registry, spec.head))
        values = predict(p.model, task, split, batch_size, p.device, p.pad_id, contextlib.nullcontext)
        cast = float if label_spec(p.registry, spec.head).real_valued else int
        return [cast(v) for v in values.tolist()]


    def embed(self, sentences, task: str | None = None, batch_size: int = 64):
        """Sentence vectors ([len(sentences), hidden] float32 tensor, in input order).

        With ``task``, as that task's head makes them: its pooling, L2-normalised for a cosine
        head (what ``mtbert export --task TASK --format sentence-transformers`` writes); its
        task-specific adapters (PALs) act. Without: mean pooling over the shared encoder."""
        import torch

        from mtbert.data.splits import texts_split
        from mtbert.training.prediction import embed
        from mtbert.plugin.interfaces import SentenceEmbedding

        if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Iterable):
            raise MtbertError(f"sentences must be a list of str, got {_describe(sentences)}"
                              + ("; wrap a single sentence in a list" if isinstance(sentences, str) else ""))
        sentences = list(sentences)
        for i, item in enumerate(sentences):
            if not isinstance(item, str):
                raise MtbertError(f"sentences must be a list of str; sentence {i} is {_describe(item)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise MtbertError(f"batch_size must be a positive int, got {batch_size!r}")
        p = self._predictor
        how = SentenceEmbedding("mean")
        if task is not None:
            self._task(task)
            how = p.model.heads[task].as_sentence_embedding()
            if isinstance(how, str):
                raise MtbertError(f"task {task!r} has no sentence vectors: {how}; call embed() without a task "
                                  "for mean-pooled vectors of the shared encoder")
        if not sentences:
            return torch.zeros(0, p.model.encoder.hidden_size)
        split = texts_split(task or "", [s.strip() for s in sentences], None, p.model.encoder.tokenizer,
                            p.spec.data.max_length, "cross")
        return embed(p.model, task, split, how, batch_size, p.device, p.pad_id)  # task None: no task's branches


def _describe(item) -> str:
    text = repr(item)
    return f"{type(item).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def load(run_dir: str | Path, device: str = "cpu") -> Model:
    """Reload the trained run in ``run_dir`` (its best checkpoint) for prediction."""
    from mtbert.commands.inference import Predictor

    return Model(Predictor.load(run_dir, device))
