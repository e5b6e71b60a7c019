"""What several test files share: paths, the tiny encoders, the toy data and spec, the CLI runner,
the step cases of the read-back tests. One module, so test files never import one another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# the plugin kit's toy run, its interruption and its step rounds: one definition, shared with outside authors
from mtbert.testing.readback import step_round  # noqa: F401
from mtbert.testing.runs import TINY_ENCODER, FILLER, Interrupted, interrupt_at, toy_data, toy_spec  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


DATA = Path(os.environ.get("MTBERT_DATA") or ROOT.parent / "shared" / "data" / "cs224n").resolve()


def read_metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def script() -> str:
    """The installed console script."""
    return str(Path(sys.executable).with_name("mtbert"))


def torchrun(*args):
    """The console script under two CPU processes (gloo), as a user would start them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MTBERT_DATA", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           script(), *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def mtbert(*args, env_data=None, cwd=ROOT):
    """Run the installed console script as a user would."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.pop("MTBERT_DATA", None)
    if env_data is not None:
        env["MTBERT_DATA"] = str(env_data)
    return subprocess.run([script(), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


TINY_ROBERTA = {
    "name": "hf", "tokenizer": "minilm-l6",
    "config": {"model_type": "roberta", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 520,
               "pad_token_id": 0, "type_vocab_size": 1},
}


BUILT_IN = {
    "encoders": {"minbert"},
    "readers": {"tsv", "csv", "jsonl"},
    "heads": {"classifier", "binary", "regression"},
    "losses": {"cross_entropy", "bce", "mse"},
    "metrics": {"accuracy", "f1", "pearson", "spearman"},
    "samplers": {"round_robin", "proportional", "temperature", "annealed", "all_tasks", "proportional_joint"},
    "optimizers": {"adamw", "sgd"},
    "schedulers": {"linear", "cosine", "constant"},
    "gradients": {"sum"},
}


STEP_CASES = {  # the training steps that must not wait for the device (here and in test_cuda.py)
    "sum": {},
    "pcgrad": {"sampler": "all_tasks", "gradient": "pcgrad"},
    "gradvac": {"sampler": "all_tasks", "gradient": "gradvac"},
    "uncertainty_pcgrad": {"sampler": "all_tasks", "gradient": "pcgrad", "balancer": "uncertainty"},
    "dwa": {"sampler": "all_tasks", "balancer": "dwa"},
    "rlw": {"sampler": "all_tasks", "balancer": "rlw"},
    "gls_pcgrad": {"sampler": "all_tasks", "gradient": "pcgrad", "balancer": "gls"},
    "famo": {"sampler": "all_tasks", "balancer": "famo"},
    "mgda": {"sampler": "all_tasks", "gradient": {"name": "mgda", "normalization": "loss+"}},
    "mgda_ub": {"sampler": "all_tasks", "gradient": {"name": "mgda_ub", "normalization": "loss"}},
    "imtl_layer": {"sampler": "all_tasks", "gradient": {"name": "imtl", "granularity": "layer"}},
    "imtl_hybrid": {"sampler": "all_tasks", "gradient": "imtl", "balancer": "imtl_l"},
    "cagrad": {"sampler": "all_tasks", "gradient": "cagrad"},
    "nash_mtl": {"sampler": "all_tasks", "gradient": "nash_mtl"},
    "aligned_mtl_layer": {"sampler": "all_tasks", "gradient": {"name": "aligned_mtl", "granularity": "layer"}},
    "db_mtl": {"sampler": "all_tasks", "gradient": "db_mtl"},
    "graddrop": {"sampler": "all_tasks", "gradient": "graddrop"},
    "famo_cagrad": {"sampler": "all_tasks", "gradient": "cagrad", "balancer": "famo"},
    "gradnorm": {"sampler": "all_tasks", "balancer": "gradnorm"},
    "smart": {"regularizers": [{"name": "smart"}]},
    "smart_half": {"regularizers": [{"name": "smart", "bregman": False, "fraction": 0.5}]},
}


def gradient_method(registry, name, **options):
    """A gradient method built from spec options, as the loop builds it."""
    from mtbert.model.build import make
    from mtbert.config.spec import structure_component
    return make(registry, structure_component("gradients", {"name": name, **options}, registry))


def aggregate(method, grads, losses=None):
    """The method's update of one flat shared parameter for task gradients ``grads`` [T, P];
    ``losses``: the tasks' loss values (default 1 each), for methods that read them. Each call
    is one optimizer step: the first sets the method up, later ones keep its state."""
    import torch
    from torch import nn
    from mtbert.plugin.interfaces import LoopContext
    tasks = [f"t{i}" for i in range(len(grads))]
    if not hasattr(method, "test_parameter"):
        method.test_parameter = nn.Parameter(torch.zeros(grads.shape[1], dtype=grads.dtype))
        method.setup([("encoder.w", method.test_parameter)], [], tasks, LoopContext())
    param = method.test_parameter
    param.grad = None
    values = losses or [1.0] * len(tasks)
    # loss_t = (g_t . w) + L_t - (g_t . w).detach(): gradient g_t, value L_t whatever w is
    method.backward({t: (g * param).sum() - (g * param).sum().detach() + v
                     for t, g, v in zip(tasks, grads, values)})
    method.finish()
    return param.grad.clone()


def finished_toy_run(registry, directory, rows: int = 64):
    """One epoch of the toy run, finished, in ``directory``/run: (the run directory, the data folder)."""
    from mtbert.runs.rundir import RunDir
    from mtbert.training.loop import Trainer

    data = toy_data(Path(directory) / "data", n=rows)
    spec = toy_spec(registry, data, epochs=1)
    run = RunDir.create(spec, Path(directory) / "run")
    Trainer(spec, registry, progress=False).fit(run)
    return run.path, data


def task_columns(registry, **data):
    """A task's [data] table (reader, columns ...) structured as the spec would."""
    from mtbert.config.spec import SpecStructurer, TaskData

    structurer = SpecStructurer(registry)
    result = structurer.structure_attrs(TaskData, data, "data")
    assert not structurer.problems
    return result


