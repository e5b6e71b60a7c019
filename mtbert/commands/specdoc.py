"""Generate docs/spec.md from the spec's classes and every plugin's config class.

    python -m mtbert.commands.specdoc > docs/spec.md

tests/commands/test_docs.py fails when docs/spec.md differs from this output, so the
reference can never drift from the code. The core keys are described below;
a plugin option's description is the comment on its line in the plugin's
config class.
"""

from __future__ import annotations

import inspect
import json
import re
import typing

import attrs

from mtbert.config.phases import DEFAULT_EPOCHS
from mtbert.plugin.registry import Registry
from mtbert.config.spec import ComponentSpec, DataSpec, PhaseSpec, Spec, TaskData, TaskSpec, TrainSpec
from mtbert.plugin.structure import type_name

CORE = {
    Spec: ("Top level", {
        "tasks": "The tasks, one table each: `[tasks.<name>]` (see below). Task names name output files.",
        "name": "The run's name: its directory is `<out>/<name>` (`-2`, `-3` ... if taken).",
        "seed": "Seeds weight initialisation, dropout, shuffling and sampling; CPU runs are bitwise reproducible.",
        "out": "Where run directories go.",
        "encoder": "The shared encoder (kind `encoders`).",
        "data": "Shared data settings (`[data]`).",
        "sampler": "Which tasks each step draws a batch from (kind `samplers`).",
        "optimizer": "The optimizer (kind `optimizers`).",
        "scheduler": "The learning-rate schedule (kind `schedulers`).",
        "gradient": "How the step's task losses become gradients (kind `gradients`).",
        "balancer": "How the step's task losses are weighted before the gradient method (kind `balancers`).",
        "regularizers": "Extra loss terms, a list (kind `regularizers`).",
        "adapters": "Modules added to the encoder, a list (kind `adapters`).",
        "train": "The training loop (`[train]`).",
        "phases": "Stages of the run (`[[phases]]`); none: one phase made of `[train]`.",
        "init_from": "Start from the weights of this run directory (or checkpoint directory).",
    }),
    DataSpec: ("`[data]`", {
        "dir": "The folder holding the data files; `MTBERT_DATA` overrides it; relative to the current directory.",
        "max_length": "Token limit per sequence (a cross-encoded pair counts as one sequence).",
        "cache": "Keep each tokenized file on disk, memory-mapped, for later runs (README, \"Large data\").",
        "cache_dir": "Where the tokenized cache lives; default `$MTBERT_CACHE`, else `<out>/.cache`.",
    }),
    TaskSpec: ("`[tasks.<name>]`", {
        "data": "Where the task's examples are (`[tasks.<name>.data]`).",
        "head": "The task head (kind `heads`).",
        "loss": "The task loss (kind `losses`); must train the head's output kind.",
        "metrics": "Metrics (kind `metrics`); the first is the task's main metric for the overall score.",
        "weight": "Multiplies the task's loss.",
        "prediction_column": "Header of the prediction files' second column (the course: `Predicted_Sentiment` ...).",
    }),
    TaskData: ("`[tasks.<name>.data]`", {
        "reader": "The file format (kind `readers`).",
        "train": "Training file, relative to `data.dir` (for `hf_dataset`: a directory, or `hf://OWNER/NAME:SPLIT`).",
        "dev": "Development file: scored at each evaluation; chooses the best checkpoint.",
        "test": "Unlabeled file: predicted with the best checkpoint at the end.",
        "text": "Column of the (first) text.",
        "text_pair": "Column of the second text of a pair task.",
        "label": "Column of the label.",
        "id": "Column of the example id (`\"\"`: rows are numbered).",
        "label_names": "Class names in class order, for text labels.",
        "limit": "Read only the first N rows of each file (quick runs).",
    }),
    TrainSpec: ("`[train]`", {
        "epochs": f"Length of the run in epochs (default {DEFAULT_EPOCHS} when neither epochs nor steps is given).",
        "steps": "Length of the run in optimizer steps, instead of epochs.",
        "batch_size": "Examples per task batch.",
        "eval_batch_size": "Examples per batch when predicting.",
        "lr": "Peak learning rate of the encoder (and adapters).",
        "head_lr": "Peak learning rate of the heads (default: `lr`).",
        "accumulate": "Sampler steps per optimizer step (gradient accumulation).",
        "max_grad_norm": "Clip the gradient norm to this (0: no clipping).",
        "eval_every": "Evaluate every N optimizer steps (default: after each epoch).",
        "early_stopping": "Stop a phase after this many evaluations without a better overall score.",
        "length_buckets": "Batch examples of similar length together (less padding).",
        "device": "`auto` (CUDA when available), `cpu` or `cuda`.",
        "precision": "`auto` (bf16 autocast on CUDA, fp32 on the CPU), `fp32` or `bf16`.",
        "log_every": "TensorBoard and log lines every N optimizer steps.",
        "threads": "CPU threads for torch (default: torch's choice).",
        "trainable": "What trains: `all`, `heads`, `adapters` (+ heads) or `last_layers` (+ pooler, adapters, heads).",
        "last_layers": "How many top encoder layers `trainable = \"last_layers\"` trains.",
        "save_every": "Write a resumable training state every N steps (and after each epoch's and each phase's last step; 0: those only).",
        "max_bad_steps": "Stop after this many steps in a row with a non-finite loss or gradient (0: never).",
        "compile": "`torch.compile` the encoder's forward pass (dynamic shapes); see docs/benchmarks.md for when it pays.",
        "compile_mode": "`torch.compile`'s mode with `compile = true`: `default`, `reduce-overhead` (CUDA graphs, one per batch shape; not yet measured on a GPU) or `max-autotune`.",
    }),
    PhaseSpec: ("`[[phases]]`", {
        "name": "The phase's name in logs and metrics.",
        "tasks": "The tasks this phase trains (default: all).",
        "sampler": "The phase's sampler (default: the top level's).",
        "gradient": "The phase's gradient method (default: the top level's).",
        "balancer": "The phase's balancer (default: the top level's; the same spec in two phases is one balancer).",
        "trainable": "What this phase trains (default: `train.trainable`).",
        "last_layers": "For `trainable = \"last_layers\"` (default: `train.last_layers`).",
        "epochs": "The phase's length in epochs (give epochs or steps).",
        "steps": "The phase's length in optimizer steps.",
        "lr": "The phase's encoder learning rate (default: `train.lr`).",
        "head_lr": "The phase's head learning rate (default: the phase's lr when it sets one, else `train.head_lr`).",
    }),
}


