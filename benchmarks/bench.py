"""Speed and memory of mtbert against its peers, as ratios measured in one script.

    python benchmarks/bench.py [--steps 40] [--device cpu|cuda]
                               [--encoder minilm-l6|bert-base-random|bert-base-thin]
                               [--out benchmarks/out/bench.json] [--only NAME ...]

Every measurement runs in its own subprocess (so peak memory is its own) on
the same checkpoint, data (the three course tasks), batch size and maximum
length; the table at the end gives each as a ratio to its peer:

- train/<task>: training examples per second over ``--steps`` optimizer
  steps after ``--warmup`` steps, single task, batch 32: mtbert's loop vs the
  Hugging Face ``Trainer`` (``AutoModelForSequenceClassification``, dynamic
  padding) vs a plain PyTorch loop over ``transformers.BertModel`` with a
  linear head, random batches and ``torch.optim.AdamW``; and mtbert with
  ``train.compile = true`` (torch.compile; its compilation happens in the
  warm-up steps); and mtbert with ``train.precision = "bf16"`` (autocast; on
  the GPU that is the default already); and mtbert with the encoder's
  ``unpad = true`` (the layers skip the padding), with length buckets (the
  default) and without (``mtbert_nobuckets``, ``mtbert_unpad_nobuckets``).
- eval/<task>: prediction examples per second over the dev set (Quora: its
  first 4,000 pairs), batch 128: mtbert's ``predict`` vs ``Trainer.evaluate``
  vs the plain loop; and mtbert with ``unpad = true``.
- step/<method>: seconds per optimizer step of an all-tasks step (one batch
  of each of the three tasks) with the summed loss, PCGrad, GradVac, and
  SMART (adversarial term, one ascent step; with its Bregman teacher; and
  the adversarial term on half of each batch, ``fraction = 0.5``).
- mfu/sst/batch<B>: model FLOPs utilisation of mtbert's training step (GPU
  bf16 peak from NVIDIA's datasheet), at batch 32 and 256; mfu/fixed/<B>x<T>:
  the same on random tokens of a fixed shape, up to 65,536 tokens a step.
- memory: the peak resident set (CPU) or peak CUDA memory of each run.

``--encoder bert-base-random`` is bert-base's shape with random weights;
``bert-base-thin`` keeps its depth and operators at 1/32 of its width, so
that a step's time is the host's work (Python, dispatch, batching).

Results are printed and written as JSON; docs/benchmarks.md holds them with
the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from common import machine, measure_in_subprocess, write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MTBERT_DATA") or ROOT.parent / "shared" / "data" / "cs224n")
TASKS = {  # task -> (train file, dev file, text columns, label column, mtbert head, loss, HF num_labels)
    "sst": ("ids-sst-train.csv", "ids-sst-dev.csv", ("sentence",), "sentiment",
            {"name": "classifier", "num_labels": 5, "pooling": "pooler"}, "cross_entropy", 5),
    "para": ("quora-train.csv", "quora-dev.csv", ("sentence1", "sentence2"), "is_duplicate",
             {"name": "binary", "pooling": "pooler"}, "bce", 2),
    "sts": ("sts-train.csv", "sts-dev.csv", ("sentence1", "sentence2"), "similarity",
            {"name": "regression", "pooling": "pooler"}, "mse", 1),
}
DEV_LIMIT = 4000
BERT_BASE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072}
# bert-base's depth and operator count at 1/32 of its width: so little arithmetic that a step's time is
# the host's (Python, dispatch), the regime that bound every implementation on the GPU we had.
BERT_BASE_THIN = {**BERT_BASE, "hidden_size": 24, "intermediate_size": 96}
MINILM = {"hidden_size": 384, "num_layers": 6, "num_heads": 12, "intermediate_size": 1536}
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}  # dry runs of the scripts
# Random weights of a shape: speed does not depend on the weights' values, and a GPU machine that
# cannot receive MiniLM's 90 MB checkpoint in one transfer can still time MiniLM's shape.
RANDOM_SHAPES = {"bert-base-random": BERT_BASE, "bert-base-thin": BERT_BASE_THIN, "minilm-random": MINILM,
                 "tiny": TINY}


# -- shared helpers ------------------------------------------------------------------------------

def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def encoder_table(args) -> dict:
    if args.encoder in RANDOM_SHAPES:  # that shape, random weights (MiniLM's tokenizer)
        return {"name": "minbert", "pretrained": "minilm-l6", "init": "random", **RANDOM_SHAPES[args.encoder]}
    return {"name": "minbert", "pretrained": args.encoder}


def mtbert_spec(args, tasks: list[str], train: dict | None = None, **changes):
    """The benchmark's spec for ``tasks``: ``train`` updates its [train] table, ``changes`` replace top-level keys."""
    from mtbert.plugin.loading import default_registry
    from mtbert.config.spec import structure_spec

    data = {
        "name": "bench", "seed": 11, "encoder": encoder_table(args),
        "data": {"dir": str(DATA), "max_length": 128},
        "train": {"steps": args.warmup + args.steps, "batch_size": 32, "eval_batch_size": 128, "lr": 5e-5,
                  "device": args.device, "log_every": 10**6, "save_every": 0},
        "optimizer": {"name": "adamw", "weight_decay": 0.01},
        "scheduler": {"name": "linear", "warmup_ratio": 0.1},
        "tasks": {t: {"data": task_files(t), "head": TASKS[t][4], "loss": TASKS[t][5], "metrics": [metric(t)]}
                  for t in tasks},
    }
    data["train"].update(train or {})
    data.update(changes)
    return structure_spec(data, default_registry())


