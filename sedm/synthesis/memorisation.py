"""``sedm near-copies``: does a synthetic set copy the labelled tiles the diffusion model trained on?

A diffusion model that is large or trained long enough can memorise its training patches and hand
them back: the synthetic arms then see their own training data again, restained. Synthetic tiles
take their layout from a labelled window (flipped, turned and warped) and their colours from an
unlabelled slide, so a memorised copy shows the *structure* of a labelled training region in
*another stain*, possibly flipped or turned. The check finds, for every synthetic tile, the most
similar tile-sized window of the labelled slides in a feature space that ignores stain colour, and
compares those nearest-neighbour distances with the same distances between real slides.

**Feature space** (why): per pixel the optical-density magnitude (OD summed over R, G and B;
glass 0), blurred by half a cell and area-averaged into cells of ``tile / 32`` px (a 32 x 32 grid;
4 px = 4 µm for the demo's 128 px tiles at 1 µm/px: nuclei stay visible, sensor and JPEG noise,
which differ between a copy and its original, average out), then high-passed (minus a Gaussian blur
of :data:`HIGHPASS_CELLS` cells) and compared by Pearson correlation. Colour enters only through
one number per pixel whose spatial pattern a stain change rescales but keeps (more or less of each
dye darkens the same nuclei and fibres); the correlation ignores the scale and offset. The high-pass
removes what a model *should* reproduce from its layout, the brightness of class regions: without
it, tiles drawn from a layout with new texture correlated up to 0.93 with their source window on
the demo cohort, with it up to 0.7, while copies in another stain keep 0.92-0.99. Distance is
``1 - r``: 0 for a copy up to stain scale, about 1 for unrelated tissue.

**Search**: each synthetic tile, in all 8 flips and quarter turns, against every tile-sized window
of the labelled slides' tissue (window tissue fraction at least :data:`MIN_WINDOW_TISSUE`, by the
store's tissue mask) at every cell offset (an FFT cross-correlation over regions of
:data:`REGION_PX` px), then the best :data:`CANDIDATES` matches are refined to the pixel (the
windows within half a cell around them, their features computed as the tile's). Rotations by other
angles and rescaling are not searched (see the next paragraph). Reference cap: :data:`MAX_REGIONS`
regions (each 1024 x 1024 px at the stores' µm/px plus one tile, only regions with tissue tiles; the
demo's four labelled slides have 16), beyond that a seeded random subset; at most
:data:`MAX_TILES` synthetic tiles per set (a seeded subset).

**Own layout source**: synthesis warps each layout (rotation by any angle, scale 0.8-1.2, shear)
before the model draws it, and a model that memorised its training patches would draw the warped
training tissue, which no flip or quarter turn of a stored window matches. So each tile is also
compared with its own source, the labelled window its layout was cut from under the same
augmentation (the store's provenance; :func:`sedm.synthesis.layouts.augmented_window`, as synthesis
cut it). A tile's near-copy distance is the smaller of the two.

**Baseline and threshold**: the same nearest distance for :data:`BASELINE_TILES` real tissue
windows drawn from the labelled slides (seeded, spread over the slides), each searched against the
*other* labelled slides: how close distinct real tissue comes by chance. A synthetic tile is a
near-copy when its distance is below ``min(MAX_COPY_DISTANCE, 1st percentile of the real-to-real
distances)``: a copy in absolute terms (r >= 0.85; windows of the demo's labelled slides restained
by a strong HED change and flipped read r >= 0.92, windows of other slides r <= 0.43), and closer
than real tissue of another slide practically ever comes. The absolute cap keeps a layout-faithful
tile with new texture from counting, since the reference holds its own layout source (such tiles
correlated at most 0.7 with it on the demo cohort); the percentile keeps a cohort whose real slides
resemble each other closely (serial sections) from flagging what is ordinary there. Synthetic
distances sit a little below the real-to-real ones even without copying, for that same reason (the
layout's region borders match their source).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import zarr
from scipy import ndimage

from sedm.atomic import write_text
from sedm.config import add_config_arguments, load_config
from sedm.errors import InputError
from sedm.seeds import rng_for
from sedm.stain.statistics import od_of_levels
from sedm.synthesis.layouts import Augmentation, augmented_window
from sedm.synthesis.shards import PROVENANCE_FILE, read_provenance
from sedm.synthesis.windows import read_padded, window_in_tile
from sedm.tiling.slides import same_mpp
from sedm.tiling.store import IMAGE_FILL, SlideStore

log = logging.getLogger(__name__)

GRID = 32
"""Cells per side of a tile's feature: the cell is ``tile // GRID`` px."""
PREBLUR_CELLS = 0.5
"""Gaussian blur (in cells) before area averaging: a window half a cell off the grid still matches."""
HIGHPASS_CELLS = 3.0
"""The feature minus its Gaussian blur of this many cells: texture, not class-region brightness."""
MIN_WINDOW_TISSUE = 0.5
"""Reference windows need at least this tissue fraction (the store's tissue mask)."""
REGION_PX = 1024
"""Reference windows are searched in regions of this many px (plus one tile), one FFT each."""
MAX_REGIONS = 64
"""Most reference regions searched (a seeded random subset beyond it): 64 Mpx of labelled tissue."""
MAX_TILES = 256
"""Most synthetic tiles checked per set (a seeded random subset beyond it)."""
BASELINE_TILES = 32
"""Real tissue windows of the labelled slides whose nearest other-slide distance is the baseline."""
CANDIDATES = 3
"""Best matches of the cell-grid search refined to the pixel, per tile."""
MAX_COPY_DISTANCE = 0.15
"""A near-copy is at most this far (correlation at least 0.85) and below the baseline's 1st percentile."""
CHUNK_VALUES = 2**24
"""Most region-sized map values per FFT batch (tiles x 8 transforms x region cells): ~64-128 MB."""

