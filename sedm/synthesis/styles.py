"""Style patches: a few real tissue patches of the slide whose stain the generated images take on.

The diffusion model reads style from N patches; they must show tissue (glass has no stain) and be
at the model's µm/px, since a 2x zoom changes what "style" the encoder sees. Three sources:
a sedm store of the unseen slide (``sedm synthesize``), a raw slide file or a folder of images
(``sedm stylize``). Each draw returns the patches and their top-left pixels so the provenance of a
synthetic image names the exact tissue it imitates.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from sedm.errors import InputError
from sedm.stain.statistics import tissue_pixels
from sedm.synthesis.windows import window_in_tile
from sedm.tiling.slides import same_mpp
from sedm.tiling.store import SlideStore

log = logging.getLogger(__name__)

CROP_TRIES = 8
"""Crops tried per style patch to find one with enough tissue before taking the last one."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class StyleSource(ABC):
    """Where style patches come from; ``draw`` is the only thing synthesis needs."""

    slide_id: str
    size: int

    @abstractmethod
    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
        """``n`` patches (n, size, size, 3) uint8 and where each came from: (slide ID or file name,
        top-left y, x in pixels at the model's µm/px)."""


def _pick(rng: np.random.Generator, n_items: int, n: int) -> np.ndarray:
    """``n`` distinct indices when there are enough items, with repeats otherwise."""
    return rng.choice(n_items, size=n, replace=n_items < n)


class StoreStyleSource(StyleSource):
    """Random crops inside the tiles of a sedm store with tissue fraction >= ``min_tissue_fraction``;
    a crop itself below that fraction is redrawn (up to :data:`CROP_TRIES` times)."""

    def __init__(self, path: str | Path, *, size: int, mpp: float, min_tissue_fraction: float) -> None:
        self.store = SlideStore(Path(path))
        self.slide_id = self.store.slide_id
        self.size = int(size)
        if not same_mpp(self.store.mpp, mpp):
            raise InputError(self.store.path, "mpp", f"store is at {self.store.mpp:g} µm/px, the model at {mpp:g}",
                             "tile the style slide at the µm/px the diffusion model was trained at (tiling.mpp)")
        if min(self.store.shape) < self.size:
            raise InputError(self.store.path, "shape", f"slide is {self.store.shape} px, smaller than a "
                             f"{self.size} px style patch", "use a larger slide as style source")
        tiles = self.store.tiles()
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.tiles = tiles[tiles["tissue_fraction"] >= min_tissue_fraction].reset_index(drop=True)
        if self.tiles.empty:
            raise InputError(self.store.path, "tissue_fraction",
                             f"no tile has a tissue fraction >= {min_tissue_fraction:g} "
                             f"({len(tiles)} tiles listed)",
                             "check the slide's tissue QC image, or lower synthesis.style_min_tissue_fraction")

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
        height, width = self.store.shape
        t = self.store.tile_size
        patches, where = [], []
        for i in _pick(rng, len(self.tiles), n):
            tile = self.tiles.iloc[int(i)]
            for _ in range(CROP_TRIES):  # a tissue tile can still have glass in a corner: prefer tissue crops
                y = window_in_tile(rng, int(tile["y"]), t, height, self.size)
                x = window_in_tile(rng, int(tile["x"]), t, width, self.size)
                if self.store.read_tissue(y, x, self.size, self.size).mean() >= self.min_tissue_fraction:
                    break
            patches.append(self.store.read_image(y, x, self.size, self.size))
            where.append((self.slide_id, y, x))
        return np.stack(patches), where


