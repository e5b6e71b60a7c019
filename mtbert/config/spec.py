"""The run spec: TOML -> frozen attrs classes, every problem reported with its path.

A component (encoder, head, loss, ...) is written as its registry name, or
as a table with ``name`` plus the plugin's own options::

    loss = "mse"
    head = { name = "classifier", num_labels = 5, dropout = 0.3 }

The options are checked against the plugin's config class. Precedence for
every value: the spec file < ``MTBERT_DATA`` (for ``data.dir``) < ``--set``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import attrs
import tomli_w

from mtbert.base.errors import SpecError
from mtbert.base.paths import expand, is_dir, is_file
from mtbert.plugin.registry import Registry, singular
from mtbert.plugin.structure import Structurer, at_least, describe, greater_than, join, non_empty
from mtbert.config.validation import check_run, check_task
from mtbert.plugin.hookspecs import KIND_ALIASES

# What a phase trains: everything, the heads, the adapters (+ heads), or the
# last `last_layers` encoder layers (+ pooler, adapters and heads).
Trainable = Literal["all", "heads", "adapters", "last_layers"]


@attrs.frozen
class ComponentSpec:
    """A registry name plus the options structured into that plugin's config class."""

    kind: str
    name: str
    options: Any

    def to_data(self) -> dict:
        return {"name": self.name, **unstructure(self.options)}


_UNSET = object()


def component(kind: str, default=_UNSET, **kwargs):
    """A field holding a component (or a list of them) of ``kind``.

    A string or list default is spec data, structured like a user's value;
    ``default=None`` makes the component optional."""
    metadata = {"kind": kind}
    if default is None:
        return attrs.field(default=None, metadata=metadata, **kwargs)
    if default is not _UNSET:
        metadata["raw_default"] = default
    return attrs.field(metadata=metadata, **kwargs)


@attrs.frozen
class DataSpec:
    dir: str = "data"
    max_length: int = attrs.field(default=128, validator=at_least(8))
    cache: bool = True  # keep tokenized splits on disk, memory-mapped (mtbert/data/cache.py)
    cache_dir: str | None = None  # default: $MTBERT_CACHE, else <out>/.cache


@attrs.frozen(kw_only=True)
class TaskData:
    """Where a task's examples are and which columns hold what."""

    reader: ComponentSpec = component("readers", default="tsv")
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    text: str = "sentence"
    text_pair: str | None = None  # second sentence of a pair task
    label: str = "label"
    id: str = "id"  # "": no id column, the rows are numbered 0, 1, ...
    label_names: list[str] | None = attrs.field(default=None, validator=non_empty)
    limit: int | None = attrs.field(default=None, validator=at_least(1))  # first N rows of each file

    def files(self) -> dict[str, str]:
        return {s: getattr(self, s) for s in ("train", "dev", "test") if getattr(self, s)}


@attrs.frozen(kw_only=True)
class TaskSpec:
    data: TaskData
    head: ComponentSpec = component("heads")
    loss: ComponentSpec = component("losses")
    metrics: list[ComponentSpec] = component("metrics", validator=non_empty)
    weight: float = attrs.field(default=1.0, validator=greater_than(0.0))
    prediction_column: str = "Predicted"


@attrs.frozen
class TrainSpec:
    epochs: int | None = attrs.field(default=None, validator=at_least(1))  # None: phases.DEFAULT_EPOCHS (or steps)
    steps: int | None = attrs.field(default=None, validator=at_least(1))
    batch_size: int = attrs.field(default=32, validator=at_least(1))
    eval_batch_size: int = attrs.field(default=128, validator=at_least(1))
    lr: float = attrs.field(default=2e-5, validator=greater_than(0.0))
    head_lr: float | None = attrs.field(default=None, validator=greater_than(0.0))
    accumulate: int = attrs.field(default=1, validator=at_least(1))
    max_grad_norm: float = attrs.field(default=1.0, validator=at_least(0.0))  # 0: no clipping
    eval_every: int | None = attrs.field(default=None, validator=at_least(1))  # steps; default each epoch
    early_stopping: int | None = attrs.field(default=None, validator=at_least(1))  # patience, in evaluations
    length_buckets: bool = True  # batch similar lengths together (less padding)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    log_every: int = attrs.field(default=50, validator=at_least(1))
    threads: int | None = attrs.field(default=None, validator=at_least(1))
    trainable: Trainable = "all"
    last_layers: int = attrs.field(default=1, validator=at_least(1))  # with trainable = "last_layers"
    save_every: int = attrs.field(default=500, validator=at_least(0))  # steps between resumable states (0: epochs only)
    max_bad_steps: int = attrs.field(default=10, validator=at_least(0))  # non-finite steps in a row before stopping
    compile: bool = False  # torch.compile the encoder's forward (dynamic shapes)
    # torch.compile's mode; "reduce-overhead" replays CUDA graphs (one per batch shape: length buckets
    # bound how many), prepared for issue 29 and off until a GPU measures it against "default"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"

    def check(self):
        if self.epochs is not None and self.steps is not None:
            yield "steps", "give epochs or steps, not both"


