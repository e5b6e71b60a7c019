"""How much of a training batch is padding, with and without length buckets (the ceiling of packing).

    MTBERT_DATA=../shared/data/cs224n python benchmarks/padding.py [--batch-size 32] [--eval-batch-size 128]
                                                                   [--max-length 128]

Unpadded, packed sequences (issue 29) save the work done on pad tokens; this
counts it: over one shuffled pass of each course task's training file,
tokenized with MiniLM's tokenizer as mtbert tokenizes it, the real tokens
over the padded ones of mtbert's batches (``mtbert.data.splits.pass_order``), with
``train.length_buckets`` on (the default) and off; and over each dev file
(Quora: its first 4,000 pairs, as benchmarks/bench.py reads it) in the
length-sorted batches mtbert evaluates in (``mtbert.data.splits.eval_batches``).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402

from mtbert.data.splits import pass_order  # noqa: E402
from mtbert.toolkit import pretrained  # noqa: E402

FILES = {"sst": ("ids-sst-train.csv", ["sentence"]), "para": ("quora-train.csv", ["sentence1", "sentence2"]),
         "sts": ("sts-train.csv", ["sentence1", "sentence2"])}
DEV = {"sst": "ids-sst-dev.csv", "para": "quora-dev.csv", "sts": "sts-dev.csv"}
DEV_LIMIT = {"para": 4000}


def lengths(path: Path, columns: list[str], tokenizer, max_length: int) -> np.ndarray:
    with open(path, newline="", encoding="utf-8") as fp:
        rows = [[row.get(c) or "" for c in columns] for row in csv.DictReader(fp, delimiter="\t")]
    texts = [list(t) for t in zip(*rows)]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    return np.array([len(ids) for ids in encoded["input_ids"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/cpu/padding.json")
    args = parser.parse_args()
    data = Path(os.environ.get("MTBERT_DATA", "../shared/data/cs224n"))
    tokenizer = pretrained.load_tokenizer(pretrained.embedded_path())
    results = {}
    for task, (name, columns) in FILES.items():
        if not (data / name).is_file():
            print(f"{task}: {data / name} not found, left out")
            continue
        sizes = lengths(data / name, columns, tokenizer, args.max_length)
        for buckets in (True, False):
            batches = pass_order(sizes, args.batch_size, torch.Generator().manual_seed(11), buckets)
            real = int(sum(sizes[b].sum() for b in batches))
            padded = int(sum(len(b) * sizes[b].max() for b in batches))
            key = f"{task}/{'buckets' if buckets else 'no-buckets'}"
            results[key] = {"real_tokens": real, "padded_tokens": padded, "real_share": real / padded,
                            "mean_length": float(sizes.mean())}
            print(f"{key:18s} real / padded tokens = {real / padded:.3f}  (mean length {sizes.mean():.1f})")
        if (data / DEV[task]).is_file():
            sizes = lengths(data / DEV[task], columns, tokenizer, args.max_length)[:DEV_LIMIT.get(task)]
            order = np.argsort(sizes, kind="stable")  # as eval_batches orders a split
            batches = [order[i:i + args.eval_batch_size] for i in range(0, len(order), args.eval_batch_size)]
            real = int(sizes.sum())
            padded = int(sum(len(b) * sizes[b].max() for b in batches))
            results[f"{task}/eval"] = {"real_tokens": real, "padded_tokens": padded, "real_share": real / padded,
                                       "longest_batch": [int(sizes[batches[-1]].min()), int(sizes.max())]}
            print(f"{task + '/eval':18s} real / padded tokens = {real / padded:.3f}  (the longest batch: "
                  f"{sizes[batches[-1]].min()}-{sizes.max()} tokens)")
    write_json(args.out, {"machine": machine(), "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