def tokenized_split(path, registry, tok, cache, *, max_length=32, reading=None, **data):
    """One 5-class file loaded as a run loads a train split, through ``cache`` (None: in memory)."""
    from mtbert.config.spec import structure_component
    from mtbert.data.splits import load_split
    from mtbert.model.build import label_spec, make

    cols = task_columns(registry, **data)
    reader = reading or make(registry, cols.reader)
    labels = label_spec(registry, structure_component("heads", {"name": "classifier", "num_labels": 5}, registry))
    return load_split("t", "train", path, reader, cols, labels, tok, max_length, "cross", True,
                      cache=cache, reader_id=repr(cols.reader))


def registry_with_loss(name: str, loss_class):
    """Every installed plugin plus one test loss registered as ``name`` (a plugin module built here)."""
    import types
    from importlib import metadata

    from mtbert.plugin.hookspecs import hookimpl
    from mtbert.plugin.loading import build_registry

    module = types.ModuleType(f"{name}_plugin")
    module.register_losses = hookimpl(lambda register: register(name, loss_class))
    return build_registry(list(metadata.entry_points(group="mtbert")), modules=[(name, module, "test")])


def tune_files(tmp_path, registry, space: str | None, **train) -> tuple:
    """A toy spec (short trials on one thread) and a search space (None: no space file), as files for
    mtbert tune."""
    from mtbert.config.spec import dump_spec

    settings = {"steps": 12, "eval_every": 3, "log_every": 3, "threads": 1, **train}
    spec = Path(tmp_path) / "spec.toml"
    spec.write_text(dump_spec(toy_spec(registry, toy_data(Path(tmp_path) / "data", n=48), **settings)))
    if space is None:
        return spec, None
    path = Path(tmp_path) / "space.toml"
    path.write_text(space)
    return spec, path
