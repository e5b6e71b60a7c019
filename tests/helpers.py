"""What several test files share: paths, the tiny encoders, the toy data and spec, the CLI runner,
the step cases of the read-back tests. One module, so test files never import one another."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from mtbert.spec import structure_spec

ROOT = Path(__file__).resolve().parents[1]


DATA = Path(os.environ.get("MTBERT_DATA") or ROOT.parent / "shared" / "data" / "cs224n").resolve()


# A 2-layer, hidden-32 BERT with MiniLM's tokenizer and random weights: the
# encoder for fast tests. As spec data, so it can go straight into a spec.
TINY_ENCODER = {"name": "minbert", "pretrained": "minilm-l6", "init": "random", "num_layers": 2,
                "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}


FILLER = "the a movie film plot actor scene story it was is and of very quite rather".split()


def toy_data(directory, n=192, seed=0):
    """Binary sentiment that hinges on one word, and a score that counts a word."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    rows, pairs = ["id\tsentence\tlabel"], ["id\ts1\ts2\tscore"]
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 5) + ["good" if label else "bad"]
        rng.shuffle(words)
        rows.append(f"r{i}\t{' '.join(words)}\t{label}")
        k = rng.randint(0, 3)
        pairs.append(f"p{i}\t{' '.join(rng.sample(FILLER, 3) + ['wow'] * k)}\t{rng.choice(FILLER)}\t{k}")
    (directory / "sent.tsv").write_text("\n".join(rows) + "\n")
    (directory / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    return directory


def toy_spec(registry, directory, **train):
    data = {
        "name": "toy", "seed": 3,
        "encoder": dict(TINY_ENCODER),
        "data": {"dir": str(directory), "max_length": 16},
        "train": {"batch_size": 16, "lr": 3e-3, "log_every": 5, **train},
        "tasks": {
            "sent": {"data": {"train": "sent.tsv", "dev": "sent.tsv"},
                     "head": {"name": "classifier", "num_labels": 2, "pooling": "mean"},
                     "loss": "cross_entropy", "metrics": ["accuracy", "f1"]},
            "count": {"data": {"train": "pairs.tsv", "dev": "pairs.tsv", "text": "s1", "text_pair": "s2",
                               "label": "score"},
                      "head": {"name": "regression", "pooling": "mean"}, "loss": "mse", "metrics": ["pearson"]},
        },
    }
    return structure_spec(data, registry)


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
    "gradient_methods": {"sum"},
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


def step_round(trainer):
    """The first phase prepared; each call of the result runs one round of optimizer steps (one
    all-tasks step under the all_tasks sampler, else one step per task). Also: steps per round."""
    trainer.prepare_phase(trainer.phases[0])
    tasks = list(trainer.phases[0].tasks)
    step_tasks = [tasks] if trainer.phases[0].sampler.name == "all_tasks" else [[t] for t in tasks]

    def run():
        for names in step_tasks:
            trainer.optimizer_step([names])
    return run, len(step_tasks)


def gradient_method(registry, name, **options):
    """A gradient method built from spec options, as the loop builds it."""
    from mtbert.build import make
    from mtbert.spec import structure_component
    return make(registry, structure_component("gradient_methods", {"name": name, **options}, registry))


def aggregate(method, grads, losses=None):
    """The method's update of one flat shared parameter for task gradients ``grads`` [T, P];
    ``losses``: the tasks' loss values (default 1 each), for methods that read them. Each call
    is one optimizer step: the first sets the method up, later ones keep its state."""
    import torch
    from torch import nn
    from mtbert.interfaces import LoopContext
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


class Interrupted(Exception):
    """What ``interrupt_at`` raises: the run stops there as if killed."""


def interrupt_at(trainer, at_step):
    """Make ``trainer`` raise Interrupted when it is about to train step ``at_step``."""
    original = trainer._micro_batch

    def micro_batch(tasks):
        if trainer.step == at_step:
            raise Interrupted
        original(tasks)

    trainer._micro_batch = micro_batch
