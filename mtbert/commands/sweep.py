"""Sweeps: every combination of a grid of spec overrides, one run directory each.

    mtbert sweep SPEC --grid train.lr=1e-5,2e-5 --grid tasks.sst.head.dropout=0.1,0.3

Every combination is validated before the first one trains, so a bad value
costs nothing. Runs go to ``<out>/<name>-sweep/<key=value,...>/`` and the
best dev metrics of each are gathered into one table (printed, and written
as ``summary.md`` and ``summary.jsonl`` in the sweep directory;
``mtbert compare SWEEP_DIR`` prints it again from the runs, in that order).
Under torchrun every combination trains on all processes; the first one makes
the directories and writes the table.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

from mtbert.commands.compare import table
from mtbert.base.errors import SpecError
from mtbert.plugin.registry import Registry
from mtbert.runs.rundir import RunDir, free_dir
from mtbert.config.spec import Spec, load_spec, parse_override


def parse_grid(texts: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """``key=a,b,c`` -> (key, ["key=a", "key=b", "key=c"]) for each --grid."""
    grid, problems = [], []
    for text in texts:
        key, _, values = text.partition("=")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not key.strip() or not items:
            problems.append(("--grid", f"expected KEY=V1,V2,..., got {text!r}"))
            continue
        for item in items:
            parse_override(f"{key}={item}")  # raises SpecError on a malformed key
        grid.append((key.strip(), [f"{key.strip()}={item}" for item in items]))
    if problems:
        raise SpecError(problems)
    return grid


def label(overrides: tuple[str, ...]) -> str:
    """A directory name for one combination: last key segment = value, joined by commas."""
    parts = [f"{o.split('=', 1)[0].rsplit('.', 1)[-1]}={o.split('=', 1)[1]}" for o in overrides]
    return re.sub(r"[^A-Za-z0-9_.=,+\-]", "_", ",".join(parts))


def plan_sweep(spec_path: Path, registry: Registry, grid_texts: tuple[str, ...],
               overrides: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Spec]]:
    """Every combination as (its overrides, its validated spec); all problems at once."""
    grid = parse_grid(grid_texts)
    combos = list(itertools.product(*(values for _, values in grid))) if grid else [()]
    planned, problems = [], []
    for combo in combos:
        try:
            planned.append((combo, load_spec(spec_path, registry, overrides + combo)))
        except SpecError as exc:
            problems += [(f"[{label(combo)}] {path}", message) for path, message in exc.problems]
    if problems:
        raise SpecError(problems, str(spec_path))
    return planned


def run_sweep(spec_path: Path, registry: Registry, grid_texts: tuple[str, ...], overrides: tuple[str, ...] = (),
              out: str | None = None, progress: bool = True, echo=print) -> Path:
    from mtbert.training.loop import Trainer

    planned = plan_sweep(spec_path, registry, grid_texts, overrides)
    first = planned[0][1]
    root, rows = None, []
    for i, (combo, spec) in enumerate(planned, start=1):
        name = label(combo) or "default"
        trainer = Trainer(spec, registry, progress=progress)
        # under torchrun the first rank makes the directories and tells the others; only it writes
        main = trainer.dist.main
        if root is None:
            made = free_dir(Path(first.out) / f"{first.name}-sweep", out) if main else None
            if made is not None:
                made.mkdir(parents=True, exist_ok=True)
            root = trainer.dist.broadcast_object(made)
        if main:
            echo(f"[{i}/{len(planned)}] {name}")
        path = RunDir.create(spec, root / name).path if main else None
        best = trainer.fit(RunDir(trainer.dist.broadcast_object(path))) or {}
        rows.append({"run": name, "overrides": list(combo), **best})
        if main:
            with open(root / "summary.jsonl", "a", encoding="utf-8") as fp:
                fp.write(json.dumps(rows[-1]) + "\n")
    if main:
        summary = table(rows, "markdown", all_metrics=True)
        (root / "summary.md").write_text(summary + "\n", encoding="utf-8")
        echo(summary)
        echo(f"sweep in {root}")
    return root
