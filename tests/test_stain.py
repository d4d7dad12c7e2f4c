"""Stain jitter: geometry kept, colour changed, seeded, identity at zero strength, exact colour maps."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import hed_from_rgb, hsv2rgb, rgb2hsv, rgb_from_hed

from sedm.stain.jitter import (StainJitter, hed_jitter_map, hsv_to_rgb, od_to_rgb, rgb_to_hsv,
                                             rgb_to_od)


@pytest.fixture
def tissue() -> np.ndarray:
    """Pink/purple tissue with white glass in one corner and a sharp edge (to see geometry moves)."""
    rng = np.random.default_rng(0)
    img = np.empty((48, 64, 3), np.uint8)
    img[:] = (200, 120, 170)
    img[:, 32:] = (120, 60, 150)
    img[:8, :8] = 255
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def test_zero_strength_is_identity():
    """Every value of every channel (a 4-level grid of the other two) plus 200k random colours."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(0, 256, 85), np.arange(0, 256, 85), indexing="ij"), -1)
    colours = np.concatenate([np.roll(grid.reshape(-1, 3), k, axis=1) for k in range(3)]
                             + [rng.integers(0, 256, (200_000, 3))]).astype(np.uint8)[None]
    out = StainJitter(0, 0, 0, 0, 0)(colours, rng)
    assert np.array_equal(out, colours)


def test_jitter_changes_colour_but_not_geometry(tissue):
    out = StainJitter(hed_sigma=0.2, hed_bias=0.1, hue=0.05, saturation=0.2, brightness=0.2)(
        tissue, np.random.default_rng(1))
    assert out.shape == tissue.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - tissue.astype(int)).mean() > 3
    # the edge between the two regions stays at column 32: colour is changed per pixel, not moved
    left, right = out[:, 24:31].astype(float).mean((0, 1)), out[:, 33:40].astype(float).mean((0, 1))
    assert np.abs(left - right).sum() > 30
    col_diff = np.abs(np.diff(out.astype(float).mean(0), axis=0)).sum(-1)
    assert int(np.argmax(col_diff)) == 31


def test_seeded(tissue):
    jitter = StainJitter(hed_sigma=0.1, hed_bias=0.05)
    a = jitter(tissue, np.random.default_rng(5))
    b = jitter(tissue, np.random.default_rng(5))
    c = jitter(tissue, np.random.default_rng(6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_hed_map_equals_jitter_in_skimage_hed_space(tissue):
    """One folded 3x3 map == scaling/shifting skimage's HED channels (same stain matrix)."""
    alpha, beta = np.array([1.1, 0.9, 1.0]), np.array([0.02, -0.03, 0.0])
    matrix, offset = hed_jitter_map(alpha, beta)
    od = rgb_to_od(tissue).astype(np.float64)
    ours = od @ matrix + offset
    ref = ((od @ hed_from_rgb) * alpha + beta) @ rgb_from_hed
    assert np.allclose(ours, ref, atol=1e-5)
    assert np.array_equal(od_to_rgb(rgb_to_od(tissue)), tissue)


def test_hsv_matches_skimage():
    rng = np.random.default_rng(2)
    rgb = rng.random((32, 32, 3))
    rgb[0, :4] = 0.5  # greys: hue and saturation 0
    assert np.allclose(rgb_to_hsv(rgb), rgb2hsv(rgb), atol=1e-12)
    hsv = rng.random((32, 32, 3))
    assert np.allclose(hsv_to_rgb(hsv), hsv2rgb(hsv), atol=1e-12)
