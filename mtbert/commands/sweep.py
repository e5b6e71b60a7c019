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

from mtbert.base.atomic import write_file
from mtbert.base.errors import MtbertError, SpecError, Stopped, first_line
from mtbert.base.signals import StopRequest
from mtbert.commands.compare import table
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


def unique_names(planned) -> list[str]:
    """Each combination's directory name; two that would name the same directory (values that differ
    only in characters a folder name cannot hold) get -2, -3 ..."""
    names: list[str] = []
    for combo, _ in planned:
        name = base = label(combo) or "default"
        n = 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def run_sweep(spec_path: Path, registry: Registry, grid_texts: tuple[str, ...], overrides: tuple[str, ...] = (),
              out: str | None = None, progress: bool = True, echo=print) -> Path:
    """Train every combination. One that fails (bad data, a diverged run) is recorded with its error
    and the sweep goes on; a signal stops the sweep after the summary of what was done is written."""
    from mtbert.training.loop import Trainer

    planned = plan_sweep(spec_path, registry, grid_texts, overrides)
    first = planned[0][1]
    root, rows, main = None, [], True
    between = StopRequest()  # SIGTERM between two runs (or while one reads its data)
    with between.on_sigterm():
        for i, ((combo, spec), name) in enumerate(zip(planned, unique_names(planned)), start=1):
            trainer = None
            try:
                trainer = Trainer(spec, registry, progress=progress)
                # under torchrun the first rank makes the directories and tells the others; only it writes
                main = trainer.dist.main
                if root is None:
                    root = trainer.dist.broadcast_object(sweep_root(first, out) if main else None)
                if main:
                    echo(f"[{i}/{len(planned)}] {name}")
                made = RunDir.create(spec, root / name) if main else None
                path = trainer.dist.broadcast_object(made.path if made else None)
                best = trainer.fit(made or RunDir(path)) or {}
                rows.append({"run": name, "overrides": list(combo), **best})
            except (Stopped, KeyboardInterrupt):
                finish(root, rows, main, echo, stopped=True)
                raise
            except MtbertError as exc:  # this combination failed; the others may not
                if root is None:
                    root = sweep_root(first, out)
                echo(f"[{i}/{len(planned)}] {name} failed: {exc.title}: {first_line(exc, 400)}")
                rows.append({"run": name, "overrides": list(combo), "error": f"{exc.title}: {exc}"})
            if main:
                write_file(root / "summary.jsonl", "".join(json.dumps(row) + "\n" for row in rows),
                           "the sweep's summary")
            signal_name = between.signal or (trainer.stop.signal if trainer else None)
            if signal_name and i < len(planned):
                finish(root, rows, main, echo, stopped=True)
                raise Stopped(f"{signal_name} received: the sweep stopped after {i} of {len(planned)} "
                              f"combinations; the summary of those is in {root}")
    finish(root, rows, main, echo)
    return root


def sweep_root(first: Spec, out: str | None) -> Path:
    made = free_dir(Path(first.out) / f"{first.name}-sweep", out)
    try:
        made.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtbertError(f"cannot make the sweep directory {made}: {exc.strerror or exc}\n"
                          "  fix: choose an --out in a writable folder") from None
    return made


def finish(root: Path | None, rows: list[dict], main: bool, echo, stopped: bool = False) -> None:
    """The summary table of the combinations done (failed ones with their error)."""
    if not main or root is None or not rows:
        return
    summary = table(rows, "markdown", all_metrics=True)
    failed = [row for row in rows if "error" in row]
    notes = "".join(f"\n- {row['run']} failed: {first_line_of(row['error'])}" for row in failed)
    write_file(root / "summary.md", summary + "\n" + (f"\nFailed:{notes}\n" if failed else ""),
               "the sweep's summary table")
    echo(summary + (f"\n{len(failed)} of {len(rows)} combination(s) failed:{notes}" if failed else ""))
    echo(f"sweep {'stopped' if stopped else 'done'}: {len(rows)} combination(s) in {root}")


def first_line_of(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
