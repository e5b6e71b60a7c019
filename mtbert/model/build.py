"""Spec + registry -> plain objects: model, losses, metrics, readers, splits.

Each component is made by its plugin's factory and checked against its
interface here, so a plugin returning the wrong thing is reported by name
instead of failing somewhere inside the loop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
from torch import nn

from mtbert.data.splits import Split, load_split
from mtbert.data.cache import Cache
from mtbert.base.errors import MtbertError
from mtbert.plugin.interfaces import LabelSpec, ParamGroup
from mtbert.model.multitask import MultitaskModel
from mtbert.base.paths import expand
from mtbert.plugin.making import REQUIRED, make  # noqa: F401  (re-exported: mtbert.build.make)
from mtbert.plugin.registry import Registry
from mtbert.config.spec import ComponentSpec, Spec

def label_spec(registry: Registry, head: ComponentSpec) -> LabelSpec:
    return registry.get("heads", head.name).factory.labels(head.options)


def pair_encoding(registry: Registry, head: ComponentSpec) -> str:
    return registry.get("heads", head.name).capability("pair_encoding", "cross")


def build_model(spec: Spec, registry: Registry, restore: Path | None = None) -> MultitaskModel:
    kwargs = {"restore": restore} if restore is not None else {}
    encoder = make(registry, spec.encoder, **kwargs)
    # a head that declares needs_encoder is built from it (a model type's own classification top)
    heads = {name: make(registry, task.head, encoder.hidden_size,
                        **({"encoder": encoder} if registry.get("heads", task.head.name).capability("needs_encoder")
                           else {}))
             for name, task in spec.tasks.items()}
    adapters = [make(registry, a, encoder, list(spec.tasks)) for a in spec.adapters]
    return MultitaskModel(encoder, heads, adapters)


@attrs.define
class Task:
    """Everything the loop needs for one task besides the model."""

    name: str
    weight: float
    loss: Any
    metrics: dict[str, Any]  # name -> Metric; the first is the task's main metric
    labels: LabelSpec
    splits: dict[str, Split]
    prediction_column: str


def data_cache(spec: Spec) -> Cache | None:
    """Where tokenized splits are kept: data.cache_dir, else $MTBERT_CACHE, else <out>/.cache."""
    if not spec.data.cache:
        return None
    return Cache(expand(spec.data.cache_dir or os.environ.get("MTBERT_CACHE") or Path(spec.out) / ".cache"))


def build_tasks(spec: Spec, registry: Registry, tokenizer, splits=("train", "dev", "test"),
                progress: bool = False, dist=None) -> dict[str, Task]:
    """Every task's parts, its files read and tokenized. Under torchrun with the cache on, the
    first process builds the cache entries and the others map them once they are written."""
    if dist is not None and dist.world > 1 and spec.data.cache:
        failed = True
        if dist.main:
            try:
                tasks = _build_tasks(spec, registry, tokenizer, splits, progress)
                failed = False
            finally:
                dist.broadcast_object(failed)
            return tasks
        if dist.broadcast_object(None):
            raise MtbertError("the first process could not read the data (its message says why)")
        return _build_tasks(spec, registry, tokenizer, splits, False)
    return _build_tasks(spec, registry, tokenizer, splits, progress)


def _build_tasks(spec: Spec, registry: Registry, tokenizer, splits, progress: bool) -> dict[str, Task]:
    data_dir = expand(spec.data.dir)
    cache = data_cache(spec)
    tasks = {}
    for name, task in spec.tasks.items():
        labels = label_spec(registry, task.head)
        reader = make(registry, task.data.reader)
        loaded = {}
        for split, file in task.data.files().items():
            if split in splits:
                loaded[split] = load_split(name, split, data_dir / file, reader, task.data, labels, tokenizer,
                                           spec.data.max_length, pair_encoding(registry, task.head),
                                           labeled=split != "test", cache=cache,
                                           reader_id=repr(task.data.reader), progress=progress)
        metrics = {m.name: make(registry, m, labels) for m in task.metrics}
        tasks[name] = Task(name, task.weight, make(registry, task.loss, labels), metrics, labels, loaded,
                                task.prediction_column)
    return tasks


def param_groups(model: MultitaskModel, lr: float, head_lr: float | None) -> list[ParamGroup]:
    """Encoder (and adapters) at ``lr``, heads at ``head_lr``; no weight decay on vectors."""
    head_params = {id(p) for p in model.heads.parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            part = "heads" if id(param) in head_params else "encoder"
            # Matrices decay; vectors and scalars (biases, LayerNorm weights, a
            # head's learned scale) do not -- for BERT this is exactly the
            # original recipe and the Hugging Face Trainer's rule.
            groups.setdefault((part, param.ndim >= 2), []).append(param)
    rates = {"encoder": lr, "heads": head_lr or lr}
    return [ParamGroup(params, rates[part], decay, f"{part}{'' if decay else '.no_decay'}")
            for (part, decay), params in groups.items()]
