"""Where the loop is: one record, saved whole in the training state and restored whole."""

from __future__ import annotations

import attrs


@attrs.define
class Counters:
    step: int = 0  # optimizer updates so far, over all phases
    phase: int = 0  # index of the phase being trained; len(phases) once every phase is done
    epoch: int = 1  # epoch of that phase (from 1)
    index: int = 0  # position of the next step in the epoch's plan
    phase_start: int = 0  # `step` when the phase began (its budget counts from here)
    finished: bool = False  # the final evaluation and the test predictions are written

    def start_phase(self, phase: int) -> None:
        self.phase, self.epoch, self.index, self.phase_start = phase, 1, 0, self.step

    def state_dict(self) -> dict:
        return attrs.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for field in attrs.fields(type(self)):
            setattr(self, field.name, state[field.name])
