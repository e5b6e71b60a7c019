"""What each kind of component must provide.

A plugin registers a factory per component; the core calls it with the
arguments listed here and uses the result only through these methods. The
base classes carry sensible defaults; subclassing them is the easy way to
meet an interface, not a requirement (the core checks attributes, not types).
See docs/plugins.md for the same contract with examples.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Iterator, NamedTuple

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


# -- encoders: factory(options, *, restore: Path | None = None) -> Encoder -------
class Encoder(nn.Module):
    """Token ids -> :class:`Encoded`.

    ``restore`` is a checkpoint directory previously filled by
    ``save_architecture``: build the same architecture (weights are loaded by
    the core afterwards) without touching the original source.

    A component declaring ``has_layer_slots = True`` (a class attribute of the
    class it registers) promises encoders with ``layer_slots``; validation
    refuses adapters that need slots otherwise.
    """

    hidden_size: int
    tokenizer: Any  # a transformers tokenizer (callable on texts / text pairs)
    # Per-layer ModuleLists where adapters add parallel branches (see
    # mtbert.toolkit.bert.Layer); None for encoders without such slots.
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


# -- readers: factory(options) -> Reader ------------------------------------------
class Reader:
    """A data file -> (line number, {column: string}) rows.

    Must raise :class:`mtbert.errors.DataError` naming the file, line and
    problem for anything malformed.
    """

    def rows(self, path: Path) -> Iterator[tuple[int, dict[str, str]]]:
        raise NotImplementedError

    def locate(self, path: Path) -> None:
        """Raise DataError if there is nothing to read at ``path`` (default: it must be a file)."""
        from mtbert.base.errors import DataError
        if not Path(path).is_file():
            raise DataError(path, None, "file not found")

    def fingerprint(self, path: Path) -> str:
        """A string that changes whenever the rows at ``path`` may have changed; it keys the
        tokenized cache (default: a hash of the file's bytes, or of a directory's files)."""
        from mtbert.base.paths import file_fingerprint
        return file_fingerprint(path)


# -- heads: factory(options, hidden_size) -> Head ------------------------------------
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

    # What `mtbert export --format ...` and `mtbert.load(run).embed` ask a head; each returns
    # the head's form in that format, or a sentence saying why it has none.
    def as_sequence_classifier(self) -> "SequenceClassifier | str":
        """The head as transformers' ``BertForSequenceClassification`` top (pooler -> linear)."""
        return f"head {type(self).__name__} declares no sequence-classification form"

    def as_sentence_embedding(self) -> "SentenceEmbedding | str":
        """How the head makes a sentence vector from the encoder's states (pooling, normalisation)."""
        return f"head {type(self).__name__} declares no sentence-embedding form"


@attrs.frozen
class SequenceClassifier:
    """A head as a transformers sequence classifier: ``dropout -> linear`` over BERT's tanh pooler
    (``linear``), or a model type's own classification top (``top``: its weights under the class's
    names, ``architecture``: the class, ``prefix``: where the class keeps its base model)."""

    linear: nn.Linear | None
    problem_type: str  # transformers' config.problem_type: how its own training would treat the logits
    label_names: list[str]  # one per output (id2label)
    top: dict | None = None
    architecture: str | None = None
    prefix: str | None = None
    base_keys: frozenset | None = None  # the base model's tensors that class keeps (MPNet's drops its pooler)


@attrs.frozen
class SentenceEmbedding:
    """A sentence vector as the head makes it: pooled token states, perhaps L2-normalised."""

    pooling: str  # "cls" or "mean" (mtbert.pooling)
    normalize: bool = False
    meaning: str | None = None  # how the task's score follows from two vectors, for the model card


