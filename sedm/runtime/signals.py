"""Preemption: SIGTERM / SIGUSR1 become a request to save state and exit with :data:`EXIT_REQUEUE`."""

from __future__ import annotations

import logging
import signal
from typing import Any

log = logging.getLogger(__name__)

EXIT_REQUEUE = 75
"""Exit status after a signal-triggered checkpoint (EX_TEMPFAIL: "try again"), for requeueing."""

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)
"""What SLURM sends at preemption (SIGTERM) and, with ``--signal=B:USR1@N``, before the time limit."""


class StopSignals:
    """Context manager: SIGTERM / SIGUSR1 set :attr:`requested` instead of killing the process.

    The loop polls :attr:`requested` after each step, checkpoints and exits with EXIT_REQUEUE.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.requested: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: checkpointing and exiting with %d", signum, EXIT_REQUEUE)
        self.requested = signum

    def __enter__(self) -> "StopSignals":
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGTERM / SIGUSR1 to the main process.

    A scheduler signals the whole process group; torch's workers would die on SIGTERM and make the
    loader raise before the main process could write its checkpoint. Workers still exit when the main
    one does.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
