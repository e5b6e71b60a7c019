"""The single-task comparison table: mtbert's single-task specs vs the Hugging Face Trainer peer.

    python benchmarks/hf_peer.py --task {sst,para,sts}        # -> benchmarks/out/peer-<task>.json
    mtbert run examples/single_task_<task>.toml --out runs/single_task_<task>
    python benchmarks/peer_table.py [RUNS_DIR]                 # prints the Markdown table

Both sides train the same checkpoint on the same data with the same epochs,
batch, maximum length, learning rate, warm-up and weight decay, and report
their best dev metric over the per-epoch evaluations.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRIC = {"sst": "accuracy", "para": "accuracy", "sts": "pearson"}


def rows(runs: Path) -> list[str]:
    lines = ["| task | metric | HF Trainer peer (best epoch) | mtbert single-task (best epoch) | mtbert - peer |",
             "|---|---|---|---|---|"]
    for task, metric in METRIC.items():
        peer_file, run_file = ROOT / "benchmarks" / "out" / f"peer-{task}.json", runs / f"single_task_{task}" / "best.json"
        if not peer_file.is_file() or not run_file.is_file():
            lines.append(f"| {task} | {metric} | {'-' if not peer_file.is_file() else 'done'} | "
                         f"{'-' if not run_file.is_file() else 'done'} | not measured |")
            continue
        peer = json.loads(peer_file.read_text())
        ours = json.loads(run_file.read_text())["tasks"][task][metric]
        epochs = [round(e[metric], 4) for e in peer["epochs"]]
        lines.append(f"| {task} | {metric} | {peer['best_dev']:.4f} (per epoch {epochs}) | {ours:.4f} | "
                     f"{ours - peer['best_dev']:+.4f} |")
    return lines


if __name__ == "__main__":
    print("\n".join(rows(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs")))
