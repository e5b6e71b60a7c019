"""The ``mtbert`` command line. The only place errors become messages and exit codes."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from mtbert.base.errors import MtbertError

log = logging.getLogger("mtbert")


def user_errors(command):
    """Turn a user's mistake (MtbertError) into a short message and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MtbertError as exc:
            click.echo(f"mtbert: {exc.title}: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("mtbert: interrupted", err=True)
            sys.exit(130)

    return wrapper


OWN_LOGGERS = ("mtbert", "mtbert_plugins")  # mtbert's and its built-in plugins' (logging.getLogger(__name__))


def _own(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in OWN_LOGGERS


class _StderrFormatter(logging.Formatter):
    """``[mtbert] message`` for mtbert's records, ``warning: <logger>: message`` for a library's.

    A line another library logs through the root logger (tensorboard's event
    reader, say) must not read as mtbert's own.
    """

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"[mtbert] {text}" if _own(record) else f"{record.levelname.lower()}: {record.name}: {text}"


def setup_logging(verbose: bool = False, file: Path | None = None) -> None:
    """mtbert's INFO (DEBUG if verbose) on stderr; other libraries' only from WARNING on."""
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(_StderrFormatter("%(message)s"))
    stderr.addFilter(lambda record: _own(record) or record.levelno >= logging.WARNING)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[stderr], force=True)
    for noisy in ("transformers", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if file is not None:
        handler = logging.FileHandler(file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)


def registry():
    from mtbert.plugin.loading import default_registry

    reg = default_registry()
    for failure in reg.failures:
        log.warning("plugin '%s' (package %s) not loaded: %s", failure.plugin, failure.package, failure.problem)
    return reg


set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a spec key, e.g. --set train.lr=2e-5 (repeatable).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mtbert")
def main():
    """Multitask fine-tuning of BERT-family encoders from one TOML spec."""


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@set_option
@user_errors
def validate(spec, overrides):
    """Check SPEC (and overrides) without training; report every problem at once."""
    setup_logging()
    from mtbert.config.spec import load_spec

    parsed = load_spec(spec, registry(), overrides)
    click.echo(f"{spec}: ok ({len(parsed.tasks)} task(s): {', '.join(parsed.tasks)}; "
               f"sampler {parsed.sampler.name}, gradient {parsed.gradient.name})")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default: <spec out>/<name>).")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the interrupted run in this directory (same spec and overrides).")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("-v", "--verbose", is_flag=True)