FEATURE_SPACE = (
    "per pixel the optical-density magnitude (OD summed over RGB), blurred by half a cell, averaged into a "
    f"{GRID} x {GRID} grid of cells (tile/{GRID} px), minus its Gaussian blur of {HIGHPASS_CELLS:g} cells "
    "(texture and nuclei, not class-region brightness); distance = 1 - Pearson correlation, the best over "
    "the 8 flips/quarter turns and every tile-sized window of the labelled slides' tissue (pixel-exact)"
)


# ------------------------------------------------------------------------------------- features
_OD = od_of_levels(np.arange(256, dtype=np.float64)).astype(np.float32)
"""The optical density of every 8-bit level, as a lookup table (faster than a log per pixel)."""


def od_magnitude(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) float32 optical density summed over the channels (glass ~0)."""
    return _OD[rgb[..., 0]] + _OD[rgb[..., 1]] + _OD[rgb[..., 2]]


def cell_size(tile: int) -> int:
    """Cell edge in px of the feature of a ``tile`` px tile."""
    return max(1, tile // GRID)


def feature_maps(rgb: np.ndarray, cell: int) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., H // cell, W // cell) float32 feature maps (module docstring).

    Tiles and regions go through the same function; a tile's map is its feature.
    """
    return od_feature_maps(od_magnitude(rgb), cell)


def od_feature_maps(od: np.ndarray, cell: int, blurred: bool = False) -> np.ndarray:
    """:func:`feature_maps` of (..., H, W) OD magnitude maps (``blurred``: already pre-blurred)."""
    lead = od.ndim - 2
    if not blurred:
        od = preblur(od, cell)
    h, w = od.shape[-2] // cell, od.shape[-1] // cell
    od = od[..., : h * cell, : w * cell].reshape(*od.shape[:-2], h, cell, w, cell).mean((-3, -1))
    return od - ndimage.gaussian_filter(od, (0,) * lead + (HIGHPASS_CELLS,) * 2, mode="reflect")


