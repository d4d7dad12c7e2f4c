"""Training data of the segmentation arms: real tiles, synthetic samples, and their mix.

Every batch is a pure function of (seed, step): :class:`TrainBatches` draws it with a generator
seeded by both, so a resumed run sees exactly the batches an uninterrupted run would, with any
number of loader workers, and no data-loader state has to be checkpointed.

The validation split is by patient (:func:`split_by_patient`): tiles of one patient are strongly
correlated, so a tile-level split would reward memorising a patient.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr

from sedm.errors import InputError
from sedm.labels import UNANNOTATED
from sedm.seeds import index_rng
from sedm.segmentation.transforms import Augmentation, Transform, read_window
from sedm.tiling.slides import same_mpp
from sedm.tiling.store import IMAGE_FILL, SlideStore

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- splits
def split_by_patient(slides: Sequence[str], patient_of: Mapping[str, str], val_patients: int,
                     seed: int) -> tuple[list[str], list[str]]:
    """(train slides, validation slides) with whole patients on one side only.

    ``val_patients`` patients are drawn deterministically from ``seed``; at least one patient always
    stays in training. With a single patient (or ``val_patients == 0``) the validation list is empty
    and the caller decides what to do (see :func:`split_tiles`).
    """
    patients = sorted({patient_of[s] for s in slides})
    n_val = min(val_patients, len(patients) - 1)
    if n_val < val_patients and len(patients) > 1:
        log.warning("only %d labelled patients: validating on %d of them", len(patients), n_val)
    if n_val <= 0:
        return list(slides), []
    order = np.random.default_rng(seed).permutation(len(patients))
    val = {patients[i] for i in order[:n_val]}
    return [s for s in slides if patient_of[s] not in val], [s for s in slides if patient_of[s] in val]


def split_tiles(n_tiles: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) tile indices: the fallback when only one labelled patient exists."""
    if n_tiles < 2:
        return np.arange(n_tiles), np.arange(0)
    order = np.random.default_rng(seed).permutation(n_tiles)
    n_val = min(max(1, int(round(fraction * n_tiles))), n_tiles - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ----------------------------------------------------------------------------------- real tiles
def annotated_tiles(store: SlideStore, min_annotated_fraction: float) -> pd.DataFrame:
    """Tiles of ``store`` whose annotated (non-zero label) fraction reaches the threshold."""
    tiles = store.tiles()
    annotated = 1.0 - tiles["frac_unannotated"].to_numpy()
    return tiles[annotated >= min_annotated_fraction].reset_index(drop=True)


def _pad_to(image: np.ndarray, labels: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a window cut off by the slide edge: glass for the image, unannotated for the labels."""
    ph, pw = h - image.shape[0], w - image.shape[1]
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=IMAGE_FILL)
        labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=UNANNOTATED)
    return image, labels


class RealTiles:
    """Annotated tiles of labelled stores, as (image, labels) patches at the stores' µm/px.

    ``tiles`` has one row per usable tile with columns ``store`` (index into ``stores``), ``y``,
    ``x``. Whole tiles are cached (LRU), since random crops hit the same tiles again and again.
    ``transform`` (a stain normaliser) is applied per whole tile of the store's grid, as prediction
    applies it (:func:`~sedm.segmentation.transforms.read_window`), and cached with the tile.
    """

    def __init__(self, stores: Sequence[SlideStore], tiles: pd.DataFrame, cache_tiles: int = 256,
                 transform: Transform | None = None) -> None:
        self.stores = list(stores)
        self.tiles = tiles.reset_index(drop=True)
        self.transform = transform
        self._tile_size = [s.tile_size for s in self.stores]
        self._read_tile = functools.lru_cache(maxsize=cache_tiles)(self._read_tile_uncached)

    def __len__(self) -> int:
        return len(self.tiles)

    def _read_tile_uncached(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        row = self.tiles.iloc[i]
        k = int(row["store"])
        store, y, x, t = self.stores[k], int(row["y"]), int(row["x"]), self._tile_size[k]
        return _pad_to(read_window(store, y, x, t, t, self.transform), store.read_labels(y, x, t, t), t, t)

    def tile(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Whole tile ``i`` (padded at the slide edge): (t, t, 3) uint8 and (t, t) uint8."""
        return self._read_tile(i)

    def patch(self, i: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random ``size`` x ``size`` window overlapping tile ``i``."""
        t = self._tile_size[int(self.tiles.at[i, "store"])]
        if size <= t:
            image, labels = self._read_tile(i)
            dy, dx = rng.integers(0, t - size + 1, size=2)
            return image[dy:dy + size, dx:dx + size].copy(), labels[dy:dy + size, dx:dx + size].copy()
        row = self.tiles.iloc[i]
        store = self.stores[int(row["store"])]
        dy, dx = rng.integers(0, size - t + 1, size=2)
        y, x = max(0, int(row["y"]) - int(dy)), max(0, int(row["x"]) - int(dx))
        return _pad_to(read_window(store, y, x, size, size, self.transform), store.read_labels(y, x, size, size),
                       size, size)


# -------------------------------------------------------------------------------- synthetic data
class SyntheticSet:
    """Reader of one synthesis store ``results/synthesis/<slide>.zarr``.

    Format (written by the synthesis stage): a Zarr v3 group with arrays ``images`` (n, H, W, 3)
    uint8 and ``labels`` (n, H, W) uint8 (values as in sedm.labels), and ``attrs["sedm"]`` with at
    least ``classes``, ``mpp`` and ``slide_id`` (the unlabelled slide whose style was used).
    ``transform`` (a stain normaliser) is applied to each whole sample before it is cropped.
    """

    def __init__(self, path: str | Path, classes: Sequence[str] | None = None, mpp: float | None = None,
                 transform: Transform | None = None) -> None:
        self.path = Path(path)
        self.transform = transform
        if not (self.path / "zarr.json").is_file():
            raise InputError(self.path, None, "not a Zarr store", "pass synthesis stores written by `sedm synthesize`")
        root = zarr.open_group(str(self.path), mode="r", zarr_format=3)
        attrs = dict(root.attrs.get("sedm", {}))
        for key in ("classes", "mpp", "slide_id"):
            if key not in attrs:
                raise InputError(self.path, f"attrs.sedm.{key}", "missing", "regenerate the synthesis store")
        if "images" not in root or "labels" not in root:
            raise InputError(self.path, "images/labels", "arrays missing", "regenerate the synthesis store")
        self.images, self.labels = root["images"], root["labels"]
        if (self.images.ndim != 4 or self.images.shape[-1] != 3 or self.labels.shape != self.images.shape[:3]
                or self.images.dtype != np.uint8 or self.labels.dtype != np.uint8):
            raise InputError(self.path, "images/labels", f"shapes {self.images.shape} / {self.labels.shape} are not "
                             "(n, H, W, 3) / (n, H, W) uint8", "regenerate the synthesis store")
        self.classes, self.mpp, self.slide_id = list(attrs["classes"]), float(attrs["mpp"]), str(attrs["slide_id"])
        if classes is not None and self.classes != list(classes):
            raise InputError(self.path, "attrs.sedm.classes", f"classes {self.classes} differ from the config's "
                             f"{list(classes)}", "regenerate synthetic data with the current config")
        if mpp is not None and not same_mpp(self.mpp, mpp):
            raise InputError(self.path, "attrs.sedm.mpp",
                             f"{self.mpp} µm/px differs from the real tiles' {mpp} µm/px",
                             "synthesize at the tiling µm/px")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(self.images[i])
        return (self.transform(image) if self.transform is not None else image), np.asarray(self.labels[i])

    def patch(self, i: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` cropped at random (or padded) to ``size`` x ``size``."""
        image, labels = self[i]
        h, w = labels.shape
        dy, dx = rng.integers(0, max(h - size, 0) + 1), rng.integers(0, max(w - size, 0) + 1)
        image, labels = image[dy:dy + size, dx:dx + size], labels[dy:dy + size, dx:dx + size]
        return _pad_to(image, labels, size, size)


# ------------------------------------------------------------------------------------------ mixing
def dihedral(image: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/rotations (k in 0..7), applied to image and labels alike."""
    if k & 4:
        image, labels = image[:, ::-1], labels[:, ::-1]
    return np.rot90(image, k & 3).copy(), np.rot90(labels, k & 3).copy()


class TrainBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``step`` is the whole training batch of that step.

    Each sample is synthetic with probability ``synthetic_fraction`` (from one synthetic store
    picked uniformly, i.e. one unlabelled slide per sample, as in STEDM), otherwise a random crop
    of a random annotated real tile. Then a random flip/rotation, and stain augmentation when given
    (``stain(image, rng)``: HED jitter or RandStainNA, :mod:`sedm.segmentation.transforms`).
    """

    def __init__(self, real: RealTiles, synthetic: Sequence[SyntheticSet], *, synthetic_fraction: float,
                 batch_size: int, patch_size: int, seed: int, flips: bool = True,
                 stain: Augmentation | None = None) -> None:
        if len(real) == 0 and not synthetic:
            raise ValueError("no training data")
        self.real, self.synthetic = real, list(synthetic)
        self.synthetic_fraction = synthetic_fraction if self.synthetic else 0.0
        if len(real) == 0:
            self.synthetic_fraction = 1.0
        self.batch_size, self.patch_size, self.seed = batch_size, patch_size, seed
        self.flips, self.stain = flips, stain

    def __len__(self) -> int:
        return 2**62

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
        is_synthetic = bool(rng.random() < self.synthetic_fraction)
        if is_synthetic:
            source = self.synthetic[int(rng.integers(len(self.synthetic)))]
            image, labels = source.patch(int(rng.integers(len(source))), self.patch_size, rng)
        else:
            image, labels = self.real.patch(int(rng.integers(len(self.real))), self.patch_size, rng)
        if self.flips:
            image, labels = dihedral(image, labels, int(rng.integers(8)))
        if self.stain is not None:
            image = self.stain(image, rng)
        return image, labels, is_synthetic

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = index_rng(self.seed, step)
        images, labels, synthetic = zip(*(self.sample(rng) for _ in range(self.batch_size)))
        return {"image": torch.from_numpy(np.stack(images)), "labels": torch.from_numpy(np.stack(labels)),
                "synthetic": torch.tensor(synthetic)}
