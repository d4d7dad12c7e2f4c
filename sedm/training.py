"""Pieces every sedm training loop shares: checkpoints that survive preemption, exact resume, schedules.

A cluster job can be killed at any step (SLURM sends SIGTERM, or SIGUSR1 shortly before the time
limit). The loops therefore checkpoint atomically, store every RNG state, and on a signal write one
last checkpoint and exit with :data:`EXIT_REQUEUE` so the scheduler reruns the job, which resumes
where it stopped. A checkpoint carries a fingerprint of the config and the inputs; one made for
other settings or other data is never resumed (a silent mix of two runs is worse than a restart).

Checkpoints hold only tensors and plain Python values, so they load with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import random
import signal
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sedm.atomic import atomic_path

log = logging.getLogger(__name__)

EXIT_REQUEUE = 75
"""Exit status after a signal-triggered checkpoint (EX_TEMPFAIL: "try again"), for requeueing."""

CHECKPOINT_NAME = "checkpoint.pt"


# ----------------------------------------------------------------------------------------- devices
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); a no-op on CPU, where bf16 is slow."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------ RNG handling
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors / plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    npst = state["numpy"]
    np.random.set_state({"bit_generator": npst["bit_generator"],
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(value: Any) -> Any:
    """random.setstate wants tuples; a round trip through some serialisers gives lists."""
    if isinstance(value, list | tuple):
        return tuple(_tuplify(v) for v in value)
    return value


# ------------------------------------------------------------------------------------- fingerprint
def _hash_path(h: "hashlib._Hash", path: Path) -> None:
    """Content of small metadata files, size of bulk chunk files: cheap, and changes when data does."""
    if path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = sub.relative_to(path).as_posix()
            h.update(rel.encode())
            if sub.name.endswith(".json") or sub.suffix in (".parquet", ".tsv", ".csv"):
                h.update(sub.read_bytes())
            else:
                h.update(str(sub.stat().st_size).encode())
    elif path.is_file():
        h.update(path.read_bytes() if path.stat().st_size < 2**26 else str(path.stat().st_size).encode())
    else:
        h.update(b"<missing>")


def fingerprint(config: Mapping[str, Any], inputs: Iterable[str | Path] = ()) -> str:
    """Hash of a config mapping and of input files / stores (names, metadata, chunk sizes)."""
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for path in inputs:
        path = Path(path)
        h.update(b"\0" + path.name.encode())
        _hash_path(h, path)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` (plus all RNG states) atomically: a kill mid-write leaves the old checkpoint."""
    with atomic_path(path) as tmp:
        torch.save({**state, "rng": rng_state()}, tmp)


def load_checkpoint(path: str | Path, fingerprint_: str | None = None) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when absent or made for another fingerprint (logged).

    RNG states are restored by the caller with :func:`set_rng_state` once everything is built.
    """
    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if fingerprint_ is not None and state.get("fingerprint") != fingerprint_:
        log.warning("%s was made for another config or other inputs; starting from scratch", path)
        return None
    return state


class StopSignals:
    """Context manager: SIGTERM / SIGUSR1 set :attr:`requested` instead of killing the process.

    The loop polls :attr:`requested` after each step, checkpoints and exits with EXIT_REQUEUE.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

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

    A scheduler signals the whole process group; a worker killed by it would make the loader raise
    before the main process could write its checkpoint.
    """
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# ------------------------------------------------------------------------------------ optimisation
def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base LR, then cosine decay to ``min_ratio`` x base at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy a (CPU-loaded) checkpoint into the shadow, which stays on the model's device."""
        for k, v in state.items():
            self.shadow[k].copy_(v)


@contextlib.contextmanager
def swapped_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
    """Temporarily load ``weights`` (e.g. EMA) into ``model``; None leaves the model as is."""
    if weights is None:
        yield
        return
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    try:
        yield
    finally:
        model.load_state_dict(saved)


# ------------------------------------------------------------------------------------------- logs
class CsvLog:
    """Append-only CSV training log that survives resume: rows after the resumed step are dropped."""

    def __init__(self, path: str | Path, columns: list[str], resume_step: int = 0) -> None:
        self.path = Path(path)
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, str]] = []
        if resume_step > 0 and self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r.get("step", 0)) <= resume_step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.columns, extrasaction="ignore").writerow(
                {k: ("" if v is None else v) for k, v in row.items()})