@user_errors
def run(spec, overrides, out, resume, progress, verbose):
    """Train the model SPEC describes; results go to runs/<name>/."""
    setup_logging(verbose)
    from mtbert.runs.rundir import RunDir, free_dir
    from mtbert.config.spec import load_spec
    from mtbert.runs.state import peek
    from mtbert.training.loop import Trainer

    parsed = load_spec(spec, registry(), overrides)
    if resume is not None and out is not None:
        raise MtbertError("give --resume RUN_DIR or --out DIR, not both")
    if out is not None:  # a bad --out is refused before the data is read
        free_dir(Path(parsed.out) / parsed.name, out)
    if resume is not None:
        run_dir = RunDir.existing(resume, parsed)
        if os.environ.get("RANK", "0") == "0":  # one writer at a time: refused now, before the data is read
            run_dir.lock()
        saved = peek(run_dir.state)
        if saved.get("finished"):  # nothing to train: say so before reading any data
            click.echo(f"{run_dir.path} already finished at step {saved['step']}; nothing to do "
                       f"(results in {run_dir.path})")
            return
    trainer = Trainer(parsed, registry(), progress=progress)  # reads and checks all data first
    if resume is None:  # under torchrun the first rank makes (and holds) the directory and tells the others
        made = RunDir.create(parsed, out) if trainer.dist.main else None
        path = trainer.dist.broadcast_object(made.path if made else None)
        run_dir = made or RunDir(path)
    setup_logging(verbose, run_dir.path / "log.txt" if trainer.dist.main else None)
    log.info("run directory: %s%s", run_dir.path, " (resuming)" if resume else "")
    best = trainer.fit(run_dir, resume=resume is not None)
    if not trainer.dist.main:  # under torchrun the first rank tells the run's outcome, once
        return
    if best is None:
        click.echo(f"done: no dev data to score; checkpoint in {run_dir.checkpoint}")
        return
    click.echo(f"done: best overall {best['overall']:.4f} at step {best['step']} (epoch {best['epoch']})")
    for task, values in best["tasks"].items():
        click.echo(f"  {task:<12} " + "  ".join(f"{m} {v:.4f}" for m, v in values.items()))
    click.echo(f"results in {run_dir.path}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--grid", "grid", multiple=True, required=True, metavar="KEY=V1,V2,...",
              help="Values to try for one spec key (repeatable: every combination runs).")
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="Sweep directory (default: <out>/<name>-sweep).")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@user_errors
def sweep(spec, grid, overrides, out, progress):
    """Train every combination of --grid values; print a table of their best dev metrics.

    A combination that fails is recorded in the table with its error and the others go on; the exit
    status is then 1. SIGTERM stops the sweep after the run in progress saved its state (143).
    """
    setup_logging()
    from mtbert.commands.sweep import run_sweep

    root = run_sweep(spec, registry(), grid, overrides, out, progress, echo=click.echo)
    summary = root / "summary.jsonl" if root is not None else None
    if summary is not None and summary.is_file() and '"error": ' in summary.read_text(encoding="utf-8"):
        sys.exit(1)  # some combination failed (the table says which): a script must notice


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--space", type=click.Path(dir_okay=False, path_type=Path),
              help="The search space and the study's settings (default: the spec's [tune] table).")
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="Study directory (default: <out>/<study>-tune).")
@click.option("--trials", type=click.IntRange(min=1), help="Trials in the study, all workers together.")
@click.option("--parallel", type=click.IntRange(min=1), help="Trials at once on this machine.")
@click.option("--study", "study_name", help="The study's name in its storage (default: the spec's name).")
@click.option("--storage", help="A database URL (e.g. postgresql://user@host/db) shared by several machines "
                                "(default: SQLite in the study directory).")
@click.option("--sampler", type=click.Choice(["tpe", "random", "grid", "nsga2"]), help="Optuna's sampler.")
@click.option("--pruner", type=click.Choice(["median", "halving", "none"]), help="Stop hopeless trials early.")
@click.option("--objectives", help='What to maximize: "overall" (default) or task names, comma separated '
                                   "(several: a Pareto front).")
