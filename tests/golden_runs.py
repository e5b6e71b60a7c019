"""Fixed-seed tiny runs whose final weights pin the loop's behaviour.

``python tests/golden_runs.py`` (from the repository root) records, for each
case, the run's dev metrics and per-tensor statistics of its best checkpoint
in tests/fixtures/golden/weights.json. The file was written by the loop before
the redesign of issue 12 (commit c55c1be); tests/training/test_golden.py trains the
same cases with today's loop and compares. Statistics rather than a hash:
another CPU rounds a little differently, a changed loop changes them a lot.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))

from mtbert.runs.rundir import RunDir  # noqa: E402
from mtbert.config.spec import structure_spec, unstructure  # noqa: E402

from helpers import toy_data, toy_spec


GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "weights.json"

CASES = {
    "plain_accumulate": {"train": {"epochs": 2, "accumulate": 2}},
    "pcgrad_smart_phases": {
        "sampler": "all_tasks", "gradient": "pcgrad",
        "regularizers": [{"name": "smart", "sigma": 1e-3, "epsilon": 1e-3}],
        "phases": [{"name": "heads", "trainable": "heads", "steps": 3}, {"name": "all", "epochs": 1}]},
    "pals_gradvac": {"sampler": "all_tasks", "gradient": "gradvac", "adapters": [{"name": "pals"}],
                     "train": {"epochs": 1}},
}


def case_spec(registry, directory, name):
    data = unstructure(toy_spec(registry, toy_data(directory, n=64), log_every=3))
    changes = CASES[name]
    data.update({k: v for k, v in changes.items() if k != "train"})
    data["train"].update(changes.get("train", {}))
    return structure_spec(data, registry)


def run_case(registry, name, root: Path, train) -> dict:
    spec = case_spec(registry, root / "data", name)
    run = RunDir.create(spec, str(root / name))
    train(spec, registry, run)
    weights = load_file(str(run.checkpoint / "model.safetensors"))
    metrics = [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
               for line in run.metrics.read_text().splitlines()]
    stats = {k: [float(w.double().sum()), float(w.double().square().sum())] for k, w in sorted(weights.items())}
    return {"metrics": metrics, "weights": stats}


def main() -> None:
    from mtbert.plugin.loading import default_registry
    from mtbert.training.loop import train

    registry = default_registry()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = {name: run_case(registry, name, Path(tmp), lambda s, r, d: train(s, r, d, progress=False))
               for name in CASES}
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
