"""Open a finished run: its spec, the registry it needs, and the trained model.

The one way ``mtbert predict``, ``mtbert export``, ``mtbert report`` and
``mtbert.load`` read a run directory, so they agree on what a run is and
on their messages when it is not one.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from mtbert.base.errors import CheckpointError, MtbertError
from mtbert.plugin.registry import Registry
from mtbert.runs.rundir import RunDir
from mtbert.config.spec import Spec, load_spec


@attrs.frozen
class FinishedRun:
    run: RunDir
    spec: Spec
    registry: Registry
    model: torch.nn.Module | None  # None when opened without weights


def open_run(run_dir: str | Path, registry: Registry | None = None, device: str = "cpu",
             weights: bool = True) -> FinishedRun:
    """The run at ``run_dir``; with ``weights``, its best checkpoint rebuilt in eval mode on ``device``."""
    from mtbert.plugin.loading import default_registry

    run = RunDir(Path(run_dir))
    if not run.spec.is_file():
        raise MtbertError(f"{run.path} is not an mtbert run directory (no spec.toml)")
    registry = registry or default_registry()
    opened = FinishedRun(run, load_spec(run.spec, registry, env={}, check_files=False), registry, None)
    return with_model(opened, device) if weights else opened


def with_model(opened: FinishedRun, device: str = "cpu") -> FinishedRun:
    """``opened`` with its best checkpoint rebuilt in eval mode on ``device``."""
    from mtbert.model.build import build_model
    from mtbert.runs.checkpoint import WEIGHTS, find_checkpoint, load_weights

    run, spec, registry = opened.run, opened.spec, opened.registry
    if find_checkpoint(run.path) != run.checkpoint:
        raise CheckpointError(f"{run.path} has no checkpoint yet ({run.checkpoint / WEIGHTS}): "
                              "the run has not saved a model (let it reach an evaluation)")
    model = build_model(spec, registry, restore=run.checkpoint / "encoder")
    load_weights(model, run.checkpoint)
    return FinishedRun(run, spec, registry, model.to(device).eval())
