"""Checks across components, from the capabilities each one declares.

A component declares what it needs and offers once, as class attributes of
the class it registers (the factory when it is a class; ``declares=`` when the
factory is a function); this module is the only reader (through
``Component.capability``), so a new capability is one attribute and one check
here, and the core never names a method:

========================  ===========  ===============================================
attribute                 kind         meaning
========================  ===========  ===============================================
``one_task_per_step``     samplers     each step holds one task's batch (default True)
``needs_all_tasks``       gradients    the method combines every task's gradient in a step
``has_layer_slots``       encoders     the encoder offers per-layer slots (``layer_slots``)
``positions``             encoders     ``positions(options)``: the longest input, or None
``has_pooler``            encoders     a pooler for pooling = "pooler" (or a function of the options)
``has_layers``            encoders     one layer module per depth (trainable = "last_layers")
``supports_bf16``         encoders     runs under bf16 autocast (default True; train.precision = "bf16")
``attention_projections`` encoders     ``(options)``: the query / value projections' names ([]: unknown)
``needs_attention_projections`` adapters ``(options)``: the adapter adapts those projections
``input_embeddings``      encoders     ``embed`` gives the input embeddings
``hf_export``             encoders     ``save_hf(directory)`` writes a Hugging Face model
``needs_layer_slots``     adapters     the adapter installs a branch in every layer
``mergeable``             adapters     the adapter folds into the encoder's weights
``needs_embeddings``      regularizers the regularizer perturbs the input embeddings
``provides``/``requires`` any          names offered to / needed from other components
========================  ===========  ===============================================

``provides``/``requires`` are for components that need one another (a
gradient method that needs a balancer's learnable weights, an adapter that
needs another plugin's): a phase whose components require a name that none
of the run's components provide is refused before anything is written.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mtbert.base.paths import expand
from mtbert.config.phases import resolve_phases
from mtbert.plugin.structure import closest

if TYPE_CHECKING:  # types only: the spec module imports this one
    from mtbert.plugin.registry import Registry
    from mtbert.config.spec import ComponentSpec, Spec, TaskSpec

TASK_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")  # task names name output files


def declared(registry: Registry, component: ComponentSpec, capability: str, default=False):
    """What ``component``'s factory declares for ``capability``."""
    return registry.get(component.kind, component.name).capability(capability, default)


def offering(registry: Registry, capability: str, kind: str = "encoders") -> str:
    """The installed components of ``kind`` whose factory declares ``capability``, for a hint."""
    names = [n for n in registry.names(kind) if registry.get(kind, n).capability(capability, False)]
    return ", ".join(f'"{n}"' for n in names) if names else f"none is installed ({kind} that declare {capability})"


def run_name_problem(name: str) -> str | None:
    """The run's name becomes a folder under ``out``: one plain folder name, nothing that climbs out."""
    if not name.strip():
        return "the run's name is empty; give it one, e.g. name = \"sst-baseline\""
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("~"):
        return (f"{name!r} is not a folder name: the run goes to <out>/<name>, so a name may not hold a path; "
                "choose where runs go with out = \"...\" (or --out) and keep name a plain name")
    if any(ord(c) < 32 for c in name):
        return f"{name!r} holds control characters; use a plain name"
    return None


def of_options(capability, options):
    """A capability that may depend on the component's options: called with them when it is a function."""
    return capability(options) if callable(capability) else capability


def describe_encoder(spec) -> str:
    """The encoder as a user named it: its name, and its model type when the spec gives one."""
    config = getattr(spec.encoder.options, "config", None)
    kind = config.get("model_type") if isinstance(config, dict) else None
    return f"\"{spec.encoder.name}\"" + (f", model_type {kind}" if kind else "")


