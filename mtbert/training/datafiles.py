"""The data files a run trained on, in its training state, so ``--resume`` can say what changed.

A resumed run reads its files again. If one was regenerated or edited in the
meantime, the run continues on the file as it is now: its epochs, order and
scores no longer match a run that was never stopped. That is allowed (a
corrected file is a reason to go on), but never silent.
"""

from __future__ import annotations

import logging

log = logging.getLogger("mtbert")


class DataFiles:
    """``{"<task>/<split>": fingerprint}`` of every file read, as a stateful part of the run."""

    def __init__(self, tasks: dict):
        self.splits = {f"{task}/{name}": split for task, parts in tasks.items() for name, split in parts.splits.items()}
        self.changed: list[str] = []  # what load_state_dict found different, for tests and messages

    def state_dict(self) -> dict:
        return {name: split.fingerprint for name, split in self.splits.items()}

    def load_state_dict(self, saved: dict) -> None:
        self.changed = [name for name, split in self.splits.items()
                        if saved.get(name) is not None and split.fingerprint is not None
                        and saved[name] != split.fingerprint]
        for name in self.changed:
            log.warning("%s changed since the run's state was saved (%s file %s): the resumed run goes on with "
                        "the file as it is now, so it will not match a run that was never stopped",
                        self.splits[name].path, name, self.splits[name].path.name)