# -- losses: factory(options, labels: LabelSpec) -> Loss ------------------------------
class Loss:
    accepts: ClassVar[frozenset[str]]  # head output kinds it can train

    def __call__(self, output: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError


# -- metrics: factory(options, labels: LabelSpec) -> Metric ----------------------------
class Metric:
    """Predictions vs labels -> a float; ``range`` maps it to [0, 1] for the overall score."""

    accepts: ClassVar[frozenset[str]]
    range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def __call__(self, predictions: Tensor, labels: Tensor) -> float:
        raise NotImplementedError

    def normalized(self, value: float) -> float:
        low, high = self.range
        return (value - low) / (high - low)


# -- samplers: factory(options, context: SamplerContext) -> Sampler -------------------
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


# -- optimizers: factory(options, groups: list[ParamGroup]) -> torch.optim.Optimizer ---
@attrs.frozen
class ParamGroup:
    params: list[nn.Parameter]
    lr: float
    decay: bool  # False for biases and LayerNorm weights
    name: str


# -- schedulers: factory(options, optimizer, total_steps) -> torch LRScheduler ---------


# -- what every component acting inside the step is told ---------------------------
def _no_collective(tensors: list[Tensor]) -> None:
    """One process: there is nothing to average with."""


@attrs.frozen
class LoopContext:
    """How the loop runs, handed to gradient methods, balancers and regularizers in ``setup``.

    ``average`` averages tensors across processes in place (a no-op in one
    process): the loop averages every ``.grad`` (and the balancers' parameters'
    gradients) itself before the optimizer step; a component that keeps
    gradients or statistics elsewhere averages them with this."""

    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    precision: str = "fp32"  # what the step's forward runs in: "fp32" or "bf16" (autocast)
    accumulate: int = 1  # micro-batches per optimizer step
    world: int = 1  # processes
    rank: int = 0
    average: Callable[[list[Tensor]], None] = _no_collective
    # the model's shared parameters that train now, named (they change with the phase's
    # ``trainable``), for a component that needs gradients at a shared layer
    shared_parameters: Callable[[], list[tuple[str, nn.Parameter]]] = list
    # (no longer filled: a gradient method with ``needs_representations = True`` gets them as
    # ``backward``'s ``representations`` argument; kept so that code reading it does not break)
    representations: Callable[[], dict[str, list[Tensor]]] = dict

    def autocast(self) -> ContextManager:
        """The step's autocast context (bf16 or none), for a component's own forwards."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@attrs.frozen
class TaskInfo:
    """What a balancer knows of each training task."""

    weight: float  # the spec's tasks.<name>.weight
    output_kind: str  # one of OUTPUT_KINDS (classification or real-valued outputs)


# -- balancers: factory(options) -> Balancer -------------------------------------------
class Balancer(nn.Module):
    """The step's ``{task: loss}`` -> ``{task: weighted loss}``, before the gradient method.

    Any balancer combines with any gradient method: the method receives the
    weighted losses (each scaled by the loop for accumulation and processes)
    and treats them as it treats plain ones. Rules for the returned losses:
    one per task given; each may depend on the balancer's own parameters and
    on detached values, but two tasks' losses must not share autograd nodes
    other than leaf parameters (gradient methods backpropagate each task's
    loss on its own and free its graph).

    It is an ``nn.Module``: its ``nn.Parameter``s are adopted by the core
    (a parameter group named "balancer" at ``self.lr``, or the phase's rate
    when None; trained by the run's optimizer; averaged across processes;
    saved in the training state and the checkpoint; kept across phases), and
    its buffers and ``get_extra_state`` (JSON values or tensors) are saved and
    restored the same way. ``setup`` runs once per run, before any
    ``load_state_dict`` of a resumed run. The hooks ``after_step``,
    ``epoch_end`` and ``evaluation_end`` tell it what it needs to adapt.
    """

    lr: float | None = None  # learning rate of its parameters; None: the phase's lr
    # Capabilities (read by mtbert/config/validation.py): names of things this component
    # offers to others, and names it needs some other component of the spec to offer.
    provides: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options=None):
        super().__init__()
        self.options = options
        self.tasks: dict[str, TaskInfo] = {}
        self.context = LoopContext()

    def setup(self, tasks: dict[str, TaskInfo], context: LoopContext) -> None:
        """Once per run, with every training task (a phase may train a subset). Keeps ``tasks``,
        ``context``, ``names`` (the tasks in a fixed order: position i of a per-task tensor) and
        ``task_weights`` (their spec weights on the device, in that order; derived, so not saved)."""
        self.tasks, self.context = dict(tasks), context
        self.names = list(tasks)
        self.task_weights = torch.tensor([info.weight for info in tasks.values()], device=context.device)

    def weigh(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def after_step(self, losses: dict[str, Tensor]) -> None:
        """After each optimizer update (the moment a regularizer's ``after_step`` names too), with
        each task's mean loss over the step's micro-batches on this process (detached, on the
        device; no read-back here). Calls ``step_end``, this hook's first name, which balancers
        written against it override."""
        self.step_end(losses)

    def step_end(self, losses: dict[str, Tensor]) -> None:
        """The first name of ``after_step``: still called by it."""

    def epoch_end(self, epoch: int, losses: dict[str, Tensor]) -> None:
        """After each epoch of a phase, with each task's mean training loss over it,
        averaged across processes (detached, on the device)."""

    def evaluation_end(self, record: dict) -> None:
        """After each dev evaluation, with its record (step, epoch, tasks' scores, overall)."""

    def stats(self) -> dict[str, Tensor | float]:
        """Values to log (read once per logging interval)."""
        return {}


# -- gradient methods: factory(options) -> GradientMethod -----------------------------
class GradientMethod:
    """Per-task losses of one (micro-)step -> gradients.

    ``setup`` runs at the start of each phase with the shared parameters
    (with their names), the private ones (heads, task-specific adapters and
    the balancer's parameters), the phase's tasks and the loop context.
    ``backward`` is called once per micro-batch with each task's loss
    (weighted by the balancer and divided by the accumulation count; each
    task's loss has its own graph, they share only leaf parameters) and must
    leave ``.grad`` of every trainable parameter as the treatment wants it
    summed, possibly only once ``finish`` has run; ``finish`` runs once before
    each optimizer step, after the loop has averaged ``.grad`` across
    processes.
    """

    needs_all_tasks: ClassVar[bool] = False
    # True: the loop calls ``backward(losses, representations=...)`` with each task's shared
    # representation of the micro-batch: ``{task: [states]}``, the encoder's last-layer token states
    # of the loop's own forward (two tensors for a bi-encoded pair), in the graph of the task's loss
    needs_representations: ClassVar[bool] = False
    provides: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[frozenset[str]] = frozenset()

    def setup(self, shared: list[tuple[str, nn.Parameter]], private: list[nn.Parameter],
              tasks: list[str], context: LoopContext) -> None:
        self.shared, self.private, self.tasks, self.context = shared, private, tasks, context

    def backward(self, losses: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, Tensor | float]:
        """Called before the optimizer step; returns statistics to log.

        Values may stay on the device: the loop reads them only once per
        logging interval, never in the step."""
        return {}


# -- regularizers: factory(options) -> Regularizer -----------------------------------
class Regularizer:
    """An extra loss term per task batch, and an optional update after each step.

    ``output`` is the head's output of the loop's own (clean) forward pass on
    ``batch``, so a regularizer need not recompute it. ``needs_embeddings``
    says it calls ``model.embed`` (validation checks the encoder has it)."""

    needs_embeddings: ClassVar[bool] = False
    provides: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[frozenset[str]] = frozenset()

    def setup(self, tasks: list[str], context: LoopContext) -> None:
        """Once per run, with every training task and the loop context."""
        self.context = context

    def penalty(self, model, task: str, batch: dict[str, Tensor], output: Tensor) -> Tensor:
        raise NotImplementedError

    def after_step(self, model) -> None:
        pass

    def stats(self) -> dict[str, Tensor | float]:
        """Values to log (read once per logging interval, like GradientMethod.finish's)."""
        return {}


# -- adapters: factory(options, encoder, tasks: list[str]) -> nn.Module ----------------
# The factory either installs the adapter inside the encoder (a branch in each
# of ``encoder.layer_slots``, or wrapped linears) or gives the returned module
# a ``transform(encoded, task) -> Encoded`` method, which the model applies to
# the encoder's output before the heads. It returns a module holding the
# adapter's parameters. A module with ``task_specific = True`` is left out of
# the shared parameters that gradient methods treat. A declared capability
# (class attribute) ``needs_layer_slots = True`` makes validation refuse encoders without slots;
# ``mergeable = True`` promises a module with ``merge(encoder) -> str`` that
# folds the adapter into the encoder's own weights (what `mtbert export` needs)
# and returns a note on what it did. Register each parameter once: a branch installed in the encoder should hold
# a plain reference to the returned module (not a registered submodule), or
# the state dict names the same tensor twice and safetensors refuses it.