def preblur(od: np.ndarray, cell: int) -> np.ndarray:
    sigma = PREBLUR_CELLS * cell
    if sigma < 0.25:
        return od
    return ndimage.gaussian_filter(od, (0,) * (od.ndim - 2) + (sigma,) * 2, mode="reflect")


def normalise(features: np.ndarray) -> np.ndarray:
    """(N, h, w) feature maps -> zero-mean unit-norm vectors (N, h, w); a flat map stays 0 (r = 0
    with everything: a blank tile copies nothing)."""
    x = features.reshape(len(features), -1).astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.where(norm > 1e-6, x / np.maximum(norm, 1e-12), 0.0)
    return x.reshape(features.shape)


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """Transform ``k`` (0..7) of (..., h, w) maps: flip left-right if ``k & 4``, then ``k & 3``
    counter-clockwise quarter turns (as :func:`sedm.segmentation.data.dihedral`)."""
    if k & 4:
        x = x[..., :, ::-1]
    return np.rot90(x, k & 3, axes=(-2, -1))


def tile_features(images: np.ndarray, cell: int) -> np.ndarray:
    """(N, S, S, 3) uint8 tiles -> (N, 8, n, n) normalised features of their 8 flips/turns."""
    f = normalise(feature_maps(images, cell))
    return np.stack([dihedral(f, k) for k in range(8)], axis=1).copy()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the features of two single tiles (H, W, 3) uint8, same size."""
    cell = cell_size(a.shape[0])
    fa, fb = normalise(feature_maps(np.stack([a, b]), cell))
    return float((fa * fb).sum())


# ------------------------------------------------------------------------------------ reference
@dataclass
class Region:
    """One searched block of a labelled slide, its features in the Fourier domain."""

    slide: int
    """Index into the reference's stores."""
    y: int
    x: int
    spectrum: np.ndarray
    """rfft2 of the region's feature map (complex64), at the reference's FFT shape."""
    inv_std: np.ndarray
    """(Hv, Wv) 1 / (window norm of the mean-free feature) per window start (cell units); 0 where
    the window is not eligible (too little tissue, flat)."""


