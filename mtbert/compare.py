"""Runs side by side: each run's best dev metrics in one table (like the reports' tables)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .errors import MtbertError


def load_best(run_dir: Path) -> dict:
    """A run's best evaluation, with the run's name."""
    path = Path(run_dir) / "best.json"
    if not path.is_file():
        raise MtbertError(f"{run_dir} has no best.json: not a finished mtbert run (or it scored no dev data)")
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MtbertError(f"{path} is not valid JSON: {exc}") from None
    return {"run": Path(run_dir).name, **best}


def columns(rows: list[dict], all_metrics: bool = True) -> list[tuple[str, str]]:
    """(task, metric) pairs in first-seen order; only each task's main metric unless all_metrics."""
    seen: list[tuple[str, str]] = []
    for row in rows:
        for task, metrics in row.get("tasks", {}).items():
            for i, metric in enumerate(metrics):
                if (all_metrics or i == 0) and (task, metric) not in seen:
                    seen.append((task, metric))
    return seen


def table(rows: list[dict], fmt: str = "markdown", all_metrics: bool = False) -> str:
    cols = columns(rows, all_metrics)
    header = ["run"] + [f"{t} {m}" for t, m in cols] + ["overall"]
    body = [[r["run"]] + [_cell(r.get("tasks", {}).get(t, {}).get(m)) for t, m in cols] + [_cell(r.get("overall"))]
            for r in rows]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *body])
        return out.getvalue().rstrip("\n")
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body])


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4f}"