def default_of(field: attrs.Attribute) -> str:
    if "raw_default" in field.metadata:
        return f"`{field.metadata['raw_default']!r}`".replace("'", '"')
    if field.default is attrs.NOTHING:
        return "required"
    if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
        value = field.default.factory()
        return "see below" if attrs.has(type(value)) else f"`{value!r}`"
    if field.default is None:
        return "-"
    value = field.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value!r}`".replace("'", '"')


def type_of(cls, field: attrs.Attribute) -> str:
    hint = typing.get_type_hints(cls)[field.name]
    if "kind" in field.metadata:
        plural = typing.get_origin(hint) is list
        return f"{'list of ' if plural else ''}component ({field.metadata['kind']})"
    if hint is ComponentSpec:
        return "component"
    return type_name(hint).replace("|", "or")


def option_comments(cls) -> dict[str, str]:
    """The trailing comment on each field's line of a config class."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:.*?#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def table(cls, descriptions: dict[str, str]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for field in attrs.fields(cls):
        lines.append(f"| `{field.name}` | {type_of(cls, field)} | {default_of(field)} | "
                     f"{descriptions.get(field.name, '')} |")
    return lines


def render(registry: Registry) -> str:
    out = ["# The spec, key by key", "",
           "Generated by `python -m mtbert.commands.specdoc` from the code (tests/commands/test_docs.py keeps it in step).",
           "A component is written as its name (`loss = \"mse\"`) or as a table with `name` and the",
           "plugin's options (`head = { name = \"classifier\", num_labels = 5 }`). Unknown keys are",
           "errors. `mtbert validate SPEC` checks a spec; `--set key.path=value` overrides any key",
           "(a number indexes a list: `--set phases.1.epochs=2`).", ""]
    for cls, (title, descriptions) in CORE.items():
        out += [f"## {title}", "", *table(cls, descriptions), ""]
    out += tune_section()
    out += ["## Components", "",
            "Every registered component and its options; `mtbert plugins` lists what is installed.", ""]
    for kind in registry.kinds():
        names = registry.names(kind)
        if not names:
            continue
        out += [f"### {kind}", ""]
        for name in names:
            component = registry.get(kind, name)
            out += [f"#### `{name}`", "", f"{component.description} (plugin `{component.plugin}`, "
                    f"package `{component.package}`)", ""]
            if attrs.fields(component.config):
                out += [*table(component.config, option_comments(component.config)), ""]
            else:
                out += ["No options.", ""]
    return "\n".join(out).rstrip() + "\n"


