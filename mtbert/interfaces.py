"""What each kind of component must provide.

A plugin registers a factory per component; the core calls it with the
arguments listed here and uses the result only through these methods. The
base classes carry sensible defaults; subclassing them is the easy way to
meet an interface, not a requirement (the core checks attributes, not types).
See docs/plugins.md for the same contract with examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator, NamedTuple

import attrs
import torch
from torch import Tensor, nn

# What a head outputs: class logits, one logit, a score in label units, or a
# cosine similarity in [-1, 1] (bi-encoder heads; their labels are real values
# and their predictions map the cosine onto the label range).
OUTPUT_KINDS = ("multiclass", "binary", "regression", "similarity")


class Encoded(NamedTuple):
    """An encoder's output for one batch of sequences."""

    states: Tensor  # [batch, length, hidden] last-layer token states
    mask: Tensor  # [batch, length] 1 for real tokens, 0 for padding
    pooled: Tensor | None = None  # [batch, hidden] BERT pooler output, if the encoder has one


@attrs.frozen
class LabelSpec:
    """What labels a task's data must hold, derived from its head."""

    kind: str  # one of OUTPUT_KINDS
    num_labels: int | None = None  # multiclass only
    low: float | None = None  # regression / similarity: allowed label range, if any
    high: float | None = None

    @property
    def real_valued(self) -> bool:
        return self.kind in ("regression", "similarity")


# -- encoders: factory(config, *, restore: Path | None = None) -> Encoder -------
class Encoder(nn.Module):
    """Token ids -> :class:`Encoded`.

    ``restore`` is a checkpoint directory previously filled by
    ``save_architecture``: build the same architecture (weights are loaded by
    the core afterwards) without touching the original source.

    A factory with the attribute ``layer_slots = True`` promises encoders with
    ``layer_slots``; validation refuses adapters that need slots otherwise.
    """

    hidden_size: int
    tokenizer: Any  # a transformers tokenizer (callable on texts / text pairs)
    # Per-layer ModuleLists where adapters add parallel branches (see
    # mtbert.encoder.Layer); None for encoders without such slots.
    layer_slots: list[nn.ModuleList] | None = None
    # The transformer layers in order (for training only the last k of them).
    layers: nn.ModuleList

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Input embeddings (what SMART perturbs)."""
        raise NotImplementedError

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                *, task: str | None = None, inputs_embeds: Tensor | None = None) -> Encoded:
        raise NotImplementedError

    def save_architecture(self, directory: Path) -> None:
        """Write what ``restore`` needs (config, tokenizer files) into ``directory``."""
        raise NotImplementedError


# -- readers: factory(config) -> Reader ------------------------------------------
class Reader:
    """A data file -> (line number, {column: string}) rows.

    Must raise :class:`mtbert.errors.DataError` naming the file, line and
    problem for anything malformed.
    """

    def rows(self, path: Path) -> Iterator[tuple[int, dict[str, str]]]:
        raise NotImplementedError


# -- heads: factory(config, hidden_size) -> Head ------------------------------------
class Head(nn.Module):
    """Encoder output -> task output (logits or scores).

    ``pair_encoding`` says how a sentence pair reaches the head: "cross" (one
    joint sequence ``[CLS] a [SEP] b [SEP]``, forward gets one Encoded) or
    "bi" (each sentence encoded alone, forward gets a tuple of two).
    """

    output_kind: str  # a class attribute, or set per instance when it depends on the config
    pair_encoding: ClassVar[str] = "cross"

    @classmethod
    def labels(cls, config) -> LabelSpec:
        """What the task's labels must be; validation and the data reader use it."""
        return LabelSpec(cls.output_kind, getattr(config, "num_labels", None))

    def forward(self, encoded):  # Encoded | tuple[Encoded, Encoded] -> Tensor
        raise NotImplementedError

    def predict(self, output: Tensor) -> Tensor:
        """Head output -> predictions (class ids, or scores for regression)."""
        raise NotImplementedError