@attrs.frozen(kw_only=True)
class PhaseSpec:
    """One stage of a run; what it leaves out comes from the top level and [train]."""

    name: str | None = None
    tasks: list[str] | None = attrs.field(default=None, validator=non_empty)  # default: every task
    sampler: ComponentSpec | None = component("samplers", default=None)
    gradient: ComponentSpec | None = component("gradients", default=None)
    balancer: ComponentSpec | None = component("balancers", default=None)
    trainable: Trainable | None = None
    last_layers: int | None = attrs.field(default=None, validator=at_least(1))
    epochs: int | None = attrs.field(default=None, validator=at_least(1))
    steps: int | None = attrs.field(default=None, validator=at_least(1))
    lr: float | None = attrs.field(default=None, validator=greater_than(0.0))
    head_lr: float | None = attrs.field(default=None, validator=greater_than(0.0))

    def check(self):
        if (self.epochs is None) == (self.steps is None):
            yield "epochs", "give each phase its length: epochs or steps (one of them)"


@attrs.frozen(kw_only=True)
class Spec:
    tasks: dict[str, TaskSpec] = attrs.field(validator=non_empty)
    name: str = "run"
    seed: int = 11
    out: str = "runs"
    encoder: ComponentSpec = component("encoders", default="minbert")
    data: DataSpec = attrs.Factory(DataSpec)
    sampler: ComponentSpec = component("samplers", default="round_robin")
    optimizer: ComponentSpec = component("optimizers", default="adamw")
    scheduler: ComponentSpec = component("schedulers", default="linear")
    gradient: ComponentSpec = component("gradients", default="sum")
    balancer: ComponentSpec = component("balancers", default="equal")  # task losses -> weighted losses
    regularizers: list[ComponentSpec] = component("regularizers", default=[])
    adapters: list[ComponentSpec] = component("adapters", default=[])
    train: TrainSpec = attrs.Factory(TrainSpec)
    phases: list[PhaseSpec] = attrs.Factory(list)  # none: one phase made of [train]
    init_from: str | None = None  # start from this run's (or checkpoint directory's) weights


class SpecStructurer(Structurer):
    """Structurer that resolves component references through the registry."""

    def __init__(self, registry: Registry, data_dir: Path | None = None):
        super().__init__()
        self.registry, self.data_dir = registry, data_dir

    def structure_attrs(self, cls, value, path):
        # Cross-component checks run on every part that structured, so one
        # `validate` reports a bad task even when another part is also wrong.
        obj = super().structure_attrs(cls, value, path)
        if obj is not None and cls is TaskData and self.data_dir is not None:
            for split, file in obj.files().items():
                problem = self._missing(obj.reader, self.data_dir / file)
                if problem:
                    self.problem(f"{path}.{split}", problem)
        if obj is not None and cls is TaskSpec:
            self.problems += check_task(path.split(".", 1)[1], obj, self.registry)
        if obj is not None and cls is Spec:
            self.problems += check_run(obj, self.registry)
        return obj

    def _missing(self, reader_spec: ComponentSpec, path: Path) -> str | None:
        """Why the reader finds nothing to read at ``path`` (a reader may take a directory or a name)."""
        from mtbert.plugin.making import make
        from mtbert.base.errors import MtbertError
        from mtbert.plugin.interfaces import Reader
        try:
            reader = make(self.registry, reader_spec)
        except MtbertError:
            return None  # the reader's own problem is reported where its spec is
        if type(reader).locate is Reader.locate:
            return None if is_file(path) else f"file {path} not found"
        try:
            reader.locate(path)
        except MtbertError as exc:
            return str(exc).replace("\n  fix:", "; fix:")
        return None

    def special(self, tp, value, path, field):
        if tp is not ComponentSpec:
            return False, None
        return True, self.component(field.metadata["kind"], value, path)

    def component(self, kind: str, value, path: str) -> ComponentSpec | None:
        kind = KIND_ALIASES.get(kind, kind)  # a kind's first name (plugins written against it)
        if isinstance(value, str):
            name, options = value, {}
        elif isinstance(value, dict):
            if "name" not in value:
                self.problem(path, f"a {singular(kind)} table needs name = \"...\"; "
                                   f"known: {', '.join(self.registry.names(kind))}")
                return None
            name, options = value["name"], {k: v for k, v in value.items() if k != "name"}
            if not isinstance(name, str):
                self.problem(join(path, "name"), f"expected a string, got {describe(name)}")
                return None
        else:
            self.problem(path, f"expected a {singular(kind)} name or a table with name = \"...\", "
                               f"got {describe(value)}")
            return None
        if not self.registry.has(kind, name):
            self.problem(join(path, "name") if isinstance(value, dict) else path, self.registry.unknown(kind, name))
            return None
        config_cls = self.registry.get(kind, name).config
        structured = self.structure_attrs(config_cls, options, path)
        return None if structured is None else ComponentSpec(kind, name, structured)