def check_run(spec: Spec, registry: Registry) -> list[tuple[str, str]]:
    """Checks across the whole spec: phases, the step contract, adapters, what components need."""
    problems = []
    name_problem = run_name_problem(spec.name)
    if name_problem:
        problems.append(("name", name_problem))
    for i, phase in enumerate(spec.phases):
        for task in phase.tasks or ():
            if task not in spec.tasks:
                problems.append((f"phases[{i}].tasks", f"unknown task {task!r}; tasks: {', '.join(spec.tasks)}"))
    if spec.init_from is not None:
        from mtbert.base.paths import find_checkpoint

        if find_checkpoint(expand(spec.init_from)) is None:
            problems.append(("init_from", f"{spec.init_from} holds no checkpoint (give a run directory "
                             "or its checkpoint/ directory)"))
    longest = declared(registry, spec.encoder, "positions", None)  # the encoder's position table, if known here
    longest = longest(spec.encoder.options) if longest is not None else None
    if longest is not None and spec.data.max_length > longest:
        problems.append(("data.max_length", f"{spec.data.max_length} tokens, but encoder \"{spec.encoder.name}\" "
                         f"takes at most {longest}; set data.max_length = {longest} or less"))
    problems += _layers(spec, registry)
    if spec.train.precision == "bf16" and \
            of_options(declared(registry, spec.encoder, "supports_bf16", True), spec.encoder.options) is False:
        problems.append(("train.precision", f"this encoder ({describe_encoder(spec)}) fails in bf16 inside "
                         "transformers; use precision = \"fp32\" (\"auto\" falls back to it)"))
    pooler = of_options(declared(registry, spec.encoder, "has_pooler", None), spec.encoder.options)
    if pooler is False:
        for name, task in spec.tasks.items():
            if getattr(task.head.options, "pooling", None) == "pooler":
                problems.append((f"tasks.{name}.head.pooling", f"\"pooler\" reads the encoder's pooler, which "
                                 f"this encoder ({describe_encoder(spec)}) does not have; use pooling = \"cls\" "
                                 "or \"mean\""))
    if spec.phases:
        for key in ("epochs", "steps"):
            if getattr(spec.train, key) is not None:
                problems.append((f"train.{key}", "unused when [[phases]] give each phase its length; remove it"))
    if problems:
        return problems
    for phase in resolve_phases(spec):
        where = phase.where
        if declared(registry, phase.gradient, "needs_all_tasks") and \
                declared(registry, phase.sampler, "one_task_per_step", True):
            joint = " or ".join(f'sampler = "{n}"' for n in registry.names("samplers")
                                if not registry.get("samplers", n).capability("one_task_per_step", True))
            problems.append((where("gradient"), f"\"{phase.gradient.name}\" combines every task's gradient "
                             f"in the same step, but sampler \"{phase.sampler.name}\" draws one task per step, "
                             "so it would never see two tasks at once; use a sampler that puts several tasks "
                             f"in a step: {joint}"))
        untrained = [t for t in phase.tasks if not spec.tasks[t].data.train]
        if untrained:
            problems.append((where("tasks"), f"task(s) {', '.join(untrained)} have no train file"))
        if phase.trainable == "adapters" and not spec.adapters:
            problems.append((where("trainable"), "\"adapters\" trains the adapters and heads, "
                             "but the spec has no adapters"))
        problems += _requirements(spec, registry, phase)
    # A component option named `tasks` names tasks of this spec (e.g. SMART's, PALs').
    for where, items in (("regularizers", spec.regularizers), ("adapters", spec.adapters)):
        for i, item in enumerate(items):
            for task in getattr(item.options, "tasks", None) or ():
                if task not in spec.tasks:
                    problems.append((f"{where}[{i}].tasks", f"unknown task {task!r}{closest(task, spec.tasks)}; "
                                     f"tasks: {', '.join(spec.tasks)}"))
    for i, adapter in enumerate(spec.adapters):
        if declared(registry, adapter, "needs_layer_slots") and \
                of_options(declared(registry, spec.encoder, "has_layer_slots"), spec.encoder.options) is False:
            problems.append((f"adapters[{i}]", f"\"{adapter.name}\" adds a branch inside every encoder layer, "
                             f"which encoder \"{spec.encoder.name}\" does not offer; use an encoder that does: "
                             f"{offering(registry, 'has_layer_slots')}"))
        if of_options(declared(registry, adapter, "needs_attention_projections"), adapter.options) and \
                of_options(declared(registry, spec.encoder, "attention_projections", None), spec.encoder.options) == []:
            problems.append((f"adapters[{i}].targets", f"\"{adapter.name}\" adapts the attention's query and value "
                             f"projections by default, whose names mtbert does not know for this encoder "
                             f"({describe_encoder(spec)}); name the linear layers to adapt, e.g. targets = "
                             "[\"q_proj\", \"v_proj\"] (the run's error lists the encoder's linear layers)"))
    for i, regularizer in enumerate(spec.regularizers):
        if declared(registry, regularizer, "needs_embeddings") and \
                not declared(registry, spec.encoder, "input_embeddings"):
            problems.append((f"regularizers[{i}]", f"\"{regularizer.name}\" perturbs the input embeddings, which "
                             f"encoder \"{spec.encoder.name}\" does not give (no input_embeddings); "
                             f"use an encoder that does: {offering(registry, 'input_embeddings')}"))
    return problems


def _layers(spec: Spec, registry: Registry) -> list[tuple[str, str]]:
    """Training the last layers needs the encoder's layers one by one: refused for an encoder whose
    layers cannot be found (asked only when a phase trains the last layers). Per-layer gradient blocks
    come from the parameters' names instead (mtbert/toolkit/pertask.py), ALBERT's shared layers too."""
    needing = [(phase.where("trainable"), 'trainable = "last_layers"') for phase in resolve_phases(spec)
               if phase.trainable == "last_layers"]
    if not needing or of_options(declared(registry, spec.encoder, "has_layers", None), spec.encoder.options) \
            is not False:
        return []
    return [(where, f"{what} needs the encoder's layers one by one, which this encoder ({describe_encoder(spec)}) "
             "does not have (ALBERT shares one group of layers across depths); train everything (trainable = "
             '"all"), or the heads (trainable = "heads")') for where, what in needing]


