"""What a study leaves in its directory, rewritten after every trial (each file whole, atomically):

- ``summary.jsonl``: a row per trial (its run directory, state, values, drawn parameters, reason),
  which ``mtbert compare STUDY_DIR`` reads like a sweep's;
- ``summary.md``: the same as a table, best first;
- ``best.toml``: the best trial's spec, a normal spec ``mtbert run`` takes (with several objectives:
  the trial of the Pareto front with the best overall score);
- ``front.md``: with several objectives, the Pareto front: which settings buy which task at which
  other's expense.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtbert.base.atomic import write_file

STATES = {"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "queued"}


def state_of(trial) -> str:
    state = STATES.get(trial.state.name, trial.state.name.lower())
    if state == "failed" and trial.user_attrs.get("interrupted"):
        return "interrupted"
    return state


def reason_of(trial) -> str:
    attrs = trial.user_attrs
    if attrs.get("interrupted"):
        return f"{attrs['interrupted']} (retried when the study continues)"
    if trial.state.name == "FAIL" and not attrs.get("reason"):
        return "its worker stopped without a word (killed?)"
    return attrs.get("reason", "")


def last_reported(trial) -> float | None:
    """A pruned trial's score: the last one it reported (None if it reported none)."""
    steps = trial.intermediate_values
    return steps[max(steps)] if trial.state.name == "PRUNED" and steps else None


def row(trial, objectives) -> dict:
    values = trial.values if trial.values is not None else ([trial.value] if trial.value is not None else None)
    if last_reported(trial) is not None:
        values = [last_reported(trial)]
    out = {"run": trial.user_attrs.get("run"), "trial": trial.number, "state": state_of(trial),
           "values": dict(zip(objectives, values)) if values else None, "params": dict(trial.params)}
    for key in ("overall", "tasks", "step"):
        if key in trial.user_attrs:
            out[key] = trial.user_attrs[key]
    reason = reason_of(trial)
    if reason:
        out["reason"] = reason
    return out


def ranked(trials, objectives) -> list:
    """Best first: finished trials by their (first) objective, then pruned, then the others by number."""
    def key(trial):
        order = {"done": 0, "pruned": 1}.get(state_of(trial), 2)
        score = row(trial, objectives)["values"]
        first = next(iter(score.values())) if score else float("-inf")
        return (order, -first if order < 2 else trial.number)

    return sorted(trials, key=key)


def front(study) -> list:
    """The Pareto front (several objectives) or the best trial (one)."""
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: -t.user_attrs.get("overall", float("-inf")))
    try:
        return [study.best_trial]
    except ValueError:  # no finished trial yet
        return []


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(trials, objectives) -> str:
    """Markdown: a row per trial, best first."""
    names = sorted({name for t in trials for name in t.params}, key=lambda n: n)
    header = ["trial", "state", *objectives, *names, "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in ranked(trials, objectives):
        r = row(trial, objectives)
        values = r["values"] or {}
        cells = [r["run"] or f"#{trial.number}", r["state"], *(f"{values[o]:.4f}" if o in values else "-"
                                                               for o in objectives),
                 *(cell(trial.params[n]) if n in trial.params else "-" for n in names), r.get("reason", "")]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def front_table(study, objectives) -> str:
    best = front(study)
    names = sorted({name for t in best for name in t.params})
    header = ["trial", *objectives, "overall", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in best:
        lines.append("| " + " | ".join([trial.user_attrs.get("run", str(trial.number)),
                                        *(f"{v:.4f}" for v in trial.values),
                                        f"{trial.user_attrs.get('overall', float('nan')):.4f}",
                                        *(cell(trial.params.get(n, "-")) for n in names)]) + " |")
    return "\n".join(lines)


def read_rows(directory: Path) -> list[dict]:
    """``summary.jsonl``'s rows (none when the study wrote none yet)."""
    path = Path(directory) / "summary.jsonl"
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def write_results(study, directory: Path, objectives, title: str) -> Path | None:
    """Every results file from the study as it is now; the best spec's path, if there is one."""
    trials = study.get_trials(deepcopy=False)
    write_file(directory / "summary.jsonl", "".join(json.dumps(row(t, objectives)) + "\n" for t in trials),
               "the study's summary")
    write_file(directory / "summary.md", f"# Study {title}\n\n{table(trials, objectives)}\n", "the study's table")
    if len(objectives) > 1 and front(study):
        write_file(directory / "front.md",
                   f"# Pareto front of study {title}\n\nNo trial of the front is better on every objective "
                   f"than another of it ({', '.join(objectives)}: each task's main dev metric in [0, 1]).\n\n"
                   f"{front_table(study, objectives)}\n", "the study's Pareto front")
    best = front(study)
    if not best:
        return None
    trial = best[0]
    spec = directory / trial.user_attrs.get("run", "") / "spec.toml"
    if not spec.is_file():  # trained on another machine sharing the study: its spec is there
        return None
    text = spec.read_text(encoding="utf-8")
    head = (f"# The best trial of study {title}: {trial.user_attrs.get('run')} (trial {trial.number}), "
            f"overall dev score {trial.user_attrs.get('overall', float('nan')):.4f}.\n"
            f"# Its drawn values: {json.dumps(trial.params)}\n# Run it as any spec: mtbert run best.toml\n")
    write_file(directory / "best.toml", head + retitle(text, f"{title}-best"), "the best trial's spec")
    return directory / "best.toml"


def retitle(text: str, name: str) -> str:
    """The spec with its name set (so its runs do not land in the trial's directory name)."""
    import tomllib

    import tomli_w

    data = tomllib.loads(text)
    data["name"] = name
    return tomli_w.dumps(data)


def line(trial, objectives, best) -> str:
    """One line of the live table."""
    r = row(trial, objectives)
    values = r["values"] or {}
    score = "  ".join(f"{o} {values[o]:.4f}" for o in objectives if o in values) or "-"
    params = "  ".join(f"{k}={cell(v)}" for k, v in trial.params.items())
    note = f"  ({r['reason']})" if r.get("reason") else ""
    lead = f"  best {best.number}" if best is not None else ""
    return f"trial {trial.number:>3} {r['state']:<11} {score}  {params}{note}{lead}"