def structure_component(kind: str, value: str | dict, registry: Registry, path: str = "") -> ComponentSpec:
    """A component given as spec data (name or table) -> ComponentSpec, or SpecError."""
    structurer = SpecStructurer(registry)
    result = structurer.component(kind, value, path or kind)
    if structurer.problems:
        raise SpecError(structurer.problems)
    return result


# -- raw data: load, override ---------------------------------------------------------

def read_toml(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([("", f"spec file {path} not found")], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([("", f"cannot read spec file {path}: {exc}")], str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([("", f"not valid TOML: {exc}")], str(path)) from None
    except RecursionError:
        raise SpecError([("", "not valid TOML: nested too deeply")], str(path)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value); the value is read as TOML, else as a string."""
    if "=" not in text:
        raise SpecError([("--set", f"expected KEY=VALUE, got {text!r}")])
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError([("--set", f"bad key {key!r}: expected dotted names like train.lr")])
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    except RecursionError:
        raise SpecError([("--set", f"the value of {key.strip()} is nested too deeply")]) from None
    return parts, value


def apply_override(data: dict, parts: list[str], value: Any) -> None:
    """Set ``value`` at a dotted path; a number indexes a list (``phases.1.epochs``)."""
    node: Any = data
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
                raise SpecError([(where, f"no item {part} in a list of {len(node)}")])
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
        else:
            raise SpecError([(".".join(parts[:i]), f"is {describe(node)}, cannot set a key inside it")])
        if i == len(parts) - 1:
            node[key] = value
            return
        child = node[key] if isinstance(node, list) else node.get(key)
        if isinstance(child, str):  # `loss = "mse"`, then --set tasks.x.loss.name=... or loss.option=...
            child = {"name": child}
        elif child is None:
            child = {}
        node[key] = child
        node = child


# -- structure + semantic checks ----------------------------------------------------------

def structure_spec(data: dict, registry: Registry, source: str | None = None, check_files: bool = True) -> Spec:
    """Data -> Spec, or SpecError with every problem. ``check_files=False`` skips the
    data directory and file checks (reloading a finished run elsewhere)."""
    raw = data.get("data")
    default_dir = attrs.fields(DataSpec).dir.default
    raw_dir = raw.get("dir", default_dir) if isinstance(raw, dict) else default_dir
    data_dir = expand(raw_dir) if isinstance(raw_dir, str) and check_files else None
    found = data_dir is not None and is_dir(data_dir)
    structurer = SpecStructurer(registry, data_dir if found else None)
    try:
        spec = structurer.structure_attrs(Spec, data, "")
    except RecursionError:
        raise SpecError([("", "the spec is nested too deeply to read")], source) from None
    if data_dir is not None and not found:
        structurer.problem("data.dir", f"directory {data_dir} not found (set data.dir, or MTBERT_DATA)")
    if structurer.problems:
        raise SpecError(structurer.problems, source)
    return spec


def load_spec(path: str | Path, registry: Registry, overrides: tuple[str, ...] = (),
              env: dict | None = None, check_files: bool = True) -> Spec:
    env = os.environ if env is None else env
    data = read_toml(Path(path))
    data.pop("tune", None)  # a search space over the spec (mtbert tune reads it; a run is the spec alone)
    if env.get("MTBERT_DATA"):
        apply_override(data, ["data", "dir"], env["MTBERT_DATA"])
    for text in overrides:
        apply_override(data, *parse_override(text))
    return structure_spec(data, registry, str(path), check_files)


# -- back to data (the resolved spec saved in each run) ------------------------------------

def unstructure(obj: Any) -> Any:
    if isinstance(obj, ComponentSpec):
        return obj.to_data()
    if attrs.has(type(obj)):
        out = {}
        for field in attrs.fields(type(obj)):
            value = getattr(obj, field.name)
            if value is not None:
                out[field.name] = unstructure(value)
        return out
    if isinstance(obj, dict):
        return {k: unstructure(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [unstructure(v) for v in obj]
    return obj


def dump_spec(spec: Spec) -> str:
    return tomli_w.dumps(unstructure(spec))