def mtbert_trainer(args, tasks: list[str], train: dict | None = None, **changes):
    from mtbert.plugin.loading import default_registry
    from mtbert.training.loop import Trainer

    return Trainer(mtbert_spec(args, tasks, train, **changes), default_registry(), progress=False)


def mtbert_stepper(trainer, tasks: list[str]):
    """The trainer's first phase prepared; each call of the result is one optimizer step on ``tasks``."""
    trainer.prepare_phase(trainer.phases[0])
    trainer.model.train()

    def step():
        trainer.optimizer_step([tasks])
    return step


def task_files(task: str) -> dict:
    train, dev, texts, label, *_ = TASKS[task]
    files = {"train": train, "dev": dev, "text": texts[0], "label": label}
    if len(texts) > 1:
        files["text_pair"] = texts[1]
    return files


def metric(task: str) -> str:
    return "pearson" if task == "sts" else "accuracy"


def read_rows(task: str, split: str, limit: int | None = None):
    """(texts per column, labels) the way every peer reads them: the HF peer script's reader."""
    import hf_peer

    train, dev, texts, label, *_ = hf_peer.TASKS[task]
    parse = hf_peer.TASKS[task][5]
    columns, labels, _ = hf_peer.load_split(DATA / (train if split == "train" else dev), texts, label, parse, limit)
    return columns, labels


# -- one measurement per subprocess ---------------------------------------------------------------

def mtbert_train(args, task: str, encoder: dict | None = None, **train_changes) -> dict:
    changes = {} if encoder is None else {"encoder": encoder}
    return time_loop(args, mtbert_trainer(args, [task], train_changes, **changes), [task])


def mtbert_train_compiled(args, task: str) -> dict:
    return mtbert_train(args, task, compile=True)


def mtbert_train_bf16(args, task: str) -> dict:
    return mtbert_train(args, task, precision="bf16")


def mtbert_train_graphs(args, task: str) -> dict:
    """torch.compile in "reduce-overhead" mode: CUDA graphs, one per batch shape (issue 29's prepared fix)."""
    return mtbert_train(args, task, compile=True, compile_mode="reduce-overhead")