# -- losses: factory(config, labels: LabelSpec) -> Loss ------------------------------
class Loss:
    accepts: ClassVar[frozenset[str]]  # head output kinds it can train

    def __call__(self, output: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError


# -- metrics: factory(config, labels: LabelSpec) -> Metric ----------------------------
class Metric:
    """Predictions vs labels -> a float; ``range`` maps it to [0, 1] for the overall score."""

    accepts: ClassVar[frozenset[str]]
    range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def __call__(self, predictions: Tensor, labels: Tensor) -> float:
        raise NotImplementedError

    def normalized(self, value: float) -> float:
        low, high = self.range
        return (value - low) / (high - low)


# -- samplers: factory(config, context: SamplerContext) -> Sampler -------------------
@attrs.frozen
class SamplerContext:
    sizes: dict[str, int]  # training examples per task (N_t)
    batches: dict[str, int]  # batches per full pass over each task
    epochs: int  # total epochs of the run (E), for schedules that anneal
    seed: int


class Sampler:
    """Which tasks each training step draws one batch from (the step contract).

    ``plan(epoch)`` returns the whole epoch as a list of steps, each a list of
    task names; it must be a pure function of (config, context, epoch) so a
    resumed run replays the same schedule.
    """

    one_task_per_step: ClassVar[bool] = True

    def __init__(self, config, context: SamplerContext):
        self.config, self.context = config, context

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def plan(self, epoch: int) -> list[list[str]]:
        raise NotImplementedError

    def generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.context.seed * 1_000_003 + epoch)

    def draw(self, weights: dict[str, float], steps: int, epoch: int) -> list[list[str]]:
        """``steps`` single-task steps, task t drawn with probability weights[t] / sum."""
        names = list(weights)
        p = torch.tensor([weights[n] for n in names], dtype=torch.float64)
        picks = torch.multinomial(p / p.sum(), steps, replacement=True, generator=self.generator(epoch))
        return [[names[i]] for i in picks.tolist()]


# -- optimizers: factory(config, groups: list[ParamGroup]) -> torch.optim.Optimizer ---
@attrs.frozen
class ParamGroup:
    params: list[nn.Parameter]
    lr: float
    decay: bool  # False for biases and LayerNorm weights
    name: str


# -- schedulers: factory(config, optimizer, total_steps) -> torch LRScheduler ---------


# -- gradient methods: factory(config) -> GradientMethod -----------------------------
class GradientMethod:
    """Per-task losses of one (micro-)step -> gradients.

    ``setup`` runs at the start of each phase with the shared parameters
    (with their names) and the private ones (heads, task-specific adapters).
    ``backward`` is called once per micro-batch with each task's loss
    (already weighted and divided by the accumulation count) and must leave
    ``.grad`` of every trainable parameter as the treatment wants it summed,
    possibly only once ``finish`` has run; ``finish`` runs once before each
    optimizer step.
    """

    needs_all_tasks: ClassVar[bool] = False

    @staticmethod
    def average(tensors: list[Tensor]) -> None:
        """Averages tensors across processes in place (a no-op in one process).

        The loop averages every ``.grad`` across ranks before ``finish``; a
        method that keeps gradients elsewhere (per-task rows) averages them
        with this in ``finish`` before using them. The loop sets it."""

    def setup(self, shared: list[tuple[str, nn.Parameter]], private: list[nn.Parameter],
              tasks: list[str]) -> None:
        self.shared, self.private, self.tasks = shared, private, tasks

    def backward(self, losses: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, Tensor | float]:
        """Called before the optimizer step; returns statistics to log.

        Values may stay on the device: the loop reads them only once per
        logging interval, never in the step."""
        return {}


# -- regularizers: factory(config) -> Regularizer -----------------------------------
class Regularizer:
    """An extra loss term per task batch, and an optional update after each step.

    ``output`` is the head's output of the loop's own (clean) forward pass on
    ``batch``, so a regularizer need not recompute it."""

    def penalty(self, model, task: str, batch: dict[str, Tensor], output: Tensor) -> Tensor:
        raise NotImplementedError

    def after_step(self, model) -> None:
        pass

    def stats(self) -> dict[str, Tensor | float]:
        """Values to log (read once per logging interval, like GradientMethod.finish's)."""
        return {}


# -- adapters: factory(config, encoder, tasks: list[str]) -> nn.Module ----------------
# The factory either installs the adapter inside the encoder (a branch in each
# of ``encoder.layer_slots``, or wrapped linears) or gives the returned module
# a ``transform(encoded, task) -> Encoded`` method, which the model applies to
# the encoder's output before the heads. It returns a module holding the
# adapter's parameters. A module with ``task_specific = True`` is left out of
# the shared parameters that gradient methods treat. A factory attribute
# ``needs_layer_slots = True`` makes validation refuse encoders without slots;
# ``mergeable = True`` promises a module with ``merge(encoder) -> str`` that
# folds the adapter into the encoder's own weights (what `mtbert export` needs)
# and returns a note on what it did. Register each parameter once: a branch installed in the encoder should hold
# a plain reference to the returned module (not a registered submodule), or
# the state dict names the same tensor twice and safetensors refuses it.
