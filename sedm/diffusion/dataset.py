"""Training samples for the diffusion model: content patch + layout + N style patches of the same slide.

One sample (all read at the stores' µm/px, level 0):

1. Content (labelled slides): draw a target class by ``class_weights`` (so rare classes are seen as
   often as asked for, not as often as they are drawn by pathologists), then a tile of the slides'
   tile tables with probability proportional to that class's fraction in the tile, then a pixel of
   that class inside the tile; the patch is placed so that pixel lies at a random position in it.
   With ``unlabelled_stores``, a share ``unlabelled_fraction`` of samples instead takes a random tissue
   patch of an unlabelled slide with an all-"unannotated" layout (style/texture without layout).
2. Style: N patches of the SAME slide: ``nearby`` (random offsets within ``nearby_radius`` px of the
   content patch, on tissue) or ``multi`` (random tissue tiles anywhere on the slide, STEDM's
   multi-patch variant, which decouples style from the content patch's own structures).
3. Layout dropout (``layout_drop`` > 0): with that probability a labelled sample's layout becomes
   its tissue mask under the "tissue, class unknown" value (:func:`sedm.labels.unknown_tissue_value`),
   so the model can be conditioned on any image's tissue without knowing its classes.
4. Augmentation: one random rot90 + flip applied to image and layout together; each style patch gets
   its own.

Every random choice of sample ``i`` comes from ``sedm.seeds.index_rng(seed, i)``: a sample depends
only on (seed, index), not on the worker that makes it or on what was drawn before. Training is thus
deterministic for any number of DataLoader workers or DDP ranks, and resuming needs nothing but the
step (:class:`StepSampler` maps steps to sample indices). Stores are opened lazily in each worker.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from sedm.errors import InputError
from sedm.labels import UNANNOTATED, n_layout_channels, one_hot, unknown_tissue_value
from sedm.seeds import index_rng
from sedm.stain.jitter import StainJitter
from sedm.tiling.store import SlideStore, open_checked
from sedm.tiling.table import fraction_columns, tile_table_path

STYLE_SAMPLING = ("multi", "nearby")
TILE_CACHE_BYTES = 256 * 2**20
"""Decoded tiles kept per process: a sample reads ~10 small windows that mostly fall on few tiles."""
DEFAULT_UNANNOTATED_WEIGHT = 0.25
"""Default weight of the "unannotated" target (each class defaults to 1)."""


def resolve_class_weights(classes: Sequence[str], weights: Mapping[str, float] | None) -> np.ndarray:
    """Weights per label value (0 = unannotated, k = class k) from a name -> weight mapping."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(classes) - {"unannotated"})
    if unknown:
        raise InputError(None, "diffusion.class_weights", f"unknown class name(s) {unknown}",
                         f"use names of `classes` ({', '.join(classes)}) or 'unannotated'")
    out = [weights.get("unannotated", DEFAULT_UNANNOTATED_WEIGHT)] + [weights.get(c, 1.0) for c in classes]
    return np.asarray(out, dtype=np.float64)


