"""Stain statistics in HED optical-density space, and how closely synthetic images match a style.

"Does the synthetic data look like slide S?" is asked about stain, so the numbers are taken in
the haematoxylin-eosin-DAB space of Ruifrok & Johnston (``skimage.color.rgb2hed``): per channel
mean and standard deviation over *tissue* pixels (min over RGB < 230, the paper's tissue rule, so
glass in a patch does not dilute the stain).

Style fidelity (documented in README, shown in the report):

* ``hed_distance`` = Euclidean distance between the 6-vectors (mean H, E, D, std H, E, D) of the
  generated images and of the real style patches of the slide; 0 = identical stain statistics.
* ``hed_distance_source`` = the same distance for the real *labelled* images under the layouts,
  i.e. the stain gap synthesis is meant to close.
* ``style_fidelity`` = 1 - hed_distance / hed_distance_source: 1 = the generated stain matches the
  target slide, 0 = no closer than the labelled slides already were, negative = further away.
  Undefined (null) when the labelled slides already match the target (source distance ~ 0).

Statistics are accumulated as sums, so shards contribute independently and a resumed job adds
exactly the numbers an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.color import rgb2hed

TISSUE_MAX = 230
"""A pixel is tissue when its darkest channel is below this (as the paper's tissue mask)."""
CHANNELS = ("H", "E", "D")
MIN_SOURCE_DISTANCE = 1e-6


@dataclass
class HedAccumulator:
    """Running sums of HED optical densities over tissue pixels."""

    total: np.ndarray = field(default_factory=lambda: np.zeros(3))
    total_sq: np.ndarray = field(default_factory=lambda: np.zeros(3))
    count: int = 0

    def add(self, images: np.ndarray) -> None:
        """Add (..., H, W, 3) uint8 RGB images."""
        rgb = images.reshape(-1, images.shape[-3], images.shape[-2], 3)
        for img in rgb:
            tissue = img.min(axis=-1) < TISSUE_MAX
            if not tissue.any():
                continue
            hed = rgb2hed(img)[tissue].astype(np.float64)
            self.total += hed.sum(axis=0)
            self.total_sq += (hed**2).sum(axis=0)
            self.count += int(tissue.sum())

    def merge(self, other: "HedAccumulator") -> None:
        self.total += other.total
        self.total_sq += other.total_sq
        self.count += other.count

    def to_array(self) -> np.ndarray:
        """(7,) float64: sums, sums of squares, count (for storing inside a shard)."""
        return np.concatenate([self.total, self.total_sq, [self.count]])

    @classmethod
    def from_array(cls, a: np.ndarray) -> "HedAccumulator":
        return cls(np.array(a[:3], dtype=np.float64), np.array(a[3:6], dtype=np.float64), int(a[6]))

    def summary(self) -> dict:
        """{"mean": [H, E, D], "std": [H, E, D], "pixels": n}; means null without tissue pixels."""
        if self.count == 0:
            return {"mean": None, "std": None, "pixels": 0}
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.total_sq / self.count - mean**2, 0.0))
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "pixels": self.count}


def _vector(summary: dict) -> np.ndarray | None:
    if summary["mean"] is None:
        return None
    return np.array(summary["mean"] + summary["std"], dtype=np.float64)


def style_fidelity(generated: dict, style: dict, source: dict) -> dict:
    """The fidelity numbers of the module docstring from three :meth:`HedAccumulator.summary` dicts."""
    g, s, r = _vector(generated), _vector(style), _vector(source)
    dist = None if g is None or s is None else float(np.linalg.norm(g - s))
    dist_src = None if r is None or s is None else float(np.linalg.norm(r - s))
    fid = None
    if dist is not None and dist_src is not None and dist_src > MIN_SOURCE_DISTANCE:
        fid = 1.0 - dist / dist_src
    return {"hed_distance": dist, "hed_distance_source": dist_src, "style_fidelity": fid}


def synthesis_stats(generated: HedAccumulator, style: HedAccumulator, source: HedAccumulator) -> dict:
    """Everything written to ``attrs["sedm"]["stats"]`` and ``<slide>.stats.json``."""
    g, s, r = generated.summary(), style.summary(), source.summary()
    return {"channels": list(CHANNELS), "space": "HED optical density (skimage.color.rgb2hed), tissue pixels",
            "generated": g, "style": s, "source": r, **style_fidelity(g, s, r)}