class SlideFileStyleSource(StyleSource):
    """Random tissue patches of a raw slide file, read at the model's µm/px (``sedm stylize``).

    Candidate patches are the cells of a grid of ``size`` px at the model's µm/px whose tissue
    fraction on the tissue mask (sedm.tiling.tissue) reaches ``min_tissue_fraction``.
    """

    def __init__(self, path: str | Path, *, size: int, mpp: float, min_tissue_fraction: float,
                 slides_cfg: dict, tissue_cfg: dict) -> None:
        from sedm.tiling.slides import open_slide

        self.path = Path(path)
        self.slide_id = self.path.stem
        self.size, self.mpp = int(size), float(mpp)
        self.reader = open_slide(self.path, slides_cfg["backend"], slides_cfg["mpp_override"])
        width, height = self.reader.dimensions_at(self.mpp)
        if min(width, height) < self.size:
            raise InputError(self.path, "shape", f"slide is {width}x{height} px at {self.mpp:g} µm/px, smaller "
                             f"than a {self.size} px style patch", "use a larger slide as style source")
        mask, mask_mpp = _tissue_mask(self.reader, tissue_cfg)
        cells = []
        f = mask.shape[0] / height  # mask pixels per pixel at the model's µm/px
        for y in range(0, height - self.size + 1, self.size):
            for x in range(0, width - self.size + 1, self.size):
                m = mask[int(y * f):max(int(y * f) + 1, int((y + self.size) * f)),
                         int(x * f):max(int(x * f) + 1, int((x + self.size) * f))]
                if m.size and m.mean() >= min_tissue_fraction:
                    cells.append((y, x))
        if not cells:
            raise InputError(self.path, "tissue", f"no {self.size} px patch at {self.mpp:g} µm/px has a tissue "
                             f"fraction >= {min_tissue_fraction:g} (tissue mask at {mask_mpp:g} µm/px)",
                             "check that the slide shows stained tissue, or pass --style-images")
        self.cells = cells

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
        where = [(self.slide_id, *self.cells[int(i)]) for i in _pick(rng, len(self.cells), n)]
        patches = [self.reader.read(x, y, self.size, self.size, self.mpp) for _, y, x in where]
        return np.stack(patches), where


def _tissue_mask(reader, tissue_cfg: dict) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of the whole slide (sedm.tiling.tissue, as tiling uses) and its µm/px, with the
    config's ``tissue`` section (validated: every key present)."""
    from sedm.tiling.tissue import detect_tissue

    thumb_mpp = float(tissue_cfg["thumbnail_mpp"])
    mask = detect_tissue(reader.thumbnail(thumb_mpp), thumb_mpp, float(tissue_cfg["min_object_um2"]),
                         float(tissue_cfg["min_hole_um2"]))
    return np.asarray(mask, dtype=bool), thumb_mpp


class ImageFolderStyleSource(StyleSource):
    """Random crops of the images in a folder, resampled by ``scale`` to the model's µm/px; a crop
    whose tissue fraction (:func:`sedm.stain.statistics.tissue_pixels`) is below
    ``min_tissue_fraction`` is redrawn (up to :data:`CROP_TRIES` times): glass carries no stain."""

    def __init__(self, folder: str | Path, *, size: int, scale: float = 1.0, min_tissue_fraction: float = 0.0) -> None:
        from PIL import Image

        self.min_tissue_fraction = float(min_tissue_fraction)
        self.folder = Path(folder)
        self.slide_id = self.folder.name
        self.size = int(size)
        if not self.folder.is_dir():
            raise InputError(self.folder, None, "style image folder not found", "pass a folder of PNG/JPEG/TIFF images")
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(self.folder, None, "no images in the style folder",
                             f"put images ({', '.join(IMAGE_SUFFIXES)}) of the target style there")
        self.files = files
        self.images = []
        for p in files:
            try:
                with Image.open(p) as im:
                    im = im.convert("RGB")
                    if scale != 1.0:
                        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                        im = im.resize(size, Image.Resampling.BICUBIC)
                    img = np.asarray(im)
            except OSError as exc:  # PIL.UnidentifiedImageError included
                raise InputError(p, None, f"not a readable image ({exc})",
                                 "keep only PNG/JPEG/TIFF images in the style folder") from None
            if min(img.shape[:2]) < self.size:
                raise InputError(p, "shape", f"image is {img.shape[1]}x{img.shape[0]} px, smaller than a "
                                 f"{self.size} px style patch", "use larger style images (at the model's µm/px)")
            self.images.append(img)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
        patches, where = [], []
        for i in _pick(rng, len(self.images), n):
            img = self.images[int(i)]
            for _ in range(CROP_TRIES):
                y = int(rng.integers(0, img.shape[0] - self.size + 1))
                x = int(rng.integers(0, img.shape[1] - self.size + 1))
                if tissue_pixels(img[y:y + self.size, x:x + self.size]).mean() >= self.min_tissue_fraction:
                    break
            patches.append(img[y:y + self.size, x:x + self.size])
            where.append((self.files[int(i)].name, y, x))
        return np.stack(patches), where
