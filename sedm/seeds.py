"""Every way sedm derives random numbers from the configured seed, in one place.

Three kinds of stream, each for a reason:

- :func:`rng_for`: a generator keyed by the seed and *names* (slide ID, purpose, shard). Regenerating
  one slide or one shard alone (one Snakemake job) gives the same bytes as making all of them, and
  adding a slide does not change the others. Used by the demo cohort and by synthesis.
- :func:`index_rng` and :func:`sample_seed`: streams keyed by the seed and an integer (a training
  sample's index, an optimizer step), so a batch is the same however the work is split over loader
  workers, DDP ranks or interrupted runs.
- :func:`seed_everything`: the global Python / NumPy / torch generators, for what libraries draw
  from them (weight initialisation); their state is saved in checkpoints (:mod:`sedm.runtime.rng`).

Changing any of these changes results: demo slides, synthetic samples and trained weights.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``names`` (stable across runs and platforms)."""
    text = "\x1f".join([str(int(seed)), *names])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def index_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of item ``index`` (a training sample, an optimizer step) of a run seeded ``seed``."""
    return np.random.default_rng([seed, int(index)])


def sample_seed(seed: int, index: int) -> int:
    """A non-negative 63-bit seed for a torch generator of item ``index`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, index, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed the global Python, NumPy and torch generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