class TileCache:
    """Windows of sedm stores assembled from whole decoded tiles, least recently used ones dropped.

    A training sample reads a content patch, its labels and tissue, and N style patches (each tried
    for tissue first): a few dozen small zarr reads, each paying zarr's per-call overhead for a
    window smaller than its chunk. Reading whole tile-aligned blocks once and cutting windows from
    memory returns the same pixels at a fraction of the cost.
    """

    def __init__(self, max_bytes: int = TILE_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0

    def _block(self, store: SlideStore, kind: str, ty: int, tx: int, t: int) -> np.ndarray:
        key = (store.path, kind, ty, tx)
        block = self._blocks.get(key)
        if block is not None:
            self._blocks.move_to_end(key)
            return block
        h, w = store.shape
        read = {"image": store.read_image, "labels": store.read_labels, "tissue": store.read_tissue}[kind]
        block = np.ascontiguousarray(read(ty, tx, min(t, h - ty), min(t, w - tx)))
        self._blocks[key] = block
        self._bytes += block.nbytes
        while self._bytes > self.max_bytes and len(self._blocks) > 1:
            self._bytes -= self._blocks.popitem(last=False)[1].nbytes
        return block

    def read(self, store: SlideStore, kind: str, y: int, x: int, h: int, w: int, tile: int) -> np.ndarray:
        """The (h, w[, 3]) window at (y, x) of ``kind`` (image, labels or tissue), inside the slide."""
        out = None
        for ty in range(y - y % tile, y + h, tile):
            for tx in range(x - x % tile, x + w, tile):
                block = self._block(store, kind, ty, tx, tile)
                if out is None:
                    out = np.empty((h, w, *block.shape[2:]), block.dtype)
                y0, x0 = max(y, ty), max(x, tx)
                y1, x1 = min(y + h, ty + block.shape[0]), min(x + w, tx + block.shape[1])
                out[y0 - y:y1 - y, x0 - x:x1 - x] = block[y0 - ty:y1 - ty, x0 - tx:x1 - tx]
        return out


class DiffusionPatchDataset(Dataset):
    """Map-style dataset: index -> dict(image, layout, style, slide, index); see the module docstring.

    ``image`` (3, P, P) and ``style`` (N, 3, S, S) are float32 in [-1, 1]; ``layout`` is the (K+1, P, P)
    one-hot of :mod:`sedm.labels`; ``slide`` indexes :attr:`store_paths` (labelled first).
    """

    def __init__(self, stores: Sequence[str | Path], classes: Sequence[str], *, patch_size: int,
                 style_patch_size: int | None = None, n_style: int = 2, style_sampling: str = "multi",
                 nearby_radius: int = 256, class_weights: Mapping[str, float] | None = None,
                 unlabelled_stores: Sequence[str | Path] = (), unlabelled_fraction: float = 0.25,
                 augment: bool = True, style_jitter: StainJitter | None = None, layout_drop: float = 0.0,
                 unlabelled_tissue: bool = False, seed: int = 0) -> None:
        if not stores:
            raise InputError(None, "--stores", "no labelled stores given", "pass at least one labelled slide store")
        if style_sampling not in STYLE_SAMPLING:
            raise InputError(None, "diffusion.style_sampling", f"unknown value {style_sampling!r}",
                             f"use one of {STYLE_SAMPLING}")
        self.classes = list(classes)
        self.layout_drop = float(layout_drop)
        self.unlabelled_tissue = bool(unlabelled_tissue)
        """Unlabelled crops mark their tissue as "tissue, class unknown" (else their layout is all
        "unannotated", as the diffusion model's ``use_unlabelled`` samples have it)."""
        self.n_layout = n_layout_channels(self.classes, tissue_channel=self.layout_drop > 0 or self.unlabelled_tissue)
        self.patch_size = patch_size
        self.style_patch_size = style_patch_size or patch_size
        self.n_style = n_style
        self.style_sampling = style_sampling
        self.nearby_radius = nearby_radius
        self.unlabelled_fraction = unlabelled_fraction if unlabelled_stores else 0.0
        self.augment = augment
        self.style_jitter = style_jitter
        self.seed = seed
        self.store_paths = [Path(p) for p in stores] + [Path(p) for p in unlabelled_stores]
        self.n_labelled = len(stores)

        meta = [self._check_store(p, labelled=i < self.n_labelled) for i, p in enumerate(self.store_paths)]
        mpps = {round(m["mpp"], 6) for m in meta}
        if len(mpps) > 1:
            raise InputError(None, "--stores", f"stores have different µm/px {sorted(mpps)}",
                             "tile all slides with the same tiling.mpp")
        self.mpp = meta[0]["mpp"]
        self.shapes = [m["shape"] for m in meta]
        self.tile_sizes = [m["tile_size"] for m in meta]
        self.tables = [m["tiles"] for m in meta]

        labelled = pd.concat([t.assign(_slide=i) for i, t in enumerate(self.tables[: self.n_labelled])],
                             ignore_index=True)
        fracs = labelled[fraction_columns(self.classes)].to_numpy(np.float64)  # (tiles, K+1), value order
        n_values = fracs.shape[1]
        self._lab_slide = labelled["_slide"].to_numpy()
        self._lab_yx = labelled[["y", "x"]].to_numpy()
        weights = resolve_class_weights(self.classes, class_weights)
        present = fracs.sum(0) > 0
        p = weights * present
        if p.sum() <= 0:
            raise InputError(None, "diffusion.class_weights", "every class with a positive weight is absent "
                             "from the labelled tiles", "give a positive weight to a class that is annotated")
        self.target_probs = p / p.sum()
        """Probability of each label value being the target of a labelled sample."""
        self._tile_cdf = [np.cumsum(fracs[:, v]) for v in range(n_values)]
        self._slide_tile_cdf = [np.cumsum(t["tissue_fraction"].to_numpy(np.float64)) for t in self.tables]
        self._open: dict[int, SlideStore] = {}
        self._cache = TileCache()
        self._pid: int | None = None

    # -- setup --------------------------------------------------------------------------------------
    def _check_store(self, path: Path, labelled: bool) -> dict[str, Any]:
        store = open_checked(path, self.classes) if labelled else SlideStore(path)
        if not tile_table_path(path).is_file():
            raise InputError(tile_table_path(path), None, "tile table missing", "run `sedm tile` on the slide")
        tiles = store.tiles()
        if tiles.empty:
            raise InputError(tile_table_path(path), None, "no tissue tiles", "drop the slide or lower "
                             "tiling.min_tissue_fraction")
        h, w = store.shape
        need = max(self.patch_size, self.style_patch_size)
        if h < need or w < need:
            raise InputError(path, "diffusion.patch_size", f"slide is {h}x{w} px, smaller than the {need} px "
                             "patches", "use a smaller diffusion.patch_size")
        return {"mpp": store.mpp, "shape": (h, w), "tile_size": store.tile_size, "tiles": tiles}

    def _store(self, slide: int) -> SlideStore:
        if self._pid != os.getpid():  # first use in this process (DataLoader worker): open our own handles
            self._open, self._cache, self._pid = {}, TileCache(), os.getpid()
        if slide not in self._open:
            self._open[slide] = SlideStore(self.store_paths[slide])
        return self._open[slide]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"], state["_cache"], state["_pid"] = {}, TileCache(), None  # workers open their own handles
        return state

    def __len__(self) -> int:
        return 2**62  # indices are drawn by StepSampler; every index is a valid, distinct sample

    def _read(self, slide: int, kind: str, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self._cache.read(self._store(slide), kind, y, x, h, w, self.tile_sizes[slide])

    # -- geometry helpers ----------------------------------------------------------------------------
    def _clamp(self, slide: int, y: int, x: int, size: int) -> tuple[int, int]:
        h, w = self.shapes[slide]
        return int(np.clip(y, 0, h - size)), int(np.clip(x, 0, w - size))

    def _in_tile(self, rng: np.random.Generator, slide: int, ty: int, tx: int, size: int) -> tuple[int, int]:
        """Top-left of a random ``size`` window overlapping the tile at (ty, tx)."""
        t = self.tile_sizes[slide]
        y = ty + int(rng.integers(min(0, t - size), max(0, t - size) + 1))
        x = tx + int(rng.integers(min(0, t - size), max(0, t - size) + 1))
        return self._clamp(slide, y, x, size)

    # -- sampling ----------------------------------------------------------------------------------
    def _content_labelled(self, rng: np.random.Generator) -> tuple[int, int, int]:
        value = int(rng.choice(len(self.target_probs), p=self.target_probs))
        cdf = self._tile_cdf[value]
        tile = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        tile = min(tile, len(cdf) - 1)
        slide = int(self._lab_slide[tile])
        ty, tx = (int(v) for v in self._lab_yx[tile])
        h, w = self.shapes[slide]
        t = self.tile_sizes[slide]
        labels = self._read(slide, "labels", ty, tx, min(t, h - ty), min(t, w - tx))
        mask = labels == value
        if value == UNANNOTATED:
            mask &= self._read(slide, "tissue", ty, tx, *labels.shape) > 0
        candidates = np.flatnonzero(mask)
        if candidates.size:
            py, px = divmod(int(candidates[rng.integers(candidates.size)]), labels.shape[1])
        else:
            py, px = int(rng.integers(labels.shape[0])), int(rng.integers(labels.shape[1]))
        p = self.patch_size
        y0, x0 = self._clamp(slide, ty + py - int(rng.integers(p)), tx + px - int(rng.integers(p)), p)
        return slide, y0, x0

    def _content_unlabelled(self, rng: np.random.Generator) -> tuple[int, int, int]:
        slide = self.n_labelled + int(rng.integers(len(self.store_paths) - self.n_labelled))
        ty, tx = self._random_tile(rng, slide)
        return (slide, *self._in_tile(rng, slide, ty, tx, self.patch_size))

    def _random_tile(self, rng: np.random.Generator, slide: int) -> tuple[int, int]:
        cdf = self._slide_tile_cdf[slide]
        i = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)
        row = self.tables[slide].iloc[i]
        return int(row["y"]), int(row["x"])

    def _style_origins(self, rng: np.random.Generator, slide: int, y0: int, x0: int) -> list[tuple[int, int]]:
        s = self.style_patch_size
        centre_y, centre_x = y0 + self.patch_size // 2, x0 + self.patch_size // 2
        out = []
        for _ in range(self.n_style):
            best, best_tissue = (0, 0), -1.0
            for _attempt in range(8):  # prefer windows that are mostly tissue: glass carries no style
                if self.style_sampling == "multi":
                    y, x = self._in_tile(rng, slide, *self._random_tile(rng, slide), s)
                else:
                    dy, dx = rng.integers(-self.nearby_radius, self.nearby_radius + 1, size=2)
                    y, x = self._clamp(slide, centre_y + int(dy) - s // 2, centre_x + int(dx) - s // 2, s)
                tissue = float(self._read(slide, "tissue", y, x, s, s).mean())
                if tissue > best_tissue:
                    best, best_tissue = (y, x), tissue
                if tissue >= 0.5:
                    break
            out.append(best)
        return out

    @staticmethod
    def _augment(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        out = []
        for a in arrays:
            a = np.rot90(a, k, axes=(0, 1))
            out.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = index_rng(self.seed, index)
        unlabelled = rng.random() < self.unlabelled_fraction
        slide, y0, x0 = self._content_unlabelled(rng) if unlabelled else self._content_labelled(rng)
        p, s = self.patch_size, self.style_patch_size
        image = self._read(slide, "image", y0, x0, p, p)
        labels = np.zeros((p, p), np.uint8) if unlabelled else self._read(slide, "labels", y0, x0, p, p)
        if (self.unlabelled_tissue and unlabelled) or (
                self.layout_drop > 0 and not unlabelled and rng.random() < self.layout_drop):
            tissue = self._read(slide, "tissue", y0, x0, p, p) > 0
            labels = np.where(tissue, unknown_tissue_value(self.classes), UNANNOTATED).astype(np.uint8)
        styles = [self._read(slide, "image", y, x, s, s) for y, x in self._style_origins(rng, slide, y0, x0)]
        if self.augment:
            image, labels = self._augment(rng, image, labels)
            styles = [self._augment(rng, st)[0] for st in styles]
        if self.style_jitter is not None:
            # one random restaining of the content patch AND its style patches: the labelled slides'
            # few, similar styles become many, and the target's colours can only be read from the
            # style patches, so the model learns to follow them (the published code has no such
            # pressure; its labelled styles are all the style variety it ever sees)
            jitter = self.style_jitter.draw(rng)  # per pixel: one call restains all patches as a pixel column
            patches = [image, *styles]
            column = self.style_jitter.apply(np.concatenate([a.reshape(-1, 1, 3) for a in patches]), jitter)
            bounds = np.cumsum([a.shape[0] * a.shape[1] for a in patches])[:-1]
            image, *styles = [c.reshape(a.shape) for c, a in zip(np.split(column, bounds), patches)]
        return {
            "image": torch.from_numpy(_to_float(image)),
            "layout": torch.from_numpy(one_hot(labels, self.n_layout)),
            "style": torch.from_numpy(np.stack([_to_float(st) for st in styles]) if styles
                                      else np.zeros((0, 3, s, s), np.float32)),
            "slide": slide,
            "index": int(index),
        }


def _to_float(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return np.moveaxis(rgb, -1, 0).astype(np.float32) / 127.5 - 1.0


class StepSampler(Sampler[int]):
    """Sample indices of optimisation steps ``[start, stop)`` for one DDP rank.

    Step ``s`` uses global indices ``s * batch_size + [0, batch_size)``; rank ``r`` of ``world`` takes
    the ``r``-th slice of ``batch_size / world``. So 1 process x batch B and W processes x B/W see the
    same samples, and a resumed run continues with exactly the samples it would have drawn.
    """

    def __init__(self, start: int, stop: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise InputError(None, "diffusion.batch_size", f"{batch_size} is not divisible by {world} processes",
                             "use a global batch size that is a multiple of the number of GPUs")
        self.start, self.stop, self.batch_size = start, stop, batch_size
        self.per_rank = batch_size // world
        self.rank = rank

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.stop):
            base = step * self.batch_size + self.rank * self.per_rank
            yield from range(base, base + self.per_rank)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.per_rank
