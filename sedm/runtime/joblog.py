"""A job's log file, kept for every attempt that did not succeed.

Snakemake deletes a rule's log before each attempt, so a job that is preempted (checkpoint, exit 75)
and retried would lose the log saying where the attempt stopped. Each attempt therefore writes its log
under a name Snakemake does not know, ``<log>.attempt-<n>`` (n = the first free number), with the rule's
``<log>`` a hard link to the same file: when Snakemake deletes ``<log>`` for the next attempt, the
attempt's log stays. An attempt that succeeds removes its ``.attempt-<n>`` name again, as ``<log>``
holds the same text; one that fails or is killed leaves it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


def _open_new_attempt(path: Path) -> tuple[int, Path]:
    n = 1
    while True:
        attempt = path.with_name(f"{path.name}.attempt-{n}")
        try:
            return os.open(attempt, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644), attempt
        except FileExistsError:
            n += 1


def log_to(path: str | Path) -> Path | None:
    """Send this process's standard error to ``path`` and to this attempt's ``<path>.attempt-<n>`` (the
    same file); returns the attempt's name, or None where the file system has no hard links (then only
    ``path`` is written). The file descriptor itself is redirected, so the processes this one starts
    (torchrun's workers, data loaders) write there too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, attempt = _open_new_attempt(path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    try:
        os.link(attempt, path)
    except OSError:
        os.close(fd)
        os.unlink(attempt)
        fd, attempt = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644), None
    sys.stderr.flush()
    os.dup2(fd, sys.stderr.fileno())
    os.close(fd)
    return attempt


def succeeded(attempt: Path | None) -> None:
    """The attempt succeeded: its log stays as the rule's log only."""
    if attempt is not None:
        attempt.unlink(missing_ok=True)