class Reference:
    """Every tile-sized window of the labelled slides' tissue, searchable for one tile size."""

    def __init__(self, stores: Sequence[str | Path], tile: int, mpp: float, rng: np.random.Generator,
                 max_regions: int = MAX_REGIONS) -> None:
        self.stores = [SlideStore(p) for p in stores]
        for s in self.stores:
            if not same_mpp(s.mpp, mpp):
                raise InputError(s.path, "attrs.sedm.mpp", f"{s.mpp} µm/px differs from the synthetic set's {mpp}",
                                 "pass the labelled stores the synthetic set was drawn from")
        self.tile, self.cell = tile, cell_size(tile)
        self.n = tile // self.cell
        extent = max(max(s.shape) for s in self.stores) if self.stores else REGION_PX
        step = -(-min(REGION_PX, extent) // self.cell) * self.cell  # small slides: one region, no padding
        self.step = step
        self.size = step + self.n * self.cell  # region px: every window start in [y, y + step)
        self.shape = tuple(scipy.fft.next_fast_len(self.size // self.cell, real=True) for _ in range(2))
        candidates = []
        for i, s in enumerate(self.stores):
            tiles = s.tiles()
            tiles = tiles[tiles["tissue_fraction"] > 0]
            h, w = s.shape
            blocks = set()
            for y, x in zip(tiles["y"].to_numpy(), tiles["x"].to_numpy()):
                for by in range(max(0, (int(y) - self.size) // step), int(y + s.tile_size) // step + 1):
                    for bx in range(max(0, (int(x) - self.size) // step), int(x + s.tile_size) // step + 1):
                        if by * step < h and bx * step < w:
                            blocks.add((by, bx))
            candidates += [(i, by * step, bx * step) for by, bx in sorted(blocks)]
        self.regions_total = len(candidates)
        if len(candidates) > max_regions:
            keep = np.sort(rng.choice(len(candidates), size=max_regions, replace=False))
            candidates = [candidates[k] for k in keep]
        self.regions = [r for r in (self._region(*c) for c in candidates) if r is not None]
        self.windows = int(sum((r.inv_std > 0).sum() for r in self.regions))

    def _read(self, slide: int, y: int, x: int, size: int,
              tissue: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        s = self.stores[slide]
        image = read_padded(s.read_image, y, x, size, size, s.shape, IMAGE_FILL, 3)
        return image, read_padded(s.read_tissue, y, x, size, size, s.shape, 0, None) if tissue else None

    def _region(self, slide: int, y: int, x: int) -> Region | None:
        image, tissue = self._read(slide, y, x, self.size)
        cell, n = self.cell, self.n
        f = feature_maps(image, cell).astype(np.float64)
        hc = f.shape[0]
        t = tissue[: hc * cell, : hc * cell].reshape(hc, cell, hc, cell).mean((1, 3))

        def window_sum(a: np.ndarray) -> np.ndarray:
            c = np.zeros((hc + 1, hc + 1))
            c[1:, 1:] = a.cumsum(0).cumsum(1)
            return c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]

        s1, s2, frac = window_sum(f), window_sum(f * f), window_sum(t) / (n * n)
        var = np.maximum(s2 - s1 * s1 / (n * n), 0.0)
        ok = (frac >= MIN_WINDOW_TISSUE) & (var > 1e-9 * n * n)
        if not ok.any():
            return None
        inv_std = np.where(ok, 1.0 / np.sqrt(np.where(ok, var, 1.0)), 0.0).astype(np.float32)
        spectrum = scipy.fft.rfft2(f.astype(np.float32), s=self.shape).astype(np.complex64)
        return Region(slide, y, x, spectrum, inv_std)

    def search(self, features: np.ndarray, query_slide: np.ndarray | None = None,
               candidates: int = CANDIDATES) -> tuple[np.ndarray, list[list[tuple]]]:
        """Nearest windows of every tile: (N,) correlations and, per tile, its refined best match
        ``(r, slide_id, y, x, transform)`` (an empty list when nothing was searched).

        ``features``: (N, 8, n, n) from :func:`tile_features`. ``query_slide``: per tile the index of
        a store whose windows it must not be compared with (the baseline), or -1.
        """
        nq = len(features)
        query_slide = np.full(nq, -1) if query_slide is None else np.asarray(query_slide)
        hv = self.regions[0].inv_std.shape[0] if self.regions else 0
        # best per (tile, transform, region): correlation and flat window index
        best = np.full((nq, 8, len(self.regions)), -np.inf, dtype=np.float32)
        where = np.zeros((nq, 8, len(self.regions)), dtype=np.int64)
        step = max(1, CHUNK_VALUES // (8 * self.shape[0] * self.shape[1]))
        for start in range(0, nq, step):
            chunk = features[start:start + step].astype(np.float32)
            spectra = scipy.fft.rfft2(chunk, s=self.shape).conj()
            for k, region in enumerate(self.regions):
                idx = np.flatnonzero(query_slide[start:start + step] != region.slide)
                if not len(idx):
                    continue
                corr = scipy.fft.irfft2(spectra[idx] * region.spectrum, s=self.shape)[..., :hv, :hv]
                corr = (corr * region.inv_std).reshape(len(idx), 8, -1)
                corr[..., region.inv_std.ravel() == 0] = -np.inf
                arg = corr.argmax(-1)
                best[start + idx, :, k] = np.take_along_axis(corr, arg[..., None], -1)[..., 0]
                where[start + idx, :, k] = arg
        nearest = np.zeros(nq)
        matches: list[list[tuple]] = []
        for q in range(nq):
            flat = best[q].ravel()
            order = [o for o in np.argsort(flat)[::-1][:candidates] if np.isfinite(flat[o])]
            found = [self._refine(features[q, o // len(self.regions)], o // len(self.regions),
                                  self.regions[o % len(self.regions)], int(where[q].ravel()[o]), hv)
                     for o in order]
            found.sort(key=lambda m: -m[0])
            matches.append(found)
            nearest[q] = found[0][0] if found else 0.0
        return nearest, matches

    def _refine(self, template: np.ndarray, k: int, region: Region, flat: int, hv: int) -> tuple:
        """The best pixel offset within half a cell around a cell-grid match, each window's feature
        computed as a tile's (the blur sees the window's surroundings); ``template`` is already
        transform ``k`` of the tile's feature."""
        cell, tile = self.cell, self.n * self.cell
        y, x = region.y + (flat // hv) * cell, region.x + (flat % hv) * cell
        h = cell // 2
        image, _ = self._read(region.slide, y - h, x - h, tile + 2 * h, tissue=False)
        od = preblur(od_magnitude(image), cell)  # once, in the crop's context
        offsets = [(dy, dx) for dy in range(2 * h + 1) for dx in range(2 * h + 1)]
        crops = np.stack([od[dy:dy + tile, dx:dx + tile] for dy, dx in offsets])
        r = (normalise(od_feature_maps(crops, cell, blurred=True)) * template[None]).sum((1, 2))
        i = int(r.argmax())
        return (float(r[i]), self.stores[region.slide].slide_id, int(y - h + offsets[i][0]),
                int(x - h + offsets[i][1]), int(k))

    def real_windows(self, n_windows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n_windows`` tile-sized tissue windows (at least :data:`MIN_WINDOW_TISSUE` tissue),
        spread evenly over the stores: images (M, S, S, 3) and the store index of each."""
        images, slides = [], []
        for i, s in enumerate(self.stores):
            per = n_windows // len(self.stores) + (i < n_windows % len(self.stores))
            tiles = s.tiles()
            tiles = tiles[tiles["tissue_fraction"] >= MIN_WINDOW_TISSUE]
            got, tries = 0, 0
            h, w = s.shape
            while got < per and len(tiles) and tries < 20 * per:
                tries += 1
                row = tiles.iloc[int(rng.integers(len(tiles)))]
                y = window_in_tile(rng, int(row["y"]), s.tile_size, h, self.tile)
                x = window_in_tile(rng, int(row["x"]), s.tile_size, w, self.tile)
                image, tissue = self._read(i, y, x, self.tile)
                if tissue.mean() >= MIN_WINDOW_TISSUE:
                    images.append(image)
                    slides.append(i)
                    got += 1
        empty = np.zeros((0, self.tile, self.tile, 3), np.uint8)
        return (np.stack(images) if images else empty), np.asarray(slides, dtype=np.int64)


# ------------------------------------------------------------------------------------ the check
def read_synthetic(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The ``images`` array (N, S, S, 3) uint8 and ``attrs["sedm"]`` of a synthetic store."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise InputError(path, None, "not a Zarr store", "pass a synthetic store written by `sedm synthesize`")
    root = zarr.open_group(str(path), mode="r", zarr_format=3)
    attrs = dict(root.attrs.get("sedm", {}))
    if "images" not in root:
        raise InputError(path, "images", "array missing", "pass a synthetic store written by `sedm synthesize`")
    images = root["images"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise InputError(path, "images", f"shape {images.shape} {images.dtype} is not (n, S, S, 3) uint8",
                         "regenerate the synthetic store with `sedm synthesize`")
    for key in ("slide_id", "mpp"):
        if key not in attrs:
            raise InputError(path, f"attrs.sedm.{key}", "missing",
                             "regenerate the synthetic store with `sedm synthesize`")
    return images, attrs


def source_correlations(synthetic: str | Path, index: np.ndarray, tiles: np.ndarray,
                        reference: Reference) -> np.ndarray | None:
    """Per checked tile, the correlation with its own layout source: the labelled window its layout
    was cut from, under the same augmentation (affine warp, quarter turns, flips; from the store's
    provenance), as :func:`sedm.synthesis.layouts.augmented_window` cuts it for synthesis. NaN where
    the source slide is not among the labelled stores; None for a store without provenance."""
    if not (Path(synthetic) / PROVENANCE_FILE).is_file():
        return None
    prov = read_provenance(synthetic)
    if len(prov) < (int(index.max()) + 1 if len(index) else 0):
        raise InputError(Path(synthetic) / PROVENANCE_FILE, None, f"{len(prov)} rows for more samples",
                         "regenerate the synthetic store with `sedm synthesize`")
    stores = {s.slide_id: s for s in reference.stores}
    size, out = tiles.shape[1], np.full(len(index), np.nan)
    fields = [f for f in Augmentation.__dataclass_fields__]
    for j, i in enumerate(index):
        row = prov.iloc[int(i)]
        store = stores.get(str(row["layout_slide"]))
        if store is None:
            continue
        aug = Augmentation(**{f: type(getattr(Augmentation(), f))(row[f"aug_{f}"]) for f in fields})
        _, source = augmented_window(store, int(row["layout_y"]), int(row["layout_x"]), size, aug)
        a, b = normalise(feature_maps(np.stack([tiles[j], source]), reference.cell))
        out[j] = float((a * b).sum())
    return out


def _match(index: int, distance: float, found: list[tuple], source: float | None) -> dict[str, Any]:
    """A near-copy's entry: its nearest labelled window (slide, top-left px, transform 0..7 of the
    synthetic tile that matched it) and its distance to its own layout source."""
    best = found[0] if found else (None, None, None, None, None)
    return {"index": index, "distance": float(distance), "slide_id": best[1], "y": best[2], "x": best[3],
            "transform": best[4],
            "source_distance": None if source is None or not np.isfinite(source) else float(source)}


def _summary(d: np.ndarray) -> dict[str, Any] | None:
    if not len(d):
        return None
    return {"n": int(len(d)), "median": float(np.median(d)), "p5": float(np.percentile(d, 5)),
            "p1": float(np.percentile(d, 1)), "min": float(d.min()), "max": float(d.max())}


def near_copies(synthetic: str | Path, labelled: Sequence[str | Path], seed: int, *, max_tiles: int = MAX_TILES,
                baseline_tiles: int = BASELINE_TILES, max_regions: int = MAX_REGIONS) -> dict[str, Any]:
    """The memorisation check of one synthetic set (module docstring) as a JSON-ready dict."""
    images, attrs = read_synthetic(synthetic)
    if not labelled:
        raise InputError(None, "--labelled", "no labelled store given", "pass the labelled slides' stores")
    slide_id, n_total, tile = str(attrs["slide_id"]), int(images.shape[0]), int(images.shape[1])
    if tile < 8:
        raise InputError(synthetic, "images", f"tiles of {tile} px are too small to compare",
                         "synthesize tiles of at least 8 px")
    reference = Reference(labelled, tile, float(attrs["mpp"]), rng_for(seed, "near-copies", "regions"), max_regions)
    if not reference.regions:
        raise InputError(None, "--labelled", "the labelled stores have no tissue windows of the synthetic tile size",
                         "pass the labelled stores the synthetic set was drawn from")
    index = np.arange(n_total)
    if n_total > max_tiles:
        index = np.sort(rng_for(seed, "near-copies", "tiles", slide_id).choice(n_total, max_tiles, replace=False))
    checked = np.asarray(images.oindex[index]) if len(index) else np.zeros((0, tile, tile, 3), np.uint8)
    cell = reference.cell
    syn_r, syn_matches = reference.search(tile_features(checked, cell)) if len(checked) else (np.zeros(0), [])
    syn_d = 1.0 - syn_r
    src_r = source_correlations(synthetic, index, checked, reference)
    src_d = None if src_r is None else 1.0 - src_r

    baseline = None
    if len(reference.stores) >= 2:
        real, real_slide = reference.real_windows(baseline_tiles, rng_for(seed, "near-copies", "baseline"))
        if len(real):
            real_r, _ = reference.search(tile_features(real, cell), query_slide=real_slide)
            baseline = _summary(1.0 - real_r)
    threshold = MAX_COPY_DISTANCE if baseline is None else min(MAX_COPY_DISTANCE, baseline["p1"])
    rule = (f"distance < min({MAX_COPY_DISTANCE}, 1st percentile of real-to-real)" if baseline is not None
            else f"distance < {MAX_COPY_DISTANCE} (no real-to-real baseline: fewer than two labelled slides)")
    near = syn_d if src_d is None else np.fmin(syn_d, src_d)  # NaN source: the search alone
    copies = np.flatnonzero(near < threshold)
    result = {
        "slide_id": slide_id,
        "store": str(synthetic),
        "n_tiles": n_total,
        "n_checked": int(len(index)),
        "tile_px": tile,
        "mpp": float(attrs["mpp"]),
        "seed": int(seed),
        "feature_space": FEATURE_SPACE,
        "feature": {"cell_px": cell, "grid": reference.n, "preblur_cells": PREBLUR_CELLS,
                    "highpass_cells": HIGHPASS_CELLS, "transforms": 8, "distance": "1 - Pearson r"},
        "reference": {"slides": [s.slide_id for s in reference.stores], "regions": len(reference.regions),
                      "regions_total": reference.regions_total, "max_regions": max_regions,
                      "region_px": reference.size, "windows": reference.windows,
                      "min_window_tissue": MIN_WINDOW_TISSUE},
        "synthetic": _summary(syn_d),
        "source": None if src_d is None else _summary(src_d[np.isfinite(src_d)]),
        "real_to_real": baseline,
        "threshold": {"distance": float(threshold), "max_copy_distance": MAX_COPY_DISTANCE, "rule": rule},
        "near_copies": {
            "count": int(len(copies)),
            "share": float(len(copies) / len(index)) if len(index) else None,
            "indices": [int(index[i]) for i in copies],
            "matches": [_match(int(index[i]), syn_d[i], syn_matches[i], None if src_d is None else src_d[i])
                        for i in copies],
        },
        "distances": [float(d) for d in syn_d],
        "source_distances": None if src_d is None else [None if not np.isfinite(d) else float(d) for d in src_d],
        "tiles": [int(i) for i in index],
    }
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sedm config (the seed)")
    parser.add_argument("--synthetic", required=True, help="synthetic store (sedm synthesize)")
    parser.add_argument("--labelled", nargs="+", required=True,
                        help="labelled stores (the diffusion model's training slides)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--threads", type=int, default=1, help="FFT threads")
    parser.add_argument("--max-tiles", type=int, default=MAX_TILES, help="most synthetic tiles checked (seeded subset)")
    parser.add_argument("--max-regions", type=int, default=MAX_REGIONS,
                        help=f"most {REGION_PX} px reference regions searched (seeded subset)")
    parser.add_argument("--baseline-tiles", type=int, default=BASELINE_TILES,
                        help="real windows whose nearest other-slide distance is the baseline")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, runtime=args.runtime)
    with scipy.fft.set_workers(max(1, int(args.threads))):
        result = near_copies(args.synthetic, args.labelled, int(config["seed"]), max_tiles=args.max_tiles,
                             baseline_tiles=args.baseline_tiles, max_regions=args.max_regions)
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    syn, real, nc = result["synthetic"], result["real_to_real"], result["near_copies"]
    log.info("%s: %d near-copies of %d tiles (distance < %.3f); nearest-neighbour distance median %s, real-to-real %s",
             result["slide_id"], nc["count"], result["n_checked"], result["threshold"]["distance"],
             None if syn is None else round(syn["median"], 3), None if real is None else round(real["median"], 3))
    return 0
