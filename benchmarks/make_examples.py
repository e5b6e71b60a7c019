"""Write the report-experiment example specs from examples/baseline.toml.

Each experiment is the baseline with the changes that experiment studies,
so two specs differ only in what is being compared. Run from the repository
root after editing this file or the baseline:  python benchmarks/make_examples.py
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
BASE = tomllib.loads((ROOT / "examples" / "baseline.toml").read_text())

PARA_BI = {"name": "bi_binary", "pooling": "mean"}
STS_COSINE = {"name": "cosine", "high": 5.0, "low": 0.0}


def set_task(spec, task, **changes):
    spec["tasks"][task].update(changes)


def experiments():
    yield "concat_vs_parallel", "Report 000: parallel (bi-encoder, Sentence-BERT) pair tasks; compare with baseline (concat)", \
        lambda s: (set_task(s, "para", head=PARA_BI), set_task(s, "sts", head=STS_COSINE, loss="cosine_mse"))
    yield "pearson_vs_mse", "Report 000: the Pearson-correlation loss for STS; compare with baseline (MSE)", \
        lambda s: set_task(s, "sts", loss="pearson")
    yield "full_then_heads", "Report 000: 1 epoch of full fine-tuning, then 4 epochs training only the heads", \
        lambda s: s.update(phases=[{"name": "full", "trainable": "all", "epochs": 1},
                                   {"name": "heads", "trainable": "heads", "lr": 1e-3, "epochs": 4}])
    yield "heads_only", "Reports 000/001: the encoder frozen, only the task heads train (lr 1e-3)", \
        lambda s: s["train"].update(trainable="heads", lr=1e-3)
    yield "annealed", "Report 001: annealed sampling (Stickland & Murray); compare with baseline (round-robin)", \
        lambda s: s.update(sampler="annealed")
    yield "annealed_pals", "Report 001: PALs (task-specific projected attention in every layer) with annealed sampling", \
        lambda s: s.update(sampler="annealed", adapters=[{"name": "pals"}])
    yield "heads_then_full", "Report 001: transfer - train the heads on a frozen encoder, then fine-tune everything", \
        lambda s: s.update(phases=[{"name": "heads", "trainable": "heads", "lr": 1e-3, "epochs": 1},
                                   {"name": "full", "trainable": "all", "epochs": 3}])
    yield "ordinal", "Report 001: the ordinal log loss (Castagnos et al. 2022) for SST's ordered classes", \
        lambda s: set_task(s, "sst", loss={"name": "ordinal", "alpha": 1.0})
    yield "smart", "Report 001: SMART regularization (adversarial smoothness + Bregman proximal point)", \
        lambda s: s.update(regularizers=[{"name": "smart"}])
    yield "gradvac", "Report 001: GradVac (gradient vaccine) on every step's three task gradients", \
        lambda s: s.update(sampler="all_tasks", gradient="gradvac")
    yield "all_tasks_sum", "Report 002: all three tasks in every step, losses summed (\"combined loss\")", \
        lambda s: s.update(sampler="all_tasks")
    yield "pcgrad", "Report 002: summed loss + PCGrad (gradient surgery) on every step's three task gradients", \
        lambda s: s.update(sampler="all_tasks", gradient="pcgrad")
    yield "uncertainty_pcgrad", ("Uncertainty weighting (Kendall et al. 2018) learns each task's loss weight, "
                                 "and PCGrad treats the weighted task gradients"), \
        lambda s: s.update(sampler="all_tasks", gradient="pcgrad", balancer={"name": "uncertainty", "lr": 0.01})
    yield "bilstm", "Report 002: a shared BiLSTM over the token states, task-specific MLP heads with dropout", \
        lambda s: (s.update(adapters=[{"name": "bilstm"}]),
                   [t["head"].update(pooling="mean", mlp=256, dropout=0.3) for t in s["tasks"].values()])
    yield "cosine_sts", "Report 003: STS as the cosine similarity of separately encoded sentences (MSE on y/5)", \
        lambda s: set_task(s, "sts", head=STS_COSINE, loss="cosine_mse")
    yield "sequential_sts_first", "Report 003: sequential learning - an epoch on STS alone before the multitask epochs", \
        lambda s: s.update(phases=[{"name": "sts-first", "tasks": ["sts"], "epochs": 1},
                                   {"name": "multitask", "epochs": 3}])
    yield "cosent", "CoSENT (Su 2022; cited by report 000) on bi-encoded STS", \
        lambda s: set_task(s, "sts", head=STS_COSINE, loss="cosent")
    yield "lora", "LoRA (Hu et al. 2021) on query/value with the encoder frozen", \
        lambda s: (s.update(adapters=[{"name": "lora", "r": 8, "alpha": 16.0}]),
                   s["train"].update(trainable="adapters", lr=5e-4))
    yield "hf_roberta", "Any Hugging Face encoder through transformers.AutoModel: RoBERTa-base (have it cached or be online)", \
        lambda s: (s.update(encoder={"name": "hf", "pretrained": "roberta-base"}),
                   [t["head"].update(pooling="mean") for t in s["tasks"].values()])
    yield "best_multitask", "Our best three-task spec so far: proportional sampling (each task's expected examples equal its single-task budget), mean pooling (how MiniLM was trained)", \
        lambda s: (s.update(sampler="proportional"),
                   [t["head"].update(pooling="mean") for t in s["tasks"].values()])
    yield "pals_smart", "Report 001's best: PALs + annealed sampling + cross-encoding + head transfer + SMART", \
        lambda s: s.update(sampler="annealed", adapters=[{"name": "pals"}], regularizers=[{"name": "smart"}],
                           phases=[{"name": "heads", "trainable": "heads", "lr": 1e-3, "epochs": 1},
                                   {"name": "full", "trainable": "all", "epochs": 3}])


def render(name, title, change) -> str:
    spec = copy.deepcopy(BASE)
    spec["name"] = name
    change(spec)
    if "phases" in spec:  # each phase has its own length
        del spec["train"]["epochs"]
    header = (f"# {title}.\n# Generated by benchmarks/make_examples.py from examples/baseline.toml;\n"
              "# data.dir is the course data folder, which MTBERT_DATA overrides.\n"
              f"#   MTBERT_DATA=../shared/data/cs224n mtbert run examples/{name}.toml\n")
    return header + tomli_w.dumps(spec)


def main():
    for name, title, change in experiments():
        (ROOT / "examples" / f"{name}.toml").write_text(render(name, title, change))
        print("wrote", name)


if __name__ == "__main__":
    main()
