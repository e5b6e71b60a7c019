"""The hooks a plugin may implement.

Every hook only registers components: it is called once with a ``register``
callable and calls ``register(name, factory, options=OptionsClass)`` for each
component it provides. What each kind of factory receives and must return is
in docs/plugins.md and mtbert/plugin/interfaces.py.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mtbert")
hookimpl = pluggy.HookimplMarker("mtbert")

# kind name -> hook name; the order is the order `mtbert plugins` lists them in.
KIND_HOOKS = {
    "encoders": "register_encoders",
    "readers": "register_readers",
    "heads": "register_heads",
    "losses": "register_losses",
    "metrics": "register_metrics",
    "samplers": "register_samplers",
    "optimizers": "register_optimizers",
    "schedulers": "register_schedulers",
    "balancers": "register_balancers",
    "gradients": "register_gradients",
    "regularizers": "register_regularizers",
    "adapters": "register_adapters",
}
# One vocabulary: the kind "gradients" (folder plugins/gradients/, entry points gradients.*, spec key
# `gradient`). Plugins written against the first name keep working: their hook registers into it,
# and the registry answers to the old kind name.
LEGACY_HOOKS = {"register_gradient_methods": "gradients"}
KIND_ALIASES = {"gradient_methods": "gradients"}


@hookspec
def register_encoders(register):
    """Register encoders: text -> token states (e.g. minBERT, a Hugging Face AutoModel)."""


@hookspec
def register_readers(register):
    """Register data readers: a file -> rows of named string fields (TSV, CSV, JSONL ...)."""


@hookspec
def register_heads(register):
    """Register task heads: encoder states -> task outputs (logits or scores)."""


@hookspec
def register_losses(register):
    """Register losses: (head output, labels) -> scalar loss."""


@hookspec
def register_metrics(register):
    """Register metrics: (predictions, labels) -> float, with the range used for the overall score."""


@hookspec
def register_samplers(register):
    """Register multitask samplers: which tasks each training step draws a batch from."""


@hookspec
def register_optimizers(register):
    """Register optimizers: parameter groups -> torch.optim.Optimizer."""


@hookspec
def register_schedulers(register):
    """Register learning-rate schedules: (optimizer, total steps) -> LR scheduler."""


@hookspec
def register_balancers(register):
    """Register task balancers: the step's task losses -> weighted losses (may learn the weights)."""


@hookspec
def register_gradients(register):
    """Register gradient methods: per-task losses -> gradients on the shared parameters."""


@hookspec
def register_gradient_methods(register):
    """The first name of ``register_gradients`` (still called, into the same kind)."""


@hookspec
def register_regularizers(register):
    """Register regularizers: extra loss terms computed from the model, batch and outputs."""


@hookspec
def register_adapters(register):
    """Register adapters: modules added to the encoder (per-layer slots or wrapped linears)."""