TUNE = {
    "trials": "Trials in the study, all workers together; a continued study counts what it has (an "
              "interrupted trial is retried, not counted).",
    "sampler": "Optuna's sampler: `tpe`, `random`, `grid` (every parameter discrete) or `nsga2`.",
    "pruner": "`median` or `halving` stop a trial whose overall dev score is hopeless against the others' at "
              "the same step (one objective only); `none`. Default: `median` with one objective.",
    "startup_trials": "The median pruner prunes nothing before this many trials finished.",
    "warmup_steps": "... nor before this training step.",
    "objectives": "What to maximize: `\"overall\"` and/or task names (a task's main dev metric in [0, 1]); "
                  "several give a Pareto front.",
    "study": "The study's name in its storage (default: the spec's `name`).",
    "storage": "A database URL shared by several machines (`postgresql://user@host/db`, needs "
               "`pip install 'mtbert[postgres]'`); default: SQLite in the study directory.",
    "parallel": "Trials at once on this machine (worker processes; CPU threads shared out).",
    "seed": "The sampler's seed (default: the spec's `seed`; worker k adds 1009 k).",
}
PARAM = {
    "type": "`float`, `int` or `choice`.",
    "low, high": "A range's ends (float, int), both included.",
    "log": "Sample on a log scale (float, int).",
    "step": "A range's grid step (float, int); needed for `sampler = \"grid\"`.",
    "values": "A choice's values: anything the key takes (numbers, strings, a component as a table).",
    "when": "`{ <earlier choice> = <value> }`: draw this key only when that choice drew that value "
            "(a component by its name).",
}


def tune_section() -> list[str]:
    from mtbert.tune.settings import Settings

    fields = {f.name: f for f in attrs.fields(Settings) if f.name != "space"}
    out = ["## `[tune]`: a search space (`mtbert tune`)", "",
           "`mtbert tune SPEC --space SPACE.toml` (or a `[tune]` table in the spec, which `mtbert run` ignores) "
           "searches spec keys with Optuna; each trial is a run in the study directory. The settings:", "",
           "| key | default | meaning |", "|---|---|---|"]
    for name, text in TUNE.items():
        field = fields[name]
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        shown = "" if default is None else f"`{json.dumps(default) if isinstance(default, list) else default}`"
        out.append(f"| `{name}` | {shown} | {text} |")
    out += ["", "Each `[params.\"<dotted spec key>\"]` table is one parameter, set in the order given "
            "(`tasks.sst.weight`, `train.lr`, `sampler`, `gradient.c` ...):", "",
            "| key | meaning |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in PARAM.items()), "",
            "Before any trial trains, every parameter's every corner (a range's ends, each choice) is set in the "
            "spec and checked as `mtbert validate` would; a value valid only beside another choice's value "
            "passes, and the trial that draws it with an unfit partner fails with its reason. Example:", "",
            "```toml", "trials = 20", 'pruner = "median"', '[params."train.lr"]', 'type = "float"', "low = 2e-5",
            "high = 4e-4", "log = true", "[params.sampler]", 'type = "choice"',
            'values = ["proportional", "round_robin", "all_tasks"]', "[params.gradient]", 'type = "choice"',
            'values = ["sum", { name = "cagrad", c = 0.4 }]', '[params."gradient.c"]', 'type = "float"',
            "low = 0.1", "high = 0.9", 'when = { gradient = "cagrad" }', "```", ""]
    return out


def own_registry() -> Registry:
    """mtbert's own components only, whatever else is installed."""
    from importlib import metadata

    from mtbert.plugin.loading import GROUP, build_registry

    return build_registry([ep for ep in metadata.entry_points(group=GROUP)
                           if ep.dist is not None and ep.dist.name == "mtbert"])


def main() -> None:
    print(render(own_registry()), end="")


if __name__ == "__main__":
    main()
