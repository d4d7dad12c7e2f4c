"""Stain normalisation of the ``stain_norm`` arms: every image the model sees, in training and at
inference, is moved to one target stain fitted on the labelled training slides.

The transforms come from torchstain (EIDOSlab, MIT; ``torchstain.numpy``): Macenko et al. (ISBI 2009)
and Reinhard et al. (2001), the two normalisers the domain-generalisation benchmarks of computational
pathology compare against. torchstain was chosen over torch-staintools (which needs torchvision and
kornia: torchvision replaces the CPU build of torch, see the pitfalls) and StainTools (unmaintained
since 2019, needs spams); its numpy backend needs nothing but numpy and imports no torch, so a data
loader worker or a prediction job pays nothing for it.

What sedm adds around the library, and why:

* **The target is fitted once on many tiles, not on one reference image** (:func:`fit_normaliser`):
  Macenko's stain vectors and 99th-percentile concentrations on the pooled pixels of up to
  :data:`FIT_TILES` labelled training tiles; Reinhard's LAB mean and std as the mean over those tiles
  of each tile's own (the centre of the distribution RandStainNA draws from, so ``reinhard`` is
  RandStainNA without spread, :mod:`sedm.stain.randstainna`). A single hand-picked reference tile
  would make the arm depend on the pick.
* **The target is data** (:meth:`StainNormaliser.to_meta` / :meth:`StainNormaliser.from_meta`): it is
  written into the model directory and prediction rebuilds the normaliser from there, so every slide
  is normalised to exactly the stain the model was trained on.
* **Tiles whose stain cannot be estimated are left as they are** (glass, a flat colour, one dye):
  Macenko needs :data:`MIN_STAIN_PIXELS` stained pixels spanning a plane (:data:`MIN_PLANE_RATIO`);
  Reinhard needs a spread in every LAB channel. The library would return garbage there (a flat tile
  remixed into both dyes, a division by zero cast to uint8), not an error.

The transform is applied per image: one tile of a store (prediction reads whole tiles of the slide's
grid, :func:`sedm.segmentation.transforms.read_window`), one synthetic sample. Stain drifts across a
slide, and a per-tile estimate follows it; the price is Macenko's known weakness on tiles that hold
one dye only, which are left unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer
from torchstain.numpy.utils import get_mean_std, lab2rgb, lab_merge, lab_split, rgb2lab, standardize

from sedm.errors import InputError

METHODS = ("macenko", "reinhard")
FIT_TILES = 64
"""Labelled training tiles (a seeded draw) the target stain, and RandStainNA's distribution, are fitted on."""
MACENKO_FIT_PIXELS = 2**20
"""Pooled pixels Macenko's target is fitted on at most (a seeded subset): the eigen-decomposition and
percentiles need thousands, and 64 tiles of 256² px in float64 would take ~0.3 GB."""
MACENKO_IO, MACENKO_ALPHA, MACENKO_BETA = 240, 1, 0.15
"""torchstain's (and Macenko's reference code's) transmitted light, angle percentile and optical-density
threshold of a stained pixel; passed explicitly so a library default change cannot move a stored target."""
MIN_STAIN_PIXELS = 256
"""Pixels above :data:`MACENKO_BETA` in every channel a tile needs for a Macenko estimate (a 16 x 16
patch's worth); fewer and the covariance of three channels is not worth its eigenvectors."""
MIN_PLANE_RATIO = 0.005
"""Least ratio of the second to the first eigenvalue of the stained pixels' optical-density covariance
for a Macenko estimate. Macenko finds the two dyes as the extreme directions in the plane of the two
largest eigenvectors; a tile of one dye (or one colour) has no such plane and the library then remixes
it into both target dyes. Demo cohort tiles (6 slides, 40 tiles each) lie at 0.025-0.18; one dye with
sensor noise at 0.0001-0.003."""
LAB_STD_FLOOR = 0.01
"""LAB standard deviation (L in 0..100) below which a channel is flat: Reinhard cannot rescale it (and a
drawn RandStainNA target std is clipped up to it)."""
_NUMERIC = {"divide": "raise", "invalid": "raise", "over": "ignore", "under": "ignore"}
"""Division by zero and NaN inside the library mean "no estimate" (a degenerate tile): raise, then keep
the tile. exp overflow is clipped to 255 by the library itself."""