def unpadded_encoder(args) -> dict:
    """The benchmark's encoder with ``unpad = true``: the layers skip the padding (issue 29's prepared fix)."""
    return {**encoder_table(args), "unpad": True}


def mtbert_train_unpad(args, task: str) -> dict:
    return mtbert_train(args, task, encoder=unpadded_encoder(args))


def mtbert_train_nobuckets(args, task: str) -> dict:
    """Batches drawn without length buckets: half or more of their tokens are padding."""
    return mtbert_train(args, task, length_buckets=False)


def mtbert_train_unpad_nobuckets(args, task: str) -> dict:
    return mtbert_train(args, task, encoder=unpadded_encoder(args), length_buckets=False)


def time_loop(args, trainer, tasks: list[str]) -> dict:
    """Time ``args.steps`` optimizer steps of mtbert's own loop on ``tasks``, after ``args.warmup``."""
    step = mtbert_stepper(trainer, tasks)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(args.device)
            start, examples = time.perf_counter(), trainer.meter.examples
        step()
    sync(args.device)
    elapsed = time.perf_counter() - start
    return {"examples_per_s": (trainer.meter.examples - examples) / elapsed, "s_per_step": elapsed / args.steps}


def mtbert_eval(args, task: str, **changes) -> dict:
    import attrs

    from mtbert.model.build import build_model, build_tasks
    from mtbert.training.prediction import predict
    from mtbert.plugin.loading import default_registry

    registry = default_registry()
    spec = mtbert_spec(args, [task], **changes)
    if task == "para":
        data = attrs.evolve(spec.tasks[task].data, limit=DEV_LIMIT + 2)  # the same rows the peers read
        spec = attrs.evolve(spec, tasks={task: attrs.evolve(spec.tasks[task], data=data)})
    model = build_model(spec, registry).to(args.device)
    dev = build_tasks(spec, registry, model.encoder.tokenizer, splits=("dev",))[task].splits["dev"]
    autocast = autocast_for(args)
    predict(model, task, dev, 128, torch_device(args), 0, autocast)  # warm-up
    sync(args.device)
    start = time.perf_counter()
    predict(model, task, dev, 128, torch_device(args), 0, autocast)
    sync(args.device)
    return {"examples_per_s": len(dev) / (time.perf_counter() - start), "examples": len(dev)}


def mtbert_eval_unpad(args, task: str) -> dict:
    return mtbert_eval(args, task, encoder=unpadded_encoder(args))


def autocast_for(args):
    from mtbert.training.loop import autocast_for as choose

    return choose(torch_device(args), "auto")


def torch_device(args):
    import torch

    return torch.device(args.device)


def hf_model_dir(args):
    from mtbert.toolkit import pretrained

    if args.encoder in RANDOM_SHAPES:
        return None
    return str(pretrained.resolve(args.encoder))


def random_config(args, **extra):
    """The Hugging Face config of a random-weight shape (MiniLM's vocabulary and tokenizer)."""
    from transformers import AutoConfig

    from mtbert.toolkit import pretrained

    shape = RANDOM_SHAPES[args.encoder]
    return AutoConfig.from_pretrained(str(pretrained.embedded_path()), hidden_size=shape["hidden_size"],
                                      num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
                                      intermediate_size=shape["intermediate_size"], **extra)


def hf_model(args, task: str):
    from transformers import AutoModelForSequenceClassification

    num_labels = TASKS[task][6]
    problem = "regression" if num_labels == 1 else "single_label_classification"
    if args.encoder in RANDOM_SHAPES:
        return AutoModelForSequenceClassification.from_config(
            random_config(args, num_labels=num_labels, problem_type=problem))
    return AutoModelForSequenceClassification.from_pretrained(hf_model_dir(args), num_labels=num_labels,
                                                              problem_type=problem)


