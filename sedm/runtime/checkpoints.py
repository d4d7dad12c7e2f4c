"""The checkpoint store both trainers use: rotating files in the run directory, newest first on resume.

``<run_dir>/checkpoints/step-<step:08d>-<fingerprint[:12]>.pt``; each holds what the trainer passes
(model, optimizer, scheduler, EMA, ...) plus step, fingerprint and every RNG state, written
atomically: a kill mid-write leaves the older checkpoints as they were. Only checkpoints of the run's
fingerprint (:mod:`sedm.runtime.fingerprint`) are resumed, so editing the config or re-tiling a slide
starts a fresh run instead of silently continuing another one. The run directory is not a Snakemake
output, so it survives failed or preempted jobs. Checkpoints hold only tensors and plain Python
values, so they load with ``weights_only=True``. A checkpoint that does not load (a node that died
mid-write before the rename was durable, a full disk, a damaged file system) is set aside as
``*.pt.unreadable`` with a warning, and the one before it is resumed (the schema's default ``keep``
of 2 keeps one before it).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sedm.atomic import atomic_path
from sedm.runtime.rng import rng_state

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
_NAME = re.compile(r"step-(\d+)-([0-9a-f]{12})\.pt$")


def list_checkpoints(run_dir: str | Path, fp: str | None = None) -> list[tuple[int, Path]]:
    """(step, path) of a run directory's checkpoints, oldest first; only those of fingerprint ``fp`` if given."""
    folder = Path(run_dir) / FOLDER
    found = []
    for path in folder.glob("step-*.pt") if folder.is_dir() else []:
        m = _NAME.search(path.name)
        if m and (fp is None or m.group(2) == fp[:12]):
            found.append((int(m.group(1)), path))
    return sorted(found)


class CheckpointStore:
    """The checkpoints of one run (directory ``run_dir``, fingerprint ``fp``); ``keep`` newest are kept."""

    def __init__(self, run_dir: str | Path, fp: str, keep: int = 2) -> None:
        self.run_dir, self.fp, self.keep = Path(run_dir), fp, max(1, int(keep))

    def path(self, step: int) -> Path:
        return self.run_dir / FOLDER / f"step-{step:08d}-{self.fp[:12]}.pt"

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write the checkpoint of ``step`` (plus all RNG states), then delete this run's older ones
        beyond the newest ``keep``."""
        path = self.path(step)
        with atomic_path(path) as tmp:
            torch.save({**state, "step": step, "fingerprint": self.fp, "rng": rng_state()}, tmp)
        for _step, old in list_checkpoints(self.run_dir, self.fp)[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def latest(self) -> dict[str, Any] | None:
        """The newest checkpoint of this run, loaded; None if there is none.

        Candidates are tried newest first, so a checkpoint that cannot be used leaves the one before.
        RNG states are restored by the caller (:func:`sedm.runtime.rng.set_rng_state`) once everything
        is built.
        """
        mine = list_checkpoints(self.run_dir, self.fp)
        others = len(list_checkpoints(self.run_dir)) - len(mine)
        if others:
            log.warning("ignoring %d checkpoint(s) in %s made for another config or other inputs", others,
                        self.run_dir)
        for _step, path in reversed(mine):
            state = self._load(path)
            if state is not None:
                log.info("resuming from %s", path)
                return state
        return None

    def _load(self, path: Path) -> dict[str, Any] | None:
        """One candidate, or None when it does not load (set aside) or was made for another fingerprint
        (a short-hash collision)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
            aside = path.with_name(path.name + ".unreadable")
            log.warning("checkpoint %s does not load (%s: %s); moved to %s, trying the one before", path,
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", aside.name)
            os.replace(path, aside)
            return None
        if state.get("fingerprint") != self.fp:
            log.warning("%s was made for another config or other inputs; skipping it", path)
            return None
        return state


def find_resumable(run_dir: str | Path, fp: str) -> dict[str, Any] | None:
    """The newest checkpoint of fingerprint ``fp`` in ``run_dir``, loaded; None if there is none."""
    return CheckpointStore(run_dir, fp).latest()
