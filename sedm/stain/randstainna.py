"""RandStainNA (Shen et al., MICCAI 2022): stain augmentation bounded by the stains the labelled
slides actually have.

Each training tile gets a *virtual template*: a target LAB mean and standard deviation per channel,
drawn from normal distributions fitted to the labelled training tiles' own per-tile means and stds
(:meth:`RandStainNA.fit`); the tile is then Reinhard-normalised to it. Plain jitter (``stain_aug:
hed``) moves colours by fixed ranges whatever the cohort; RandStainNA's ranges are the cohort's.

Written here, once, because no maintained package provides it: the authors' code
(github.com/yiqings/RandStainNA) is not on PyPI, reads its statistics from a YAML file made by a
separate script and converts colours with OpenCV. This module follows its LAB variant with
``distribution: normal``, ``std_hyper: 0`` and ``probability: 1`` (every tile is restained), and takes
the LAB conversion and the Reinhard transfer from torchstain (:mod:`sedm.stain.normalise`), so the
``reinhard`` normalisation arm and this augmentation differ only in where the target comes from:
the distribution's centre there, a draw from it here. Two departures from the reference code: a drawn
std is clipped up to :data:`~sedm.stain.normalise.LAB_STD_FLOOR` (the reference passes a negative
draw on, which mirrors the channel), and a tile with a flat channel is left unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sedm.errors import InputError
from sedm.stain.normalise import LAB_STD_FLOOR, lab_moments, reinhard_transfer

LAB_CHANNELS = ("L", "A", "B")


@dataclass(frozen=True)
class RandStainNA:
    """The fitted distribution: per LAB channel, mean and std of the tiles' means (``mean_mean``,
    ``mean_std``) and of the tiles' stds (``std_mean``, ``std_std``); each (3,), L in 0..100."""

    mean_mean: tuple[float, float, float]
    mean_std: tuple[float, float, float]
    std_mean: tuple[float, float, float]
    std_std: tuple[float, float, float]

    @classmethod
    def fit(cls, tiles: Sequence[np.ndarray]) -> "RandStainNA":
        """The distribution of the LAB moments of ``tiles`` (uint8 RGB); tiles with a flat channel
        (glass) are left out, as they would be left unchanged."""
        moments = [m for m in (lab_moments(t) for t in tiles) if (m[1] >= LAB_STD_FLOOR).all()]
        if not moments:
            raise InputError(None, "stain_aug", "no labelled tile with colour to fit RandStainNA's distribution on",
                             "check the labelled slides' tile tables list tissue tiles, or use stain_aug: hed")
        means, stds = (np.stack(v) for v in zip(*moments))
        return cls(*(tuple(float(x) for x in a) for a in (means.mean(0), means.std(0), stds.mean(0), stds.std(0))))

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One virtual template: (LAB mean, LAB std), each (3,)."""
        mean = rng.normal(self.mean_mean, self.mean_std)
        std = np.maximum(rng.normal(self.std_mean, self.std_std), LAB_STD_FLOOR)
        return mean, std

    @staticmethod
    def apply(image: np.ndarray, template: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """``image`` Reinhard-normalised to ``template`` (:meth:`draw`)."""
        return reinhard_transfer(image, *template)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.draw(rng))

    def to_meta(self) -> dict[str, Any]:
        """The distribution by channel, in the layout of the reference code's YAML."""
        return {c: {"avg": {"mean": self.mean_mean[i], "std": self.mean_std[i]},
                    "std": {"mean": self.std_mean[i], "std": self.std_std[i]}} for i, c in enumerate(LAB_CHANNELS)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "RandStainNA":
        get = lambda part, stat: tuple(float(meta[c][part][stat]) for c in LAB_CHANNELS)  # noqa: E731
        return cls(get("avg", "mean"), get("avg", "std"), get("std", "mean"), get("std", "std"))
