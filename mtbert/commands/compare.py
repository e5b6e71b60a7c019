"""Runs side by side: each run's best dev metrics in one table (like the reports' tables)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from mtbert.base.errors import MtbertError

SUMMARIES = ("summary.jsonl", "summary.md")  # what run_sweep writes beside a sweep's runs


def is_sweep(path: Path) -> bool:
    """A sweep directory: no results of its own, but a summary.jsonl or run directories inside."""
    path = Path(path)
    if not path.is_dir() or (path / "best.json").is_file():
        return False
    return (path / "summary.jsonl").is_file() or any((child / "spec.toml").is_file() for child in path.iterdir())


def sweep_runs(root: Path) -> list[Path]:
    """A sweep's run directories in the sweep's order (summary.jsonl's), then any it does not list, sorted.

    Runs missing from summary.jsonl are the ones an interrupted sweep had not finished.
    """
    root = Path(root)
    names: list[str] = []
    summary = root / "summary.jsonl"
    if summary.is_file():
        for line in summary.read_text(encoding="utf-8").splitlines():
            try:
                name = json.loads(line).get("run")
            except (json.JSONDecodeError, AttributeError):
                continue  # a line cut short by a crash: its run is still found below
            if isinstance(name, str) and Path(name).name == name and name not in names and (root / name).is_dir():
                names.append(name)
    names += sorted(c.name for c in root.iterdir() if c.name not in names and (c / "spec.toml").is_file())
    return [root / name for name in names]


def expand(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The run directories to compare, and notes on what was skipped.

    A sweep directory stands for its runs (those not finished are skipped with
    a note), and a sweep's summary files are skipped, so both ``compare SWEEP``
    and ``compare SWEEP/*`` work.
    """
    runs: list[Path] = []
    notes: list[str] = []
    for path in map(Path, paths):
        if path.is_file():
            if path.name in SUMMARIES and is_sweep(path.parent):
                notes.append(f"skipped {path}: the sweep's summary, not a run")
                continue
            raise MtbertError(f"{path} is a file, not a run directory; give run directories or a sweep directory")
        if not path.exists():
            raise MtbertError(f"{path} does not exist; give run directories or a sweep directory")
        if not is_sweep(path):
            runs.append(path)
            continue
        found = sweep_runs(path)
        finished = [run for run in found if (run / "best.json").is_file()]
        if not finished:
            raise MtbertError(f"{path} is a sweep with no finished run yet: none of its {len(found)} run "
                              "directories has a best.json")
        notes += [f"skipped {run}: no best.json (not finished, or it scored no dev data)"
                  for run in found if run not in finished]
        runs += finished
    return runs, notes


def load_best(run_dir: Path) -> dict:
    """A run's best evaluation, with the run's name."""
    path = Path(run_dir) / "best.json"
    if not path.is_file():
        raise MtbertError(f"{run_dir} has no best.json: not a finished mtbert run (or it scored no dev data)")
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise MtbertError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(best, dict) or not isinstance(best.get("tasks", {}), dict):
        raise MtbertError(f"{path} is damaged: it holds {type(best).__name__}, not a run's best evaluation; "
                          f"remove {run_dir} from the comparison")
    return {"run": Path(run_dir).name, **best}


def columns(rows: list[dict], all_metrics: bool = True) -> list[tuple[str, str]]:
    """(task, metric) pairs in first-seen order; only each task's main metric unless all_metrics."""
    seen: list[tuple[str, str]] = []
    for row in rows:
        for task, metrics in (row.get("tasks") or {}).items():
            for i, metric in enumerate(metrics if isinstance(metrics, dict) else ()):
                if (all_metrics or i == 0) and (task, metric) not in seen:
                    seen.append((task, metric))
    return seen


def table(rows: list[dict], fmt: str = "markdown", all_metrics: bool = False) -> str:
    cols = columns(rows, all_metrics)
    header = ["run"] + [f"{t} {m}" for t, m in cols] + ["overall"]
    body = [[str(r["run"])] + [_cell(_metric(r, t, m)) for t, m in cols] + [_cell(r.get("overall"))] for r in rows]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *body])
        return out.getvalue().rstrip("\n")
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body])


def _metric(row: dict, task: str, metric: str):
    metrics = (row.get("tasks") or {}).get(task)
    return metrics.get(metric) if isinstance(metrics, dict) else None


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?"  # a hand-edited or damaged file: shown as unknown, not a crash
    return f"{value:.4f}"
