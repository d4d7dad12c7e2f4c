"""Named random streams for the demo cohort.

Every random quantity is drawn from a generator keyed by the cohort seed and *names* (slide ID,
patient ID, role, purpose), never from a shared stream, so regenerating one slide alone (one
Snakemake job) gives the same bytes as generating the whole cohort, and adding a patient does not
change the others.
"""

from __future__ import annotations

import hashlib

import numpy as np


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``names`` (stable across runs and platforms)."""
    text = "\x1f".join([str(int(seed)), *names])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))
