"""The ASCII fast path (mtbert/data/fasttok.py) against the tokenizer itself, on the same sentences.

    MTBERT_DATA=../shared/data/cs224n python benchmarks/tokenize_speed.py [--file TSV --column sentence]

Tokenizes each text column (the course's SST sentences and Quora pairs, and
``--file``'s column if given) in chunks of 8,192 rows both ways, interleaved
three times, and prints the best time of each and their ratio; the ids are
checked equal on the way.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

from mtbert.data.fasttok import FastBertEncoder
from mtbert.toolkit.pretrained import load_tokenizer, resolve


def column(path: Path, names: list[str]) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fp:
        rows = list(csv.DictReader(fp, delimiter="\t", quoting=csv.QUOTE_MINIMAL))
    return [[r[n].strip() for r in rows] for n in names]


def timed(fn, texts, pairs) -> tuple[float, list]:
    start, out = time.perf_counter(), []
    for i in range(0, len(texts), 8192):
        out += fn(texts[i:i + 8192], pairs[i:i + 8192] if pairs else None)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path)
    parser.add_argument("--column", default="sentence")
    args = parser.parse_args()
    data = Path(os.environ.get("MTBERT_DATA", "../shared/data/cs224n"))
    tokenizer = load_tokenizer(resolve("minilm-l6"))
    fast = FastBertEncoder.for_tokenizer(tokenizer)
    cases = {"SST train (single)": column(data / "ids-sst-train.csv", ["sentence"]),
             "Quora dev (pairs)": column(data / "quora-dev.csv", ["sentence1", "sentence2"])}
    if args.file:
        cases[f"{args.file.name} (single)"] = column(args.file, [args.column])
    slow = lambda a, b: tokenizer(a, b, truncation=True, max_length=128, return_token_type_ids=True,  # noqa: E731
                                  return_attention_mask=False)["input_ids"]
    quick = lambda a, b: fast.encode(a, b, 128)[0]  # noqa: E731
    print("| texts | rows | tokenizer | fast path | ratio |\n|---|---|---|---|---|")
    for name, cols in cases.items():
        texts, pairs = cols[0], cols[1] if len(cols) > 1 else None
        best = {"slow": float("inf"), "fast": float("inf")}
        for _ in range(3):
            for key, fn in (("slow", slow), ("fast", quick)):
                seconds, ids = timed(fn, texts, pairs)
                best[key] = min(best[key], seconds)
                if key == "slow":
                    reference = ids
                else:
                    assert ids == reference, "the fast path's ids differ"
        print(f"| {name} | {len(texts):,} | {best['slow']:.2f} s | {best['fast']:.2f} s | "
              f"{best['slow'] / best['fast']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