def _requirements(spec: Spec, registry: Registry, phase) -> list[tuple[str, str]]:
    """Each `requires` name of a phase's components must be some component's `provides`."""
    parts = [(phase.where("gradient"), phase.gradient), (phase.where("sampler"), phase.sampler),
             (phase.where("balancer"), phase.balancer), ("encoder", spec.encoder),
             *((f"regularizers[{i}]", r) for i, r in enumerate(spec.regularizers)),
             *((f"adapters[{i}]", a) for i, a in enumerate(spec.adapters))]
    offered = {name: component for _, component in parts for name in declared(registry, component, "provides", ())}
    problems = []
    for where, component in parts:
        for need in sorted(declared(registry, component, "requires", ())):
            if need not in offered:
                providers = [c.name for c in registry.all() if need in c.capability("provides", ())]
                hint = (f"add one that provides it: {', '.join(providers)}" if providers
                        else "no installed plugin provides it")
                problems.append((where, f"\"{component.name}\" needs \"{need}\", which no component of this "
                                 f"{'phase' if where.startswith('phases') else 'run'} provides; {hint}"))
    return problems


def export_problem(spec: Spec, registry: Registry) -> str | None:
    """Why the run's encoder cannot be written as a plain Hugging Face model, or None."""
    for adapter in spec.adapters:
        if not declared(registry, adapter, "mergeable"):
            merging = [c.name for c in registry.all() if c.kind == "adapters" and c.capability("mergeable", False)]
            instead = (f", or train with an adapter that merges ({', '.join(merging)})" if merging else "")
            return (f"the run uses adapter \"{adapter.name}\", which changes the network in a way a plain Hugging "
                    "Face model cannot express (its plugin does not declare mergeable: it cannot be folded into "
                    "the encoder's own weights).\n  instead: predict with the run itself (`mtbert predict RUN_DIR "
                    f"...` or `mtbert.load(RUN_DIR).predict(...)`){instead}")
    if not declared(registry, spec.encoder, "hf_export"):
        return (f"encoder \"{spec.encoder.name}\" cannot write itself as a Hugging Face model (its plugin declares "
                "no hf_export); export can write only encoders that can")
    return None


def check_task(name: str, task: TaskSpec, registry: Registry):
    path = f"tasks.{name}"
    if not TASK_NAME.match(name):
        yield path, "task names are lower-case letters, digits, '_' or '-' (they name output files)"
    entry = registry.get("heads", task.head.name)
    head = entry.factory
    if not callable(getattr(head, "labels", None)):
        yield (f"{path}.head", f"head \"{task.head.name}\" from plugin '{entry.plugin}' (package {entry.package}) "
               "has no labels() classmethod, so its labels cannot be checked; see docs/plugins.md")
        return
    kind = head.labels(task.head.options).kind
    loss = registry.get("losses", task.loss.name).factory
    if not hasattr(loss, "accepts"):
        yield (f"{path}.loss", f"loss \"{task.loss.name}\" declares no `accepts` (the head output kinds "
               "it trains); see docs/plugins.md")
    elif kind not in loss.accepts:
        yield (f"{path}.loss", f"\"{task.loss.name}\" trains {', '.join(sorted(loss.accepts))} outputs, "
               f"but head \"{task.head.name}\" gives {kind} outputs")
    for i, metric in enumerate(task.metrics):
        accepts = registry.get("metrics", metric.name).capability("accepts", None) or ()
        if kind not in accepts:
            yield (f"{path}.metrics[{i}]", f"\"{metric.name}\" scores {', '.join(sorted(accepts))} "
                   f"predictions, but head \"{task.head.name}\" gives {kind} ones")
    if getattr(head, "pair_encoding", "cross") == "bi" and task.data.text_pair is None:
        yield f"{path}.head", f"\"{task.head.name}\" encodes sentence pairs, but the task has no data.text_pair"
    if task.data.label_names is not None:
        classes = {"binary": 2, "multiclass": head.labels(task.head.options).num_labels}.get(kind)
        if classes is None:
            yield f"{path}.data.label_names", "label names are for classification tasks"  # real-valued labels
        elif len(task.data.label_names) != classes:
            yield (f"{path}.data.label_names", f"{len(task.data.label_names)} names for a head with "
                   f"{classes} classes; give one name per class, in class order")
    if not task.data.train and not task.data.dev:
        yield f"{path}.data", "give at least a train or a dev file"
