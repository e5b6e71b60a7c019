"""``mtbert report STUDY_DIR``: a study's pictures and page (``report/`` in the study directory).

- ``history.png``: each finished trial's score by trial number (pruned ones at the last score they
  reported), and the best so far;
- ``importance.png``: each parameter's importance to the score (Optuna's default evaluator,
  over the parameters every finished trial drew), when two or more trials finished;
- ``front-<a>-<b>.png``: with several objectives, every pair of them, the Pareto front marked;
- ``report.md``: the table of trials, the front, and every picture.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import attrs

from mtbert.base.atomic import write_file
from mtbert.base.errors import MtbertError
from mtbert.commands.report import _figure, _save
from mtbert.tune.results import front, front_table, last_reported, table


@attrs.define
class StudyReport:
    path: Path
    images: list[Path] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)


def finished(trials) -> list:
    """The trials with a score: finished ones, and pruned ones that reported one."""
    return [t for t in trials if t.state.name == "COMPLETE" or last_reported(t) is not None]


def plot_history(trials, path: Path, objective: str) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if last_reported(t) is not None]
    ax.plot([t.number for t in done], [t.value for t in done], "o", label="finished")
    if pruned:
        ax.plot([t.number for t in pruned], [last_reported(t) for t in pruned], "x", color="tab:gray",
                label="pruned (last score)")
    best, xs, ys = float("-inf"), [], []
    for t in sorted(done, key=lambda t: t.number):
        best = max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial", ylabel=objective, title="Optimization history")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_importance(importances: dict[str, float], path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance (Optuna's default evaluator)", title="Parameter importance")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_front(trials, best, a: int, b: int, names: list[str], path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    on = {t.number for t in best}
    ax.plot([t.values[a] for t in done if t.number not in on], [t.values[b] for t in done if t.number not in on],
            "o", color="tab:gray", alpha=0.6, label="other trials")
    line = sorted((t.values[a], t.values[b], t.number) for t in done if t.number in on)
    ax.plot([p[0] for p in line], [p[1] for p in line], "o", color="tab:red", label="Pareto front")
    for x, y, n in line:
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
    ax.set(xlabel=names[a], ylabel=names[b], title=f"{names[a]} vs {names[b]} (main dev metric, [0, 1])")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def make_study_report(directory: Path, out: Path | None = None, storage: str | None = None) -> StudyReport:
    import optuna

    from mtbert.tune.command import reopen

    study, recorded = reopen(directory, storage)
    objectives = list(study.user_attrs.get("objectives") or recorded.get("objectives") or ["overall"])
    trials = study.get_trials(deepcopy=False)
    if not finished(trials):
        raise MtbertError(f"study {study.study_name!r} has no finished trial yet; nothing to draw")
    out = Path(out) if out is not None else Path(directory) / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = StudyReport(out / "report.md")
    lines = [f"# Study {study.study_name}", "", f"Objectives (maximized): {', '.join(objectives)}.", "",
             table(trials, objectives), ""]
    if len(objectives) == 1:
        report.images.append(plot_history(trials, out / "history.png", objectives[0]))
        lines += ["## Optimization history", "", "![history](history.png)", ""]
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        if len(complete) >= 2:
            try:
                with warnings.catch_warnings():  # "few trials in a regime": the picture is what there is
                    warnings.simplefilter("ignore")
                    importances = optuna.importance.get_param_importances(study)
            except (RuntimeError, ValueError) as exc:  # e.g. no parameter every trial drew
                report.notes.append(f"no parameter importance: {exc}")
            else:
                if importances:
                    report.images.append(plot_importance(importances, out / "importance.png"))
                    lines += ["## Parameter importance", "", "![importance](importance.png)", ""]
        else:
            report.notes.append("parameter importance needs two finished trials")
    else:
        best = front(study)
        lines += ["## Pareto front", "", front_table(study, objectives), ""]
        for a, b in itertools.combinations(range(len(objectives)), 2):
            name = f"front-{objectives[a]}-{objectives[b]}.png"
            report.images.append(plot_front(trials, best, a, b, objectives, out / name))
            lines += [f"![{objectives[a]} vs {objectives[b]}]({name})", ""]
    lines += [f"- note: {note}" for note in report.notes]
    write_file(report.path, "\n".join(lines) + "\n", "the study's report")
    return report
