"""Tissue detection on synthetic thumbnails with a known layout, and the QC image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sedm.tiling.tissue import QC_COLOR, detect_tissue, save_tissue_qc

MPP = 8.0  # thumbnail µm/px: one pixel is 64 µm²
GLASS = (242, 242, 240)
PINK = (214, 140, 190)  # H&E eosin-rich tissue
PALE = (236, 212, 226)  # weakly stained tissue, saturation ~0.10


def _disc(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _paint(truth_layers, shape=(300, 400), noise=4.0, seed=0) -> np.ndarray:
    img = np.empty(shape + (3,), dtype=np.float64)
    img[:] = GLASS
    for mask, colour in truth_layers:
        img[mask] = colour
    img += np.random.default_rng(seed).normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("colour", [PINK, PALE])
def test_disc_found_and_specks_dropped(colour):
    shape = (300, 400)
    disc = _disc(shape, 150, 140, 80)
    speck = _disc(shape, 40, 340, 2)  # 13 px = 832 µm² < 5000 µm²
    fragment = _disc(shape, 230, 330, 15)  # 709 px = 45000 µm²: real tissue, kept
    mask = detect_tissue(_paint([(disc, colour), (speck, PINK), (fragment, colour)], shape), MPP)
    assert mask.shape == shape and mask.dtype == bool
    assert _iou(mask & ~_disc(shape, 230, 330, 25), disc) > 0.95
    assert _iou(mask & _disc(shape, 230, 330, 25), fragment) > 0.9
    assert not mask[_disc(shape, 40, 340, 6)].any()


def test_small_holes_filled_large_kept():
    shape = (300, 300)
    disc = _disc(shape, 150, 150, 120)
    small = _disc(shape, 100, 150, 3)  # 29 px = 1850 µm²: filled
    large = _disc(shape, 180, 150, 25)  # 1961 px = 125000 µm²: a real gap, kept
    img = _paint([(disc & ~small & ~large, PINK)], shape)
    mask = detect_tissue(img, MPP)
    assert mask[small].all()
    assert not mask[_disc(shape, 180, 150, 20)].any()
    assert _iou(mask, disc & ~large) > 0.95


def test_area_limits_are_in_um2():
    """The same physical speck is dropped at any thumbnail resolution."""
    shape = (200, 200)
    speck = _disc(shape, 100, 100, 4)  # 49 px
    img = _paint([(speck, PINK)], shape)
    assert not detect_tissue(img, mpp=8.0).any()  # 49 * 64 µm² = 3136 µm² < 5000: dropped
    assert _iou(detect_tissue(img, mpp=16.0), speck) > 0.8  # 49 * 256 µm² = 12544 µm²: kept


@pytest.mark.parametrize("noise", [0.0, 3.0, 6.0])
def test_all_glass_is_empty(noise):
    img = _paint([], (200, 250), noise=noise)
    mask = detect_tissue(img, MPP)
    assert mask.shape == (200, 250) and not mask.any()


def test_dark_unsaturated_tissue_counts():
    shape = (200, 200)
    disc = _disc(shape, 100, 100, 60)
    mask = detect_tissue(_paint([(disc, (90, 90, 95))], shape), MPP)
    assert _iou(mask, disc) > 0.95


def test_qc_png(tmp_path):
    shape = (120, 160)
    disc = _disc(shape, 60, 80, 40)
    img = _paint([(disc, PINK)], shape)
    mask = detect_tissue(img, MPP)
    path = tmp_path / "qc" / "slide.tissue.png"
    save_tissue_qc(path, img, mask)
    assert [p.name for p in path.parent.iterdir()] == ["slide.tissue.png"]  # no temporary left behind
    qc = np.asarray(Image.open(path))
    assert qc.shape == img.shape
    green = (qc == QC_COLOR).all(axis=-1)
    ring = _disc(shape, 60, 80, 43) & ~_disc(shape, 60, 80, 37)
    assert green[ring].mean() > 0.3 and not green[~ring].any()
    assert np.array_equal(qc[~green], img[~green])
