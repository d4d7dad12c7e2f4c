"""Diffusion training samples: same-slide styles, class balancing, determinism, unlabelled slides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from builders.diffusion import CLASSES, make_stores

from sedm.diffusion.dataset import DiffusionPatchDataset, StepSampler
from builders.toy_stores import make_toy_store
from sedm.errors import InputError
from sedm.stain.jitter import StainJitter
from sedm.tiling.store import SlideStore, create_store
from sedm.tiling.table import fraction_columns, tile_table_path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"), n=2)


def _mean_colour(store_path):
    s = SlideStore(store_path)
    img = s.read_image(0, 0, *s.shape).reshape(-1, 3).astype(float)
    tissue = s.read_tissue(0, 0, *s.shape).ravel() > 0
    return img[tissue].mean(0) / 127.5 - 1


@pytest.mark.parametrize("sampling", ["multi", "nearby"])
def test_style_patches_come_from_the_content_slide(stores, sampling):
    ds = DiffusionPatchDataset(stores, CLASSES, patch_size=32, n_style=3, style_sampling=sampling,
                               nearby_radius=48, seed=0)
    colours = [_mean_colour(p) for p in stores]
    seen = set()
    for i in range(30):
        s = ds[i]
        assert s["image"].shape == (3, 32, 32) and s["layout"].shape == (3, 32, 32)
        assert s["style"].shape == (3, 3, 32, 32) and s["style"].dtype == torch.float32
        assert torch.all(s["layout"].sum(0) == 1)
        seen.add(s["slide"])
        for patch in s["style"]:
            pixels = patch.flatten(1).T.numpy()
            c = pixels[(pixels < 0.8).any(1)].mean(0)  # ignore glass
            d = [np.linalg.norm(c - col) for col in colours]
            assert int(np.argmin(d)) == s["slide"]
    assert seen == {0, 1}


def test_nearby_styles_stay_within_radius(stores):
    ds = DiffusionPatchDataset(stores, CLASSES, patch_size=32, n_style=4, style_sampling="nearby",
                               nearby_radius=20, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        slide, y0, x0 = ds._content_labelled(rng)
        for y, x in ds._style_origins(rng, slide, y0, x0):
            assert abs((y + 16) - (y0 + 16)) <= 20 and abs((x + 16) - (x0 + 16)) <= 20


def _striped_store(path, size=256, tile=64):
    """Class 1 everywhere, class 2 only in a 24 px column strip (~9 % of the area)."""
    labels = np.ones((size, size), np.uint8)
    labels[:, 100:124] = 2
    root = create_store(path, slide_id="striped", height=size, width=size, mpp=1.0, tile_size=tile, levels=1,
                        classes=CLASSES, provenance={})
    img = np.where(labels[None] == 2, 60, 200).astype(np.uint8).repeat(3, 0)
    root["0"][:] = img
    root["labels/annotation/0"][:] = labels
    root["labels/tissue/0"][:] = 1
    rows = []
    for r in range(size // tile):
        for c in range(size // tile):
            lab = labels[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
            fr = np.bincount(lab.ravel(), minlength=3) / lab.size
            rows.append({"slide_id": "striped", "row": r, "col": c, "y": r * tile, "x": c * tile,
                         "tissue_fraction": 1.0, **dict(zip(fraction_columns(CLASSES), fr))})
    pd.DataFrame(rows).to_parquet(tile_table_path(path))
    return path


# P(patch shows stroma) = P(stroma target) + P(tumour target) * ~0.17 (16 px patch near the 24 px strip)
@pytest.mark.parametrize("weights,low,high", [
    ({"tumour": 1, "stroma": 1, "unannotated": 0}, 0.45, 0.75),  # expected ~0.59
    ({"tumour": 1, "stroma": 0, "unannotated": 0}, 0.05, 0.35),  # ~0.17: only by chance near the strip
    ({"tumour": 1, "stroma": 4, "unannotated": 0}, 0.72, 1.0),   # ~0.83
])
def test_class_balancing_follows_weights(tmp_path, weights, low, high):
    store = _striped_store(tmp_path / "striped.zarr")
    ds = DiffusionPatchDataset([store], CLASSES, patch_size=16, n_style=1, class_weights=weights, seed=1)
    total = sum(weights.values())
    np.testing.assert_allclose(ds.target_probs, [weights["unannotated"] / total, weights["tumour"] / total,
                                                 weights["stroma"] / total])
    has_stroma = np.mean([ds[i]["layout"][2].any().item() for i in range(200)])
    assert low <= has_stroma <= high


def test_unknown_class_weight_is_input_error(stores):
    with pytest.raises(InputError, match="unknown class"):
        DiffusionPatchDataset(stores, CLASSES, patch_size=32, class_weights={"tumor": 1.0})


def test_deterministic_per_seed_and_worker_independent(stores):
    a = DiffusionPatchDataset(stores, CLASSES, patch_size=32, n_style=2, seed=3)
    b = DiffusionPatchDataset(stores, CLASSES, patch_size=32, n_style=2, seed=3)
    c = DiffusionPatchDataset(stores, CLASSES, patch_size=32, n_style=2, seed=4)
    for i in (0, 5, 17):
        for key in ("image", "layout", "style"):
            assert torch.equal(a[i][key], b[i][key])
    assert not torch.equal(a[0]["image"], c[0]["image"])

    def batches(workers):
        loader = torch.utils.data.DataLoader(a, batch_size=4, sampler=StepSampler(2, 5, 4), num_workers=workers)
        return [batch["image"] for batch in loader]

    for x, y in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x, y)


def test_step_sampler_splits_global_batch_over_ranks():
    single = list(StepSampler(3, 5, 8))
    ranks = [list(StepSampler(3, 5, 8, rank=r, world=2)) for r in range(2)]
    assert single == list(range(24, 40))
    assert ranks[0][:4] + ranks[1][:4] + ranks[0][4:] + ranks[1][4:] == single
    with pytest.raises(InputError, match="divisible"):
        StepSampler(0, 1, 6, world=4)


def test_unlabelled_slides_have_unannotated_layout(stores, tmp_path):
    unl = make_toy_store(tmp_path / "u.zarr", slide_id="u", size=128, classes=CLASSES, tile_size=64, style=2)
    ds = DiffusionPatchDataset(stores, CLASSES, patch_size=32, unlabelled_stores=[unl],
                               unlabelled_fraction=1.0, seed=0)
    for i in range(5):
        s = ds[i]
        assert s["slide"] == 2
        assert torch.all(s["layout"][0] == 1) and s["layout"][1:].sum() == 0


def test_store_mismatches_are_input_errors(stores, tmp_path):
    other = make_toy_store(tmp_path / "o.zarr", slide_id="o", size=128, classes=["a", "b"], tile_size=64)
    with pytest.raises(InputError, match="differ from the config"):
        DiffusionPatchDataset([stores[0], other], CLASSES, patch_size=32)
    fine = make_toy_store(tmp_path / "f.zarr", slide_id="f", size=128, classes=CLASSES, tile_size=64, mpp=0.5)
    with pytest.raises(InputError, match="µm/px"):
        DiffusionPatchDataset([stores[0], fine], CLASSES, patch_size=32)
    with pytest.raises(InputError, match="smaller than"):
        DiffusionPatchDataset(stores, CLASSES, patch_size=512)


def test_style_jitter_restains_content_and_style_patches_alike(stores):
    """diffusion.style_jitter: one draw per sample, applied to the target and its style patches, so
    the colour change of the target is the colour change of its style patches (here a pure HSV
    value scale, whose factor can be read back from the pixels)."""
    brightness = StainJitter(hed_sigma=0.0, hed_bias=0.0, hue=0.0, saturation=0.0, brightness=0.4)
    plain = DiffusionPatchDataset(stores, CLASSES, patch_size=32, n_style=2, seed=5)
    restained = DiffusionPatchDataset(stores, CLASSES, patch_size=32, n_style=2, seed=5, style_jitter=brightness)

    def scale(before, after):  # HSV value (max over RGB) after / before, over tissue pixels that did not clip
        v0, v1 = ((before + 1) / 2).amax(-3), ((after + 1) / 2).amax(-3)
        keep = (v0 > 0.2) & (v0 < 0.7)
        return (v1[keep].sum() / v0[keep].sum()).item()

    factors = []
    for i in range(12):
        a, b = plain[i], restained[i]
        assert torch.equal(a["layout"], b["layout"]) and a["slide"] == b["slide"]  # same sample, other colours
        content = scale(a["image"], b["image"])
        style = scale(a["style"], b["style"])
        assert content == pytest.approx(style, rel=0.06)
        factors.append(content)
    assert max(factors) - min(factors) > 0.2  # a different restaining per sample
    assert 0.6 - 0.02 <= min(factors) and max(factors) <= 1.4 + 0.02


def test_tile_cache_returns_the_store_windows(tmp_path):
    """Windows cut from cached tiles equal direct store reads, across tile borders and at the slide's
    edges, and the cache stays within its byte budget."""
    from sedm.diffusion.dataset import TileCache
    from sedm.tiling.store import SlideStore

    store = SlideStore(make_stores(tmp_path, n=1, size=200, tile=64)[0])
    cache = TileCache(max_bytes=4 * 64 * 64 * 3)
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        y, x = int(rng.integers(0, 200 - h + 1)), int(rng.integers(0, 200 - w + 1))
        np.testing.assert_array_equal(cache.read(store, "image", y, x, h, w, 64), store.read_image(y, x, h, w))
        np.testing.assert_array_equal(cache.read(store, "labels", y, x, h, w, 64), store.read_labels(y, x, h, w))
        np.testing.assert_array_equal(cache.read(store, "tissue", y, x, h, w, 64), store.read_tissue(y, x, h, w))
        assert cache._bytes <= cache.max_bytes + 64 * 64 * 3
