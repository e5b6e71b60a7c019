"""SIGTERM as a request to stop cleanly at the next step boundary.

Schedulers (Slurm, Kubernetes) and preemptible machines send SIGTERM and
wait a grace period before SIGKILL. The handler only sets a flag; the loop
checks it between two optimizer steps, saves a resumable state there and
stops with exit status 143, so ``mtbert run SPEC --resume RUN`` continues
exactly as after any saved state. SIGINT (Ctrl-C) stays immediate.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class StopRequest:
    def __init__(self) -> None:
        self.signal: str | None = None  # the name of the signal received, once one was

    def __bool__(self) -> bool:
        return self.signal is not None

    def request(self, reason: str) -> None:
        """Stop at the next step boundary as after SIGTERM, for ``reason`` (a search pruning the run)."""
        self.signal = reason

    @contextlib.contextmanager
    def on_sigterm(self):
        """While inside, SIGTERM sets the flag instead of killing the process (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            self.signal = signal.Signals(signum).name

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
