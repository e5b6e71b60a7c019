"""``mtbert report RUN_DIR``: a Markdown page with pictures of one run.

What goes in (all read from the run directory, nothing recomputed but the
confusion matrices and correlations of the saved dev predictions):

- ``overall.png``: the overall dev score at every evaluation (metrics.jsonl),
  the best evaluation marked;
- ``curves-<task>.png``: the task's training loss over steps (the
  ``train/loss/<task>`` scalars in tb/) above each of its dev metrics over
  steps, the best evaluation marked;
- ``confusion-<task>.png`` for each classification task (head output kind
  multiclass or binary): counts of true class (rows) x predicted class
  (columns), from predictions/<task>-dev-output.csv and the labels of the
  task's dev file, matched by id; class names from data.label_names;
- ``scatter-<task>.png`` for each regression / similarity task: predicted vs
  true with the line y = x, Pearson r in the title;
- ``report.md``: the best evaluation's table, every picture (relative
  links), and the run's key settings.

Dev predictions are those of the best evaluation (the run rewrites them each
time the overall score improves). A task whose dev file or predictions
cannot be found gets a note in the report instead of its picture; the
report as a whole fails (MtbertError) only when RUN_DIR is not a run or has
no evaluation yet.

Pictures are drawn with matplotlib's object-oriented API on the Agg canvas
(no pyplot, no global backend change): 6 x 4 inches at 100 dpi.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path

import attrs
import numpy as np

from mtbert.base.atomic import sweep_dead
from mtbert.base.errors import MtbertError, WriteError

DPI = 100
SIZE = (6.0, 4.0)
CLASSIFICATION = ("multiclass", "binary")
REAL_VALUED = ("regression", "similarity")


@attrs.define
class Report:
    """What :func:`make_report` wrote."""

    path: Path  # report.md
    images: list[Path] = attrs.Factory(list)
    confusions: dict[str, np.ndarray] = attrs.Factory(dict)  # task -> [true, predicted] counts
    correlations: dict[str, float] = attrs.Factory(dict)  # task -> Pearson r of the scatter
    notes: list[str] = attrs.Factory(list)  # what could not be drawn, and why


# -- reading the run ------------------------------------------------------------------------

def read_metrics(path: Path) -> list[dict]:
    """Every evaluation in metrics.jsonl (a torn last line, from a run still writing, is skipped)."""
    records = []
    if not Path(path).is_file():
        return records
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if sound_record(record):
            records.append(record)
    return records


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sound_record(record) -> bool:
    """An evaluation as the run writes it: step and epoch whole numbers, an overall score, and each
    task's metrics numbers (a hand-edited or damaged line is left out, not a crash later)."""
    return (isinstance(record, dict) and _number(record.get("step")) and _number(record.get("epoch"))
            and _number(record.get("overall")) and isinstance(record.get("tasks"), dict)
            and all(isinstance(m, dict) and all(isinstance(k, str) and _number(v) for k, v in m.items())
                    for m in record["tasks"].values()))


def read_scalars(tb_dir: Path, prefix: str) -> dict[str, list[tuple[int, float]]]:
    """The TensorBoard scalars whose tag starts with ``prefix``: the tag's rest -> [(step, value)],
    sorted by step (a step logged twice, as by a resumed run, keeps its last value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    found = {}
    for tag in events.Tags().get("scalars", []):
        if tag.startswith(prefix):
            by_step = {e.step: e.value for e in events.Scalars(tag)}
            found[tag[len(prefix):]] = sorted(by_step.items())
    return found


def read_train_losses(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``train/loss/<task>`` scalars: task -> [(step, loss)]."""
    return read_scalars(tb_dir, "train/loss/")


WILDEST = 1e6  # no head predicts beyond this; a larger value is damage, left out of the pictures


def read_prediction_file(path: Path) -> dict[str, str]:
    """A course-format prediction file (``id \\t column`` header, ``<id> , <value>`` lines) -> {id: value}."""
    values = {}
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if "," not in line:
            raise MtbertError(f"{path}:{number}: expected '<id> , <prediction>', got {line[:80]!r}")
        ident, value = line.rsplit(",", 1)
        values[ident.strip()] = value.strip()
    return values