def check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")


# -------------------------------------------------------------------------------------- Reinhard
def _lab_channels(image: np.ndarray) -> list[np.ndarray]:
    check_image(image)
    return list(lab_split(rgb2lab(image.astype(np.float32) / 255)))


def _moments(channels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(means, stds) in the library's own precision (float32), so the transfer rounds as it does."""
    stats = np.array([get_mean_std(c) for c in channels])
    return stats[:, 0], stats[:, 1]


def lab_moments(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (3,) float64 over all pixels of one uint8 RGB image in CIELAB (L in 0..100):
    the statistics torchstain's Reinhard normaliser matches, computed by its own functions."""
    mean, std = _moments(_lab_channels(image))
    return mean.astype(np.float64), std.astype(np.float64)


def reinhard_transfer(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``image`` with each LAB channel standardised and moved to ``mean`` / ``std``; unchanged when a
    channel of the image is flat.

    Byte for byte torchstain's ``NumpyReinhardNormalizer.normalize`` with that target (tested), made of
    the library's own functions but converting to LAB once instead of twice: RandStainNA runs this on
    every training sample, and the colour conversions are its whole cost."""
    channels = _lab_channels(image)
    source_mean, source_std = _moments(channels)
    if (source_std < LAB_STD_FLOOR).any():
        return image
    target_mean, target_std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    out = [standardize(c, m, s) * t_s + t_m
           for c, m, s, t_m, t_s in zip(channels, source_mean, source_std, target_mean, target_std)]
    return (lab2rgb(lab_merge(*out)) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------- Macenko
def macenko_estimable(pixels: np.ndarray) -> bool:
    """Whether Macenko can find two dyes in (..., 3) uint8 pixels: at least :data:`MIN_STAIN_PIXELS`
    that torchstain counts as stained (OD >= beta in every channel, the pixels its stain vectors come
    from), spanning a plane (:data:`MIN_PLANE_RATIO`)."""
    od = -np.log((pixels.reshape(-1, 3).astype(np.float64) + 1) / MACENKO_IO)
    od = od[(od >= MACENKO_BETA).all(axis=1)]
    if len(od) < MIN_STAIN_PIXELS:
        return False
    low, mid, top = np.linalg.eigvalsh(np.cov(od.T))
    return bool(top > 0 and mid >= MIN_PLANE_RATIO * top)


def _macenko(stain_matrix: np.ndarray, max_concentrations: np.ndarray) -> NumpyMacenkoNormalizer:
    normaliser = NumpyMacenkoNormalizer()
    normaliser.HERef, normaliser.maxCRef = stain_matrix, max_concentrations
    return normaliser


def macenko_transfer(image: np.ndarray, stain_matrix: np.ndarray, max_concentrations: np.ndarray) -> np.ndarray:
    """``image`` unmixed with its own Macenko stain vectors and remixed with ``stain_matrix`` (3 x 2,
    optical density per unit of H and E), its concentrations scaled so that their 99th percentiles
    become ``max_concentrations``; unchanged when the image's stain cannot be estimated."""
    if not macenko_estimable(image):
        return image
    try:
        with np.errstate(**_NUMERIC):
            out, _, _ = _macenko(stain_matrix, max_concentrations).normalize(
                image, Io=MACENKO_IO, alpha=MACENKO_ALPHA, beta=MACENKO_BETA, stains=False)
    except (FloatingPointError, np.linalg.LinAlgError):
        return image
    return out


# ------------------------------------------------------------------------------------ normaliser
@dataclass(frozen=True)
class StainNormaliser:
    """One fitted normaliser: ``method`` (:data:`METHODS`) and its target, as plain lists.

    macenko: ``stain_matrix`` (3 rows RGB x 2 columns H, E, optical density) and
    ``max_concentrations`` (2,); reinhard: ``lab_mean`` and ``lab_std`` (3,), CIELAB, L in 0..100.
    """

    method: str
    target: Mapping[str, Any]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``image`` (H, W, 3) uint8 RGB in the target stain (uint8, same shape)."""
        check_image(image)
        if self.method == "macenko":
            return macenko_transfer(image, np.asarray(self.target["stain_matrix"], np.float64),
                                    np.asarray(self.target["max_concentrations"], np.float64))
        return reinhard_transfer(image, self.target["lab_mean"], self.target["lab_std"])

    def to_meta(self) -> dict[str, Any]:
        return {"method": self.method, **{k: v for k, v in self.target.items()}}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], file: str | Path | None = None,
                  field: str = "stain_norm") -> "StainNormaliser":
        """The normaliser stored by :meth:`to_meta`; a stored target of the wrong form names the file."""
        fix = "retrain the arm: its model directory must hold the target stain its training fitted"
        method = meta.get("method") if isinstance(meta, Mapping) else None
        if method not in METHODS:
            raise InputError(file, f"{field}.method", f"unknown stain normalisation {method!r}",
                             f"{fix} (one of {', '.join(METHODS)})")
        shapes = {"macenko": {"stain_matrix": (3, 2), "max_concentrations": (2,)},
                  "reinhard": {"lab_mean": (3,), "lab_std": (3,)}}[method]
        target = {}
        for key, shape in shapes.items():
            try:
                value = np.asarray(meta[key], np.float64)
            except (KeyError, TypeError, ValueError):
                raise InputError(file, f"{field}.{key}", "missing or not numbers", fix) from None
            if value.shape != shape or not np.isfinite(value).all():
                raise InputError(file, f"{field}.{key}", f"expected {shape} finite numbers, got {value.shape}", fix)
            target[key] = value.tolist()
        positive = "max_concentrations" if method == "macenko" else "lab_std"
        if (np.asarray(target[positive]) <= 0).any():
            raise InputError(file, f"{field}.{positive}", "must be positive", fix)
        return cls(method, target)


def fit_normaliser(method: str, tiles: Sequence[np.ndarray], rng: np.random.Generator) -> StainNormaliser:
    """The normaliser of ``method`` fitted on ``tiles`` (uint8 RGB images: the labelled training tiles).

    Raises InputError when the tiles hold no estimable stain (no tissue at all).
    """
    if method not in METHODS:
        raise InputError(None, "stain_norm", f"unknown stain normalisation {method!r}", f"use one of {METHODS}")
    for tile in tiles:
        check_image(tile)
    fix = "check the labelled slides' tile tables list tissue tiles, or use another arm"
    if method == "reinhard":
        moments = [lab_moments(t) for t in tiles]
        moments = [(m, s) for m, s in moments if (s >= LAB_STD_FLOOR).all()]
        if not moments:
            raise InputError(None, "stain_norm", "no labelled tile with colour to fit Reinhard's target on", fix)
        means, stds = (np.stack(v) for v in zip(*moments))
        return StainNormaliser(method, {"lab_mean": means.mean(0).tolist(), "lab_std": stds.mean(0).tolist()})
    pixels = np.concatenate([t.reshape(-1, 3) for t in tiles]) if len(tiles) else np.empty((0, 3), np.uint8)
    if len(pixels) > MACENKO_FIT_PIXELS:
        pixels = pixels[np.sort(rng.choice(len(pixels), MACENKO_FIT_PIXELS, replace=False))]
    if not macenko_estimable(pixels):
        raise InputError(None, "stain_norm", "the labelled tiles hold too few stained pixels of two dyes to fit "
                         "Macenko's stain vectors on", fix)
    normaliser = NumpyMacenkoNormalizer()
    try:
        with np.errstate(**_NUMERIC):
            normaliser.fit(pixels[:, None], Io=MACENKO_IO, alpha=MACENKO_ALPHA, beta=MACENKO_BETA)
    except (FloatingPointError, np.linalg.LinAlgError) as exc:
        raise InputError(None, "stain_norm", f"Macenko's stain vectors cannot be fitted on the labelled tiles "
                         f"({exc})", fix) from None
    return StainNormaliser.from_meta({"method": method, "stain_matrix": normaliser.HERef,
                                      "max_concentrations": normaliser.maxCRef})