@click.option("--seed", type=int, help="The sampler's seed (default: the spec's).")
@click.option("--worker", type=int, hidden=True)
@user_errors
def tune(spec, space, overrides, out, trials, parallel, study_name, storage, sampler, pruner, objectives, seed,
         worker):
    """Search SPEC's settings with Optuna: each trial a run, hopeless ones pruned, results in a study directory.

    Running the same command again continues the study; SIGTERM or Ctrl-C stop it (a running trial saves
    its state and is retried first). The table of trials, best.toml (the best trial's spec) and, with several
    objectives, front.md (the Pareto front) are in the study directory; mtbert compare and mtbert report
    take it. Exits 1 when some trial failed (the table says why).
    """
    setup_logging()
    for handler in logging.getLogger().handlers:  # each trial logs to its run directory; here a line per trial
        handler.setLevel(logging.WARNING)
    from mtbert.tune.command import run_tune
    from mtbert.tune.results import read_rows
    from mtbert.tune.settings import load_study

    options = {"trials": trials, "parallel": parallel, "study": study_name, "storage": storage,
               "sampler": sampler, "pruner": pruner, "objectives": objectives, "seed": seed}
    components = registry()
    study = load_study(spec, space, components, overrides, options)
    spawn = [sys.executable, "-m", "mtbert", "tune", str(spec)] + (["--space", str(space)] if space else [])
    for text in overrides:
        spawn += ["--set", text]
    for key, value in options.items():
        if value is not None and key != "parallel":
            spawn += [f"--{key}", str(value)]
    directory = run_tune(study, components, out, echo=click.echo, worker=worker, spawn=spawn)
    if worker is None and any(row["state"] == "failed" for row in read_rows(directory)):
        sys.exit(1)  # some trial failed (the table says why): a script must notice


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--task", required=True, help="Task name in the run's spec.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@user_errors
def predict(run_dir, task, input_path, output_path, batch_size, device):
    """Predict TASK on a file in the task's format with a trained run."""
    setup_logging()
    from mtbert.commands.inference import Predictor

    count = Predictor.load(run_dir, device, registry()).predict_file(task, input_path, output_path, batch_size)
    click.echo(f"wrote {count} predictions to {output_path}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "csv"]), default="text", show_default=True)
@click.option("--all-metrics", is_flag=True, help="Every metric, not only each task's main one.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the table to a file.")
@user_errors
def compare(run_dirs, fmt, all_metrics, output):
    """Print runs side by side: each run's best dev metrics and overall score.

    A sweep directory stands for its runs, in the sweep's order.
    """
    from mtbert.commands.compare import expand, load_best, table

    runs, notes = expand(run_dirs)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    text = table([load_best(d) for d in runs], fmt, all_metrics)
    if output:
        from mtbert.base.atomic import write_file

        write_file(output, text + "\n", "the comparison table")
        click.echo(f"wrote {output}")
    else:
        click.echo(text)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json):
    """List every registered component with its kind and the package providing it.

    Exits 1 when a plugin failed to load, so a script or CI job checking an
    installation notices without reading stderr (or the JSON's failures).
    """
    from mtbert.plugin.loading import default_registry

    reg = default_registry()
    rows = [{"kind": c.kind, "name": c.name, "package": c.package, "plugin": c.plugin,
             "description": c.description} for c in reg.all()]
    failures = [{"plugin": f.plugin, "package": f.package, "problem": f.problem} for f in reg.failures]
    if as_json:
        click.echo(json.dumps({"components": rows, "failures": failures}, indent=2))
        if failures:
            sys.exit(1)
        return
    widths = {k: max([len(k)] + [len(r[k]) for r in rows]) for k in ("kind", "name", "package")}
    click.echo("  ".join(k.upper().ljust(widths[k]) for k in widths) + "  DESCRIPTION")
    for r in rows:
        click.echo("  ".join(r[k].ljust(widths[k]) for k in widths) + "  " + r["description"])
    for f in failures:
        click.echo(f"FAILED  plugin '{f['plugin']}' (package {f['package']}): {f['problem']}", err=True)
    if failures:
        sys.exit(1)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.md and its pictures (default: RUN_DIR/report).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the dev files are, if not at the run's data.dir (MTBERT_DATA is tried too).")
@click.option("--storage", help="A study's database URL, when it is not the study directory's SQLite.")
@user_errors
def report(run_dir, out, data_dir, storage):
    """Write RUN_DIR's report: learning curves, confusion matrices, scatter plots, settings.

    For a study directory (mtbert tune): the optimization history, the parameters' importance and, with
    several objectives, the Pareto front.
    """
    setup_logging()
    from mtbert.commands.report import make_report
    from mtbert.tune.command import MARKER

    if (run_dir / MARKER).is_file():
        from mtbert.commands.study_report import make_study_report

        written = make_study_report(run_dir, out, storage)
        for note in written.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(f"wrote {written.path} ({len(written.images)} picture(s))")
        return

    written = make_report(run_dir, out, registry(), data_dir)
    for note in written.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {written.path} ({len(written.images)} picture(s))")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--task", help="The task to export with its head (default: the shared encoder alone).")
@click.option("--format", "fmt", type=click.Choice(["encoder", "transformers", "sentence-transformers", "onnx"]),
              default="encoder", show_default=True,
              help="encoder: transformers.AutoModel; transformers: a sequence classifier (pipeline, "
                   "CrossEncoder); sentence-transformers: a SentenceTransformer; onnx: model.onnx.")
@user_errors
def export(run_dir, out, task, fmt):
    """Write RUN_DIR's trained model to OUT in a format other tools load (with a model card)."""
    setup_logging()
    from mtbert.commands.export import export as export_run

    exported = export_run(run_dir, out, registry(), task=task, fmt=fmt)
    for note in exported.notes:
        click.echo(f"note: {note}")
    what = f"task {task}" if task else "the encoder"
    click.echo(f"exported {what} as {fmt} to {exported.path}; load it with {exported.load}")