# -- the numbers ----------------------------------------------------------------------------

def confusion_matrix(true, predicted, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class (int64, num_classes x num_classes)."""
    true, predicted = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if true.shape != predicted.shape:
        raise ValueError(f"{true.size} true labels but {predicted.size} predictions")
    for name, values in (("true label", true), ("prediction", predicted)):
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(f"{name} {int(bad[0])} is not a class in 0..{num_classes - 1}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def pearson(x, y) -> float:
    """Pearson correlation; nan when either side is constant or there are fewer than 2 points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


# -- pictures -------------------------------------------------------------------------------

def _figure(size=SIZE):
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(str(path), dpi=DPI)
    return path


def plot_overall(records: list[dict], best: dict, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["overall"] for r in records], marker="o", markersize=3, label="overall (dev)")
    ax.axvline(best["step"], color="tab:red", linestyle="--", linewidth=1)
    ax.plot([best["step"]], [best["overall"]], marker="*", markersize=12, color="tab:red", linestyle="none",
            label=f"best: {best['overall']:.4f} (step {best['step']})")
    ax.set(xlabel="step", ylabel="overall score", title="Overall dev score")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_task_curves(task: str, records: list[dict], best: dict, losses: list[tuple[int, float]] | None,
                     path: Path) -> Path:
    fig = _figure((6.0, 5.0))
    top, bottom = fig.subplots(2, 1, sharex=True)
    if losses:
        top.plot([s for s, _ in losses], [v for _, v in losses], color="tab:gray", linewidth=1)
    else:
        top.text(0.5, 0.5, "no training loss logged for this task", ha="center", va="center",
                 transform=top.transAxes, color="gray")
    top.set(ylabel="training loss", title=f"{task}: training loss and dev metrics")
    top.grid(alpha=0.3)
    scored = [r for r in records if task in r.get("tasks", {})]
    metrics = list(scored[0]["tasks"][task]) if scored else []
    for metric in metrics:
        points = [(r["step"], r["tasks"][task][metric]) for r in scored if metric in r["tasks"][task]]
        bottom.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label=metric)
    for ax in (top, bottom):
        ax.axvline(best["step"], color="tab:red", linestyle="--", linewidth=1)
    if task in best.get("tasks", {}):
        values = best["tasks"][task]
        bottom.plot([best["step"]] * len(values), list(values.values()), marker="*", markersize=11,
                    color="tab:red", linestyle="none", label=f"best evaluation (step {best['step']})")
    bottom.set(xlabel="step", ylabel="dev metric")
    bottom.grid(alpha=0.3)
    if metrics:
        bottom.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_confusion(task: str, matrix: np.ndarray, names: list[str], path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    high = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize="small",
                    color="white" if matrix[i, j] > high / 2 else "black")
    ticks = list(range(len(names)))
    ax.set_xticks(ticks, names, rotation=30 if max(map(len, names)) > 3 else 0, ha="right"
                  if max(map(len, names)) > 3 else "center")
    ax.set_yticks(ticks, names)
    total = int(matrix.sum())
    accuracy = float(np.trace(matrix)) / total if total else math.nan
    ax.set(xlabel="predicted", ylabel="true",
           title=f"{task}: dev confusion matrix (n = {total}, accuracy {accuracy:.3f})")
    return _save(fig, path)