def hf_tokenizer():
    from transformers import AutoTokenizer

    from mtbert.toolkit import pretrained

    return AutoTokenizer.from_pretrained(str(pretrained.embedded_path()))


def hf_dataset(task: str, split: str, tokenizer, limit=None):
    texts, labels = read_rows(task, split, limit)
    encoded = tokenizer(*texts, truncation=True, max_length=128)
    return [{**{k: v[i] for k, v in encoded.items()}, "labels": labels[i]} for i in range(len(labels))]


def hf_trainer(args, task: str, train=True):
    import atexit
    import shutil
    import tempfile

    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    tokenizer = hf_tokenizer()
    tmp = tempfile.mkdtemp(prefix="bench-hf-")  # the Trainer's output_dir: it writes nothing there (no saves)
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # (each measurement is its own process)
    targs = TrainingArguments(
        output_dir=tmp, max_steps=args.warmup + args.steps, per_device_train_batch_size=32,
        per_device_eval_batch_size=128, learning_rate=5e-5, weight_decay=0.01, warmup_steps=0.1,
        save_strategy="no", eval_strategy="no", logging_steps=10**6, report_to="none", disable_tqdm=True,
        use_cpu=args.device == "cpu", bf16=args.device == "cuda", dataloader_num_workers=0, seed=11)
    train_set = hf_dataset(task, "train", tokenizer) if train else []
    dev_set = hf_dataset(task, "dev", tokenizer, DEV_LIMIT if task == "para" else None)
    return Trainer(model=hf_model(args, task), args=targs, train_dataset=train_set or None, eval_dataset=dev_set,
                   processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer)), dev_set


def hf_train(args, task: str) -> dict:
    from transformers import TrainerCallback

    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if state.global_step in (args.warmup, args.warmup + args.steps):
                sync(args.device)
                marks[state.global_step] = time.perf_counter()

    trainer, _ = hf_trainer(args, task)
    trainer.add_callback(Clock())
    trainer.train()
    elapsed = marks[args.warmup + args.steps] - marks[args.warmup]
    return {"examples_per_s": args.steps * 32 / elapsed, "s_per_step": elapsed / args.steps}


def hf_eval(args, task: str) -> dict:
    trainer, dev = hf_trainer(args, task, train=False)
    trainer.evaluate()  # warm-up
    sync(args.device)
    start = time.perf_counter()
    trainer.evaluate()
    sync(args.device)
    return {"examples_per_s": len(dev) / (time.perf_counter() - start), "examples": len(dev)}


def plain_batches(task: str, split: str, batch_size: int, shuffle: bool, limit=None):
    import random

    from transformers import DataCollatorWithPadding

    tokenizer = hf_tokenizer()
    dataset = hf_dataset(task, split, tokenizer, limit)
    collate = DataCollatorWithPadding(tokenizer)
    order = list(range(len(dataset)))
    if shuffle:
        random.Random(11).shuffle(order)
    while True:
        for start in range(0, len(order), batch_size):
            yield collate([dataset[i] for i in order[start:start + batch_size]])
        if not shuffle:
            return


class PlainModel:
    """transformers.BertModel + dropout + a linear head on the pooled output: the loop people write."""

    def __init__(self, args, task: str):
        import torch
        from transformers import BertModel

        if args.encoder in RANDOM_SHAPES:
            self.bert = BertModel(random_config(args))
        else:
            self.bert = BertModel.from_pretrained(hf_model_dir(args))
        outputs = TASKS[task][6]
        self.head = torch.nn.Linear(self.bert.config.hidden_size, outputs)
        self.modules = torch.nn.ModuleList([self.bert, self.head]).to(args.device)
        self.task = task

    def loss(self, batch):
        import torch.nn.functional as F

        out = self.head(F.dropout(self.bert(**{k: v for k, v in batch.items() if k != "labels"}).pooler_output,
                                  0.1, self.modules.training))
        labels = batch["labels"]
        if self.task == "sts":
            return F.mse_loss(out.squeeze(-1), labels.float())
        return F.cross_entropy(out, labels)


