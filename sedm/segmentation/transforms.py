"""The colour transforms of a segmentation arm: stain normalisation and stain augmentation.

An arm of ``segmentation.arms`` may set

* ``stain_norm`` (absent, null, ``macenko``, ``reinhard``): an *input* transform. Its target is fitted
  once, at training, on the labelled training slides (:func:`fit_stain_norm`; not on the validation
  patients, who stand in for unseen ones), and written into the model directory's ``config.json``
  under :data:`META_KEY`. Training tiles, validation tiles and synthetic samples are normalised with
  it, and prediction rebuilds it from the model directory (:func:`stored_normaliser`): a slide is
  normalised to exactly the stain the model was trained on, never to one recomputed from other data.
* ``stain_aug`` (false, true = ``hed``, ``randstainna``): a *training* transform on each sampled
  patch, after normalisation; prediction never augments.

Both are applied per whole tile of the store's grid (:func:`read_window`): a pixel then has the same
normalised value whether it is read as a training tile or inside a prediction window.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sedm.errors import InputError
from sedm.stain.jitter import StainJitter
from sedm.stain.normalise import FIT_TILES, METHODS, StainNormaliser, fit_normaliser
from sedm.stain.randstainna import RandStainNA
from sedm.tiling.store import IMAGE_FILL, SlideStore

META_KEY = "stain_norm"
"""Key of the fitted normaliser in a model directory's ``config.json`` (absent or null: none)."""
AUG_META_KEY = "randstainna"
"""Key of the fitted RandStainNA distribution in ``config.json`` (a record: prediction does not read it)."""
AUG_METHODS = {False: None, True: "hed", "hed": "hed", "randstainna": "randstainna"}
"""``stain_aug`` value -> augmentation (None: none); ``true`` is the HED jitter it always meant."""

Transform = Callable[[np.ndarray], np.ndarray]
Augmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def norm_method(arm_cfg: Mapping[str, Any], arm: str = "<arm>") -> str | None:
    """The arm's stain normalisation (None: none); a value the schema would refuse is an InputError."""
    method = arm_cfg.get("stain_norm")
    if method is not None and method not in METHODS:
        raise InputError(None, f"segmentation.arms.{arm}.stain_norm", f"unknown stain normalisation {method!r}",
                         f"use one of null, {', '.join(METHODS)}")
    return method


def aug_method(arm_cfg: Mapping[str, Any], arm: str = "<arm>") -> str | None:
    """The arm's stain augmentation (None, ``hed`` or ``randstainna``)."""
    value = arm_cfg.get("stain_aug", False)
    if not isinstance(value, (bool, str)) or value not in AUG_METHODS:
        raise InputError(None, f"segmentation.arms.{arm}.stain_aug", f"unknown stain augmentation {value!r}",
                         "use one of false, true (= hed), hed, randstainna")
    return AUG_METHODS[value]


def fit_tiles(tiles: Any, seed: int) -> list[np.ndarray]:
    """Up to :data:`~sedm.stain.normalise.FIT_TILES` whole tiles of ``tiles`` (a RealTiles), a seeded
    draw, in index order: what targets and distributions are fitted on. Seeded, so a resumed run fits
    the same target."""
    n = len(tiles)
    pick = np.sort(np.random.default_rng(seed).choice(n, min(n, FIT_TILES), replace=False)) if n else []
    return [tiles.tile(int(i))[0] for i in pick]


def fit_stain_norm(method: str, tiles: Any, seed: int) -> StainNormaliser:
    """The normaliser ``method`` fitted on the labelled training tiles ``tiles`` (RealTiles, untransformed)."""
    return fit_normaliser(method, fit_tiles(tiles, seed), np.random.default_rng(seed))


def augmentation(arm_cfg: Mapping[str, Any], seg: Mapping[str, Any], tiles: Any, seed: int,
                 arm: str = "<arm>") -> Augmentation | None:
    """The arm's stain augmentation: HED jitter from ``segmentation.stain_aug``, or RandStainNA fitted on
    the training tiles as the model sees them (normalised, when the arm normalises)."""
    method = aug_method(arm_cfg, arm)
    if method == "hed":
        return StainJitter.from_config(seg["stain_aug"])
    if method == "randstainna":
        return RandStainNA.fit(fit_tiles(tiles, seed))
    return None


def stored_normaliser(meta: Mapping[str, Any], model_dir: str | Path) -> StainNormaliser | None:
    """The normaliser a model was trained with, from its ``config.json`` (None: the arm does not normalise)."""
    stored = meta.get(META_KEY)
    if stored is None:
        return None
    return StainNormaliser.from_meta(stored, Path(model_dir) / "config.json", META_KEY)


def read_window(store: SlideStore, y: int, x: int, h: int, w: int, transform: Transform | None = None) -> np.ndarray:
    """``store.read_image(y, x, h, w)`` with ``transform`` applied to each whole tile of the store's grid
    the window overlaps, each padded with glass at the slide edge first (as a training tile is read).

    Without a transform this is ``read_image`` itself. With one, a pixel's value does not depend on the
    window it is read in: the normaliser estimates a tile's stain from the whole tile, whether training
    reads that tile or prediction reads a block with a margin cutting through it.
    """
    if transform is None:
        return store.read_image(y, x, h, w)
    t = store.tile_size
    height, width = store.shape
    y1, x1 = min(height, y + h), min(width, x + w)
    gy0, gx0 = y // t * t, x // t * t
    gy1, gx1 = -(-y1 // t) * t, -(-x1 // t) * t
    grid = np.full((gy1 - gy0, gx1 - gx0, 3), IMAGE_FILL, np.uint8)
    part = store.read_image(gy0, gx0, gy1 - gy0, gx1 - gx0)
    grid[:part.shape[0], :part.shape[1]] = part
    for ty in range(0, grid.shape[0], t):
        for tx in range(0, grid.shape[1], t):
            grid[ty:ty + t, tx:tx + t] = transform(grid[ty:ty + t, tx:tx + t])
    return grid[y - gy0:y1 - gy0, x - gx0:x1 - gx0]


def stain_meta(normaliser: StainNormaliser | None, stain: Augmentation | None) -> dict[str, Any]:
    """What a model directory's ``config.json`` records of the arm's transforms: the normaliser's target
    (:data:`META_KEY`, read back by prediction) and RandStainNA's distribution (:data:`AUG_META_KEY`);
    nothing for arms without them, so their model directories stay as they were."""
    meta: dict[str, Any] = {}
    if normaliser is not None:
        meta[META_KEY] = normaliser.to_meta()
    if isinstance(stain, RandStainNA):
        meta[AUG_META_KEY] = stain.to_meta()
    return meta
