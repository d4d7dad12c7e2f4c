"""Label layouts for synthesis: class-balanced windows of the labelled slides, augmented.

A synthetic data set is only as useful as its layouts are varied and balanced: cutting windows
uniformly from the labelled slides would mostly repeat the dominant class. So each layout first
picks a *target class* by configured weights, then a tile weighted by that class's pixel
fraction, then a random window in the tile; flips, quarter turns and an optional affine warp
(nearest-neighbour, so label values stay valid) multiply the few annotated slides.

Every layout carries its provenance (labelled slide, window top-left, target class and the
augmentation parameters), so each synthetic image can be traced to the annotation it came from.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from sedm.config import validate_section
from sedm.errors import InputError
from sedm.labels import UNANNOTATED
from sedm.synthesis.windows import read_padded, window_in_tile
from sedm.tiling.slides import same_mpp
from sedm.tiling.store import SlideStore
from sedm.tiling.table import fraction_columns, tile_table_path

log = logging.getLogger(__name__)

UNANNOTATED_KEY = "unannotated"
"""Name of label 0 in ``synthesis.class_weights`` (the column ``frac_unannotated``)."""


@dataclass(frozen=True)
class Augmentation:
    """Parameters applied to one layout, in this order: affine warp, quarter turns, flips."""

    affine: bool = False
    scale: float = 1.0
    rotation_deg: float = 0.0
    shear_deg: float = 0.0
    translate_y: float = 0.0
    """Shift of the content, pixels (positive = down)."""
    translate_x: float = 0.0
    rot90: int = 0
    """Counter-clockwise quarter turns (``np.rot90``)."""
    flip_y: bool = False
    flip_x: bool = False


@dataclass(frozen=True)
class Layout:
    """One augmented label window and where it came from."""

    labels: np.ndarray
    """(H, W) uint8 label values (sedm.labels)."""
    image: np.ndarray
    """(H, W, 3) uint8 the real labelled image under the same window and augmentation (for the
    style-fidelity baseline: how far the labelled slides' own stain is from the target style)."""
    slide_id: str
    y: int
    x: int
    target_class: str
    augmentation: Augmentation

    def provenance(self) -> dict:
        return {"layout_slide": self.slide_id, "layout_y": self.y, "layout_x": self.x,
                "layout_target_class": self.target_class,
                **{f"aug_{k}": v for k, v in asdict(self.augmentation).items()}}


def class_probabilities(tiles: pd.DataFrame, classes: list[str], weights: dict[str, float] | None,
                        rare_class_boost: float) -> dict[str, float]:
    """Probability of each target class (``unannotated`` + classes) for one layout.

    ``weights`` None means equal weights for every class and none for unannotated pixels.
    ``rare_class_boost`` b multiplies each weight by share^-b, share being the class's pixel share
    over all labelled tiles (b = 1: inverse frequency), so rare classes appear more often than
    their weight alone gives. Classes no labelled tile contains get probability 0.
    """
    names = [UNANNOTATED_KEY, *classes]
    if weights is None:
        weights = {c: 1.0 for c in classes}
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise InputError(None, "synthesis.class_weights", f"unknown class(es) {unknown}",
                         f"use names from `classes` or {UNANNOTATED_KEY!r}")
    share = {n: float(tiles[col].mean()) if len(tiles) else 0.0
             for n, col in zip(names, fraction_columns(classes))}
    raw = {}
    for n in names:
        w = float(weights.get(n, 0.0))
        raw[n] = w * share[n] ** -rare_class_boost if (w > 0 and share[n] > 0) else 0.0
    missing = [n for n in names if weights.get(n, 0.0) > 0 and share[n] == 0]
    if missing:
        log.warning("no labelled tile contains %s; those classes get no layouts", missing)
    total = sum(raw.values())
    if total <= 0:
        raise InputError(None, "synthesis.class_weights",
                         "no labelled tile contains any class with a positive weight",
                         "annotate the labelled slides or give a weight to a class they contain")
    return {n: v / total for n, v in raw.items()}


class LayoutSampler:
    """Draws layouts from the labelled stores (one object per job; reads on demand)."""

    def __init__(self, stores: list[str | Path], *, classes: list[str], patch_size: int, mpp: float,
                 class_weights: dict[str, float] | None = None, rare_class_boost: float = 0.0,
                 augment: dict | None = None) -> None:
        if not stores:
            raise InputError(None, "--labelled", "no labelled stores given",
                             "pass the Zarr stores of the labelled slides (layout sources)")
        self.classes = list(classes)
        self.patch_size = int(patch_size)
        # switches not given take the schema's defaults (synthesis.augment), the one place they live
        self.augment = {**validate_section("synthesis")["augment"], **(augment or {})}
        self.stores: list[SlideStore] = []
        tables = []
        for i, path in enumerate(stores):
            store = SlideStore(Path(path))
            check_store(store, classes, mpp, patch_size)
            table = tile_table_path(store.path)
            if not table.is_file():
                raise InputError(table, None, "tile table missing", "run `sedm tile` on the slide again")
            t = store.tiles()
            t = t.assign(_store=i, _tile=store.tile_size)
            t = t[t["frac_unannotated"] < 1.0]  # only tiles with some annotation serve as layouts
            self.stores.append(store)
            tables.append(t)
        self.tiles = pd.concat(tables, ignore_index=True)
        if self.tiles.empty:
            raise InputError(stores[0], None, "no labelled slide has an annotated tile",
                             "check the annotations of the labelled slides (GeoJSON class names vs `classes`)")
        self.probs = class_probabilities(self.tiles, self.classes, class_weights, rare_class_boost)
        self._names = list(self.probs)
        self._p = np.array([self.probs[n] for n in self._names])
        self._cols = dict(zip([UNANNOTATED_KEY, *self.classes], fraction_columns(self.classes)))

    def sample(self, rng: np.random.Generator) -> Layout:
        target = self._names[int(rng.choice(len(self._names), p=self._p))]
        w = self.tiles[self._cols[target]].to_numpy(dtype=np.float64)
        tile = self.tiles.iloc[int(rng.choice(len(w), p=w / w.sum()))]
        store = self.stores[int(tile["_store"])]
        height, width = store.shape
        p, t = self.patch_size, int(tile["_tile"])
        y = window_in_tile(rng, int(tile["y"]), t, height, p)
        x = window_in_tile(rng, int(tile["x"]), t, width, p)
        aug = draw_augmentation(rng, self.augment, p)
        labels, image = augmented_window(store, y, x, p, aug)
        return Layout(labels, image, store.slide_id, y, x, target, aug)


def check_store(store: SlideStore, classes: list[str], mpp: float, patch_size: int) -> None:
    """Same class map and µm/px as the model, and at least one patch in size."""
    if store.classes != list(classes):
        raise InputError(store.path, "classes", f"store classes {store.classes} differ from the config's {list(classes)}",
                         "tile the slides again with the current config")
    if not same_mpp(store.mpp, mpp):
        raise InputError(store.path, "mpp", f"store is at {store.mpp:g} µm/px, the model at {mpp:g} µm/px",
                         "tile the slides at the µm/px the diffusion model was trained at (tiling.mpp)")
    if min(store.shape) < patch_size:
        raise InputError(store.path, "shape", f"slide is {store.shape} px, smaller than a {patch_size} px patch",
                         "drop the slide or use a model with smaller patches")


def draw_augmentation(rng: np.random.Generator, cfg: dict, patch_size: int) -> Augmentation:
    """Random augmentation parameters; each switch in ``cfg`` (synthesis.augment) off = identity.

    The draws happen in a fixed order whatever is switched on, so toggling one augmentation does
    not reshuffle the others.
    """
    u = rng.random(7)
    flip_y = bool(cfg["flips"]) and bool(u[0] < 0.5)
    flip_x = bool(cfg["flips"]) and bool(u[1] < 0.5)
    rot90 = int(u[2] * 4) % 4 if cfg["rot90"] else 0
    if not cfg["affine"]:
        return Augmentation(rot90=rot90, flip_y=flip_y, flip_x=flip_x)
    lo, hi = cfg["scale"]
    scale = math.exp(math.log(lo) + u[3] * (math.log(hi) - math.log(lo)))  # log-uniform: 0.8 ~ 1/1.25
    rot = float(cfg["rotation_deg"]) * (2 * u[4] - 1)
    shear = float(cfg["shear_deg"]) * (2 * u[5] - 1)
    shift = float(cfg["translate"]) * patch_size
    ty, tx = shift * (2 * rng.random(2) - 1)
    return Augmentation(True, round(scale, 6), round(rot, 4), round(shear, 4), round(float(ty), 3),
                        round(float(tx), 3), rot90, flip_y, flip_x)


def _affine_inverse(aug: Augmentation) -> np.ndarray:
    """2x2 matrix mapping output (y, x) offsets from the centre to input offsets."""
    th, sh = math.radians(aug.rotation_deg), math.radians(aug.shear_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    shear = np.array([[1.0, 0.0], [math.tan(sh), 1.0]])
    return np.linalg.inv(rot @ shear * aug.scale)


def augmented_window(store: SlideStore, y: int, x: int, size: int, aug: Augmentation) -> tuple[np.ndarray, np.ndarray]:
    """Labels and image of the ``size`` window at (y, x) (store µm/px) with ``aug`` applied.

    The affine warp samples a context window around the patch, so rotated corners show real
    neighbouring tissue and annotation instead of padding (outside the slide: unannotated glass).
    """
    height, width = store.shape
    if aug.affine:
        inv = _affine_inverse(aug)
        c = (size - 1) / 2.0
        shift = np.array([aug.translate_y, aug.translate_x])
        corners = np.array([[0, 0], [0, size - 1], [size - 1, 0], [size - 1, size - 1]], dtype=float) - c - shift
        half = int(math.ceil(np.abs(corners @ inv.T).max())) + 2
        cy, cx = y + size // 2, x + size // 2
        ctx_y, ctx_x, ctx = cy - half, cx - half, 2 * half
        labels = read_padded(store.read_labels, ctx_y, ctx_x, ctx, ctx, (height, width), UNANNOTATED, None)
        image = read_padded(store.read_image, ctx_y, ctx_x, ctx, ctx, (height, width), 255, 3)
        centre_in = np.array([cy - ctx_y, cx - ctx_x], dtype=float) - (size // 2 - c)
        offset = centre_in - inv @ (np.array([c, c]) + shift)
        labels = ndimage.affine_transform(labels, inv, offset=offset, output_shape=(size, size), order=0,
                                          mode="nearest")
        image = np.stack([ndimage.affine_transform(image[..., k], inv, offset=offset, output_shape=(size, size),
                                                   order=1, mode="nearest") for k in range(3)], axis=-1)
    else:
        labels = store.read_labels(y, x, size, size)
        image = store.read_image(y, x, size, size)
    labels, image = np.rot90(labels, aug.rot90), np.rot90(image, aug.rot90)
    if aug.flip_y:
        labels, image = labels[::-1], image[::-1]
    if aug.flip_x:
        labels, image = labels[:, ::-1], image[:, ::-1]
    return np.ascontiguousarray(labels, dtype=np.uint8), np.ascontiguousarray(image, dtype=np.uint8)