def plain_stepper(args, task: str, batch_size: int = 32):
    """One optimizer step of the plain loop per call (batch, bf16 autocast on CUDA, clipping, AdamW)."""
    import torch

    model = PlainModel(args, task)
    optimizer = torch.optim.AdamW(model.modules.parameters(), lr=5e-5, weight_decay=0.01)
    batches = plain_batches(task, "train", batch_size, shuffle=True)
    model.modules.train()

    def step():
        batch = {k: v.to(args.device) for k, v in next(batches).items()}
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            loss = model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.modules.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return step


def seconds_per_step(args, step) -> float:
    """Mean seconds of ``args.steps`` calls of ``step``, after ``args.warmup`` untimed ones."""
    for _ in range(args.warmup):
        step()
    sync(args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(args.device)
    return (time.perf_counter() - start) / args.steps


def plain_train(args, task: str) -> dict:
    seconds = seconds_per_step(args, plain_stepper(args, task))
    return {"examples_per_s": 32 / seconds, "s_per_step": seconds}


def plain_eval(args, task: str) -> dict:
    import torch

    model = PlainModel(args, task)
    model.modules.eval()

    def run():
        count = 0
        with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            for batch in plain_batches(task, "dev", 128, shuffle=False, limit=DEV_LIMIT if task == "para" else None):
                batch = {k: v.to(args.device) for k, v in batch.items() if k != "labels"}
                model.head(model.bert(**batch).pooler_output).argmax(-1)
                count += len(batch["input_ids"])
        return count

    run()
    sync(args.device)
    start = time.perf_counter()
    count = run()
    sync(args.device)
    return {"examples_per_s": count / (time.perf_counter() - start), "examples": count}


STEP_METHODS = {  # step/<method>: spec changes of an all-tasks step
    "sum": {},
    "pcgrad": {"gradient": "pcgrad"},
    "gradvac": {"gradient": "gradvac"},
    "uncertainty": {"balancer": "uncertainty"},
    "uncertainty_pcgrad": {"balancer": "uncertainty", "gradient": "pcgrad"},
    "dwa": {"balancer": "dwa"},
    "rlw": {"balancer": "rlw"},
    "gls": {"balancer": "gls"},
    "famo": {"balancer": "famo"},
    "mgda": {"gradient": "mgda"},
    "mgda_ub": {"gradient": "mgda_ub"},
    "imtl": {"gradient": "imtl"},
    "imtl_l": {"balancer": "imtl_l"},
    "gradnorm": {"balancer": "gradnorm"},
    "cagrad": {"gradient": "cagrad"},
    "nash_mtl": {"gradient": "nash_mtl"},
    "aligned_mtl": {"gradient": "aligned_mtl"},
    "db_mtl": {"gradient": "db_mtl"},
    "graddrop": {"gradient": "graddrop"},
    "smart": {"regularizers": [{"name": "smart", "bregman": False}]},
    "smart_bregman": {"regularizers": [{"name": "smart"}]},
    "smart_half": {"regularizers": [{"name": "smart", "bregman": False, "fraction": 0.5}]},
}


def all_tasks_trainer(args, method: str):
    """A trainer whose every step takes one batch of each task, with ``method`` (a STEP_METHODS key)."""
    return mtbert_trainer(args, list(TASKS), sampler="all_tasks", **STEP_METHODS[method])


def mtbert_step(args, method: str) -> dict:
    return time_loop(args, all_tasks_trainer(args, method), list(TASKS))


# bf16 dense peak of the GPU, for model FLOPs utilisation (NVIDIA's datasheets, SXM parts).
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def mtbert_mfu(args, batch_size: int) -> dict:
    """Model FLOPs utilisation of mtbert's training step on SST batches of ``batch_size``."""
    return measure_mfu(args, mtbert_trainer(args, ["sst"], {"batch_size": batch_size}))


def mtbert_mfu_fixed(args, shape: tuple[int, int]) -> dict:
    """The same on random token ids of a fixed [batch, length] (no padding): enough work per step
    that the GPU, not the host, sets the step time -- what MFU is usually quoted at."""
    import torch

    batch_size, length = shape
    trainer = mtbert_trainer(args, ["sst"], {"batch_size": batch_size})
    vocab, generator = trainer.model.encoder.config.vocab_size, torch.Generator().manual_seed(11)

    def synthetic() -> dict:
        return {"input_ids": torch.randint(1000, vocab, (batch_size, length), generator=generator),
                "token_type_ids": torch.zeros(batch_size, length, dtype=torch.long),
                "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
                "labels": torch.randint(0, 5, (batch_size,), generator=generator),
                "index": torch.arange(batch_size)}

    trainer.streams["sst"].take = lambda: (synthetic(), 1.0)
    return measure_mfu(args, trainer)


def measure_mfu(args, trainer) -> dict:
    """Time mtbert's SST training steps and turn them into model FLOPs per second and MFU.

    FLOPs per step = 6 * N * tokens + 12 * layers * hidden * sum(seq_len^2) (Kaplan et al. 2020's
    6N per token for the weight matmuls, plus attention's QK^T and AV), over the padded tokens
    the encoder actually processed; N counts the weights of every Linear layer (embedding
    lookups are not matmuls).
    """
    import torch

    encoder = trainer.model.encoder
    shapes = []
    original = encoder.forward

    def counting(input_ids, *rest, **kw):
        shapes.append(tuple(input_ids.shape))
        return original(input_ids, *rest, **kw)

    encoder.forward = counting
    result = time_loop(args, trainer, ["sst"])
    shapes = shapes[-args.steps:]  # the timed steps (one encoder call per step)
    n = sum(m.weight.numel() for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    config = encoder.config
    flops = sum(6 * n * b * t + 12 * config.num_layers * config.hidden_size * b * t * t for b, t in shapes)
    seconds = result["s_per_step"] * args.steps
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else ""
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    result.update(batch_size=shapes[0][0], linear_params=n, tokens_per_step=sum(b * t for b, t in shapes) / len(shapes),
                  model_tflops_per_s=flops / seconds / 1e12, mfu=flops / seconds / peak if peak else None)
    return result


RUNS = {
    **{f"train/{t}/mtbert": (mtbert_train, t) for t in TASKS},
    **{f"train/{t}/mtbert_compiled": (mtbert_train_compiled, t) for t in TASKS},
    **{f"train/{t}/mtbert_bf16": (mtbert_train_bf16, t) for t in TASKS},
    **{f"train/{t}/mtbert_graphs": (mtbert_train_graphs, t) for t in TASKS},
    **{f"train/{t}/mtbert_unpad": (mtbert_train_unpad, t) for t in TASKS},
    **{f"train/{t}/mtbert_nobuckets": (mtbert_train_nobuckets, t) for t in TASKS},
    **{f"train/{t}/mtbert_unpad_nobuckets": (mtbert_train_unpad_nobuckets, t) for t in TASKS},
    **{f"train/{t}/hf_trainer": (hf_train, t) for t in TASKS},
    **{f"train/{t}/plain_torch": (plain_train, t) for t in TASKS},
    **{f"eval/{t}/mtbert": (mtbert_eval, t) for t in TASKS},
    **{f"eval/{t}/mtbert_unpad": (mtbert_eval_unpad, t) for t in TASKS},
    **{f"eval/{t}/hf_trainer": (hf_eval, t) for t in TASKS},
    **{f"eval/{t}/plain_torch": (plain_eval, t) for t in TASKS},
    **{f"step/{m}": (mtbert_step, m) for m in STEP_METHODS},
    **{f"mfu/sst/batch{b}": (mtbert_mfu, b) for b in (32, 256)},
    **{f"mfu/fixed/{b}x{t}": (mtbert_mfu_fixed, (b, t))
       for b, t in ((64, 128), (256, 128), (64, 512), (128, 512), (2, 16))},  # 2 x 16: gpu.py's dry run
}


def run_one(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(11)
    function, argument = RUNS[args.one]
    result = function(args, argument)
    result["peak_memory_mb"] = peak_memory_mb(args.device)
    print("RESULT " + json.dumps(result), flush=True)


# -- the driver -----------------------------------------------------------------------------------

def ratios(results: dict) -> list[tuple[str, str, float]]:
    rows = []
    for kind in ("train", "eval"):
        for task in TASKS:
            ours = results.get(f"{kind}/{task}/mtbert")
            for peer in ("hf_trainer", "plain_torch", "mtbert_compiled", "mtbert_bf16", "mtbert_graphs"):
                theirs = results.get(f"{kind}/{task}/{peer}")
                if ours and theirs:
                    rows.append((f"{kind}/{task}", f"mtbert / {peer} (examples/s)",
                                 ours["examples_per_s"] / theirs["examples_per_s"]))
            # the unpadded encoder against the padded one, with and without length buckets
            for padded, unpadded in (("mtbert", "mtbert_unpad"), ("mtbert_nobuckets", "mtbert_unpad_nobuckets")):
                base, fix = results.get(f"{kind}/{task}/{padded}"), results.get(f"{kind}/{task}/{unpadded}")
                if base and fix:
                    rows.append((f"{kind}/{task}", f"{unpadded} / {padded} (examples/s)",
                                 fix["examples_per_s"] / base["examples_per_s"]))
    base = results.get("step/sum")
    for method in (m for m in STEP_METHODS if m != "sum"):
        if base and results.get(f"step/{method}"):
            rows.append((f"step/{method}", "s per step / summed-loss step",
                         results[f"step/{method}"]["s_per_step"] / base["s_per_step"]))
    return rows


def save(args, results: dict) -> None:
    write_json(args.out, {"args": {k: v for k, v in vars(args).items() if k != "one"},
                          "machine": {**machine(args.threads), "device": args.device},
                          "results": results, "ratios": [list(r) for r in ratios(results)]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--encoder", default="minilm-l6",
                        help="minilm-l6, a BERT directory, or random weights of a shape: " + ", ".join(RANDOM_SHAPES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="run only these measurements (prefix match)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bench.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args)

    # In --only's order (so the most wanted come first when time is short), each once.
    # a full name means that measurement alone; anything else is a prefix
    names = list(dict.fromkeys(n for p in args.only for n in RUNS if n == p or (p not in RUNS and n.startswith(p)))) \
        if args.only else list(RUNS)
    if args.device == "cpu" and not args.only:  # (an explicit --only runs what it names)
        # Fixed shapes up to 128 x 512 are for a GPU: a CPU's training attention (dropout on)
        # materializes every [batch, heads, T, T] score matrix, tens of GB at these shapes.
        names = [n for n in names if not n.startswith("mfu/fixed/")]
    if args.device == "cuda":  # bf16 is mtbert's default there: the same as train/<task>/mtbert
        names = [n for n in names if not n.endswith("/mtbert_bf16")]
    results = {}
    for name in names:
        command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--device", args.device, "--encoder", args.encoder]
        if args.threads:
            command += ["--threads", str(args.threads)]
        result, seconds = measure_in_subprocess(command, name)
        if result is None:
            continue
        results[name] = result
        print(f"{name:28s} {json.dumps(result)}  ({seconds:.0f}s)", flush=True)
        save(args, results)  # after each measurement, so a cut-off run keeps what it measured

    table = ratios(results)
    print("\n| measurement | ratio | value |\n|---|---|---|")
    for what, how, value in table:
        print(f"| {what} | {how} | {value:.2f} |")
    save(args, results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
