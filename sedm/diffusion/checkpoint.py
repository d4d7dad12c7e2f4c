"""Where diffusion checkpoints live and which one a run may resume.

``<run_dir>/checkpoints/step-<step>-<fingerprint[:12]>.pt``; each holds model, EMA, optimizer, LR
scheduler, step and RNG states (written atomically by :func:`sedm.training.save_checkpoint`). The
fingerprint covers the diffusion config, classes, seed and the input stores (names, metadata, tile
tables): ``--resume auto`` only picks a checkpoint whose fingerprint matches, so editing the config or
re-tiling a slide starts a fresh run instead of silently continuing another one. The run directory is
not a Snakemake output, so it survives failed or preempted jobs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sedm.config import RUNTIME_KEYS
from sedm.tiling.table import tile_table_path
from sedm.training import fingerprint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

_NAME = re.compile(r"step-(\d+)-([0-9a-f]{12})\.pt$")


def run_fingerprint(config: Mapping[str, Any], stores: Sequence[str | Path],
                    unlabelled: Sequence[str | Path] = ()) -> str:
    """Hash of everything that determines the trained weights."""
    section = {k: v for k, v in config["diffusion"].items() if k not in RUNTIME_KEYS}
    semantic = {"diffusion": section, "classes": config["classes"], "seed": config.get("seed", 0),
                "labelled": [Path(s).name for s in stores], "unlabelled": [Path(s).name for s in unlabelled]}
    files = []
    for store in [*stores, *unlabelled]:
        files += [Path(store) / "zarr.json", tile_table_path(store)]
    return fingerprint(semantic, files)


def checkpoint_path(run_dir: str | Path, step: int, fp: str) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}-{fp[:12]}.pt"


def list_checkpoints(run_dir: str | Path, fp: str | None = None) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, oldest first; only those of fingerprint ``fp`` if given."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    for path in folder.glob("step-*.pt") if folder.is_dir() else []:
        m = _NAME.search(path.name)
        if m and (fp is None or m.group(2) == fp[:12]):
            found.append((int(m.group(1)), path))
    return sorted(found)


def find_resumable(run_dir: str | Path, fp: str) -> dict[str, Any] | None:
    """The newest checkpoint made for fingerprint ``fp``, loaded; None if there is none."""
    mine = list_checkpoints(run_dir, fp)
    others = len(list_checkpoints(run_dir)) - len(mine)
    if others:
        log.warning("ignoring %d checkpoint(s) in %s made for another config or other stores", others, run_dir)
    for _step, path in reversed(mine):
        state = load_checkpoint(path, fp)
        if state is not None:
            log.info("resuming from %s", path)
            return state
    return None


def write_checkpoint(run_dir: str | Path, step: int, fp: str, state: Mapping[str, Any], keep: int = 2) -> Path:
    """Write the checkpoint of ``step``, then delete this run's older ones beyond the newest ``keep``."""
    path = checkpoint_path(run_dir, step, fp)
    save_checkpoint(path, {**state, "step": step, "fingerprint": fp})
    for _step, old in list_checkpoints(run_dir, fp)[:-keep]:
        old.unlink(missing_ok=True)
    return path