def plot_scatter(task: str, true, predicted, r: float, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    ax.scatter(true, predicted, s=8, alpha=0.5, edgecolors="none")
    low = float(min(np.min(true), np.min(predicted)))
    high = float(max(np.max(true), np.max(predicted)))
    ax.plot([low, high], [low, high], color="tab:red", linewidth=1, label="y = x")
    r_text = "n/a" if math.isnan(r) else f"{r:.3f}"
    ax.set(xlabel="true", ylabel="predicted", title=f"{task}: predicted vs true (Pearson r = {r_text})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


# -- the report -----------------------------------------------------------------------------

def _options(component) -> str:
    data = component.to_data()
    name = data.pop("name")
    if not data:
        return f"`{name}`"
    parts = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in data.items()]
    return f"`{name}` ({', '.join(parts)})"


def _settings(spec) -> list[str]:
    from mtbert.config.phases import resolve_phases

    rows = [("encoder", _options(spec.encoder))]
    for name, task in spec.tasks.items():
        pair = " pairs" if task.data.text_pair else ""
        rows.append((f"task {name}", f"head {_options(task.head)}, loss {_options(task.loss)}, "
                     f"metrics {', '.join(m.name for m in task.metrics)}, weight {task.weight:g}"
                     f"{', text' + pair if pair else ''}"))
    rows += [
        ("sampler", _options(spec.sampler)),
        ("gradient method", _options(spec.gradient)),
        ("optimizer", _options(spec.optimizer)),
        ("scheduler", _options(spec.scheduler)),
        ("adapters", ", ".join(_options(a) for a in spec.adapters) or "none"),
        ("regularizers", ", ".join(_options(r) for r in spec.regularizers) or "none"),
        ("batch size", f"{spec.train.batch_size} (accumulate {spec.train.accumulate})"),
        ("max length", str(spec.data.max_length)),
        ("seed", str(spec.seed)),
    ]
    if spec.init_from:
        rows.append(("init from", f"`{spec.init_from}`"))
    for phase in resolve_phases(spec):
        length = f"{phase.epochs} epoch(s)" if phase.epochs is not None else f"{phase.steps} step(s)"
        trainable = phase.trainable + (f" ({phase.last_layers})" if phase.trainable == "last_layers" else "")
        head_lr = f", head lr {phase.head_lr:g}" if phase.head_lr else ""
        rows.append((f"phase {phase.name}", f"tasks {', '.join(phase.tasks)}; {length}; trainable {trainable}; "
                     f"lr {phase.lr:g}{head_lr}; sampler {_options(phase.sampler)}; "
                     f"gradient {_options(phase.gradient)}"))
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | {value.replace('|', '/')} |" for key, value in rows]
    return lines


def _best_table(best: dict) -> list[str]:
    metrics: list[str] = []
    for values in best["tasks"].values():
        metrics += [m for m in values if m not in metrics]
    lines = ["| task | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for task, values in best["tasks"].items():
        cells = [f"{values[m]:.4f}" if m in values else "-" for m in metrics]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def _matrix_table(matrix: np.ndarray, names: list[str]) -> list[str]:
    lines = ["| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, row in zip(names, matrix):
        lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |")
    return lines


def _dev_file(spec, task_name: str, data_dirs: list[Path]) -> Path:
    from mtbert.base.errors import DataError

    file = spec.tasks[task_name].data.dev
    candidates = [d / file for d in data_dirs]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(candidates[0], None, "dev file not found" + (
        f" (nor in {', '.join(str(c.parent) for c in candidates[1:])})" if len(candidates) > 1 else ""),
        "give the data directory with --data DIR (or set MTBERT_DATA)")


def _dev_pairs(run, spec, registry, task_name: str, data_dirs: list[Path]):
    """(true labels, predicted values) of one task's dev set, matched by id; notes about mismatches."""
    from mtbert.model.build import label_spec, make
    from mtbert.data.splits import read_rows

    task = spec.tasks[task_name]
    labels = label_spec(registry, task.head)
    predictions_path = run.predictions / f"{task_name}-dev-output.csv"
    if not predictions_path.is_file():
        raise MtbertError(f"no dev predictions ({predictions_path} not found)")
    predicted = read_prediction_file(predictions_path)
    path = _dev_file(spec, task_name, data_dirs)
    rows = read_rows(path, make(registry, task.data.reader), task.data, labels, task.data.limit)
    truth = dict(zip(rows.ids, rows.labels))
    ids = [i for i in predicted if i in truth]
    notes: list[str] = []
    if len(ids) < len(predicted):
        notes.append(f"{len(predicted) - len(ids)} of {len(predicted)} dev predictions of {task_name} have no "
                     f"labelled row in {path} (left out)")
    if labels.real_valued:  # a value no model predicts (inf, 1e30: a damaged file) would flatten the picture
        try:
            wild = {i for i in ids if not abs(float(predicted[i])) <= WILDEST}
        except ValueError as exc:
            raise MtbertError(f"{predictions_path}: {exc}") from None
        if wild:
            example = next(i for i in ids if i in wild)
            notes.append(f"{len(wild)} dev prediction(s) of {task_name} are not finite numbers of a sane size "
                         f"(e.g. {predicted[example]!r} for id {example}): left out")
            ids = [i for i in ids if i not in wild]
    if not ids:
        raise MtbertError(f"none of the ids in {predictions_path} is in {path}: is it the same dev file?")
    try:
        cast = float if labels.real_valued else int
        values = [cast(predicted[i]) for i in ids]
    except ValueError as exc:
        raise MtbertError(f"{predictions_path}: {exc}") from None
    return labels, [truth[i] for i in ids], values, notes


def make_report(run_dir: str | Path, out: str | Path | None = None, registry=None,
                data_dir: str | Path | None = None) -> Report:
    """Write ``report.md`` and its pictures for the run at ``run_dir`` into ``out``
    (default ``run_dir/report``). ``data_dir`` is where the dev files are when not at the
    run's ``data.dir`` (MTBERT_DATA is tried too)."""
    from mtbert import __version__
    from mtbert.runs.rundir import RunDir
    from mtbert.runs.finished import open_run

    run = RunDir(Path(run_dir))
    if not run.spec.is_file():
        raise MtbertError(f"{run.path} is not an mtbert run directory (no spec.toml)")
    records = read_metrics(run.metrics)
    if not records:
        raise MtbertError(f"{run.path} has no evaluations yet ({run.metrics.name} is missing or empty): "
                          "a report needs at least one dev evaluation; let the run reach one "
                          "(train.eval_every, or the end of an epoch)")
    opened = open_run(run.path, registry, weights=False)
    spec, registry = opened.spec, opened.registry
    best = max(records, key=lambda r: (r["overall"] if not math.isnan(r["overall"]) else -math.inf))
    damaged_best = False
    if run.best.is_file():
        try:
            saved = json.loads(run.best.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):
            saved = None
        if sound_record(saved):
            best = saved
        else:  # fall back to the best of metrics.jsonl
            damaged_best = True
    out = Path(out) if out is not None else run.path / "report"
    if out.exists() and not out.is_dir():
        raise MtbertError(f"{out} is a file; give a directory for the report with --out")
    try:  # the report is drawn into a private folder inside out, then moved into place file by file
        out.mkdir(parents=True, exist_ok=True)
        sweep_dead(out, ".report-")  # what a killed report left
        stage = out / f".report-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        stage.mkdir()
    except OSError as exc:
        raise WriteError("the report", out, exc, training=False) from None
    try:
        report = _draw(run, spec, registry, records, best, stage, data_dir, __version__)
        if damaged_best:
            report.notes.append(f"{run.best} is damaged: the best evaluation shown is metrics.jsonl's")
        for image in report.images:
            os.replace(image, out / image.name)
        os.replace(report.path, out / report.path.name)  # the text last: it links the pictures
    except OSError as exc:
        raise WriteError("the report", out, exc, training=False) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return attrs.evolve(report, path=out / report.path.name, images=[out / i.name for i in report.images])


def _draw(run, spec, registry, records: list[dict], best: dict, out: Path, data_dir, version: str) -> Report:
    """Every picture and report.md into ``out`` (a private folder the caller moves into place)."""
    from mtbert.base.errors import DataError

    report = Report(out / "report.md")

    if data_dir is not None:
        data_dirs = [Path(data_dir).expanduser()]
    else:
        data_dirs = [Path(spec.data.dir).expanduser()]
        if os.environ.get("MTBERT_DATA"):
            data_dirs.append(Path(os.environ["MTBERT_DATA"]).expanduser())

    losses: dict[str, list] = {}
    if run.tb.is_dir():
        try:
            losses = read_train_losses(run.tb)
        except Exception as exc:  # a damaged event file should not cost the rest of the report
            report.notes.append(f"could not read the TensorBoard events in {run.tb}: {exc}")
    else:
        report.notes.append(f"no TensorBoard directory ({run.tb}): learning curves show dev metrics only")

    md = [f"# Report: {spec.name}", "",
          f"Run directory `{run.path}`: {len(records)} evaluation(s), the last at step {records[-1]['step']} "
          f"(epoch {records[-1]['epoch']}). Written by `mtbert report` (mtbert {version}).", "",
          "## Best evaluation", "",
          f"Step {best['step']}, epoch {best['epoch']}" + (f", phase {best['phase']}" if best.get("phase") else "")
          + f": overall score **{best['overall']:.4f}** (the mean over tasks of each task's first metric "
          "mapped to [0, 1]).", ""]
    md += _best_table(best) + ["", "## Learning curves", ""]
    image = plot_overall(records, best, out / "overall.png")
    report.images.append(image)
    md += [f"![overall dev score]({image.name})", ""]
    for task in spec.tasks:
        if not any(task in r["tasks"] for r in records) and task not in losses:
            continue
        image = plot_task_curves(task, records, best, losses.get(task), out / f"curves-{task}.png")
        report.images.append(image)
        md += [f"### {task}", "", f"![{task}: training loss and dev metrics]({image.name})", ""]
        if task not in losses:
            report.notes.append(f"{task}: no training loss in tb/ (tag train/loss/{task})")

    md += ["## Dev predictions", "",
           "From the best evaluation's prediction files (predictions/<task>-dev-output.csv) and the labels "
           "of each task's dev file, matched by id.", ""]
    for task, task_spec in spec.tasks.items():
        if not task_spec.data.dev:
            continue
        try:
            labels, true, predicted, notes = _dev_pairs(run, spec, registry, task, data_dirs)
        except (MtbertError, DataError) as exc:
            note = f"{task}: no picture: {exc}".replace("\n  ", " ")
            report.notes.append(note)
            md += [f"### {task}", "", f"*{note}*", ""]
            continue
        report.notes += notes
        if labels.kind in CLASSIFICATION:
            classes = 2 if labels.kind == "binary" else labels.num_labels
            names = list(task_spec.data.label_names or [str(i) for i in range(classes)])
            try:
                matrix = confusion_matrix(true, predicted, classes)
            except ValueError as exc:
                note = f"{task}: no confusion matrix: {exc}"
                report.notes.append(note)
                md += [f"### {task}", "", f"*{note}*", ""]
                continue
            report.confusions[task] = matrix
            image = plot_confusion(task, matrix, names, out / f"confusion-{task}.png")
            report.images.append(image)
            md += [f"### {task}: confusion matrix", "", f"![{task}: confusion matrix]({image.name})", "",
                   *_matrix_table(matrix, names), ""]
        elif labels.kind in REAL_VALUED:
            r = pearson(true, predicted)
            report.correlations[task] = r
            image = plot_scatter(task, np.asarray(true), np.asarray(predicted), r, out / f"scatter-{task}.png")
            report.images.append(image)
            md += [f"### {task}: predicted vs true", "", f"![{task}: predicted vs true]({image.name})", "",
                   f"Pearson r = {r:.4f} over {len(true)} dev examples.", ""]
        else:
            report.notes.append(f"{task}: no picture for head output kind {labels.kind!r}")

    md += ["## Settings", ""] + _settings(spec) + [""]
    if report.notes:
        md += ["## Notes", ""] + [f"- {note}".replace("\n", " ") for note in report.notes] + [""]
    report.path.write_text("\n".join(md), encoding="utf-8")
    return report
