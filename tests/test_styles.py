"""The styles stage: the lazy store view, whole-slide statistics against plain numpy, the style space,
the rank correlation against scipy, and the commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage, stats as sps
from skimage.color import rgb2gray, rgb2hed, rgb2hsv

from builders.segmentation import write_samples
from builders.toy_stores import make_toy_store
from sedm.cli import main
from sedm.errors import InputError
from sedm.evaluation.stats import DESCRIPTIVE_BELOW, spearman_bootstrap
from sedm.evaluation.style_gain import style_gain
from sedm.stain.statistics import HedAccumulator, tissue_hed
from sedm.styles.features import FEATURES
from sedm.styles.slide import style_stats
from sedm.styles.space import KIND, REAL, cohort_table, fit_space, nearest_labelled, patient_distances
from sedm.tiling.store import SlideStore

CLASSES = ["a", "b"]
TILE = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 200 x 200 px store of 32 px tiles (partial edge tiles), a glass band on the right, and a hole
    cut into the tissue mask over tissue-coloured pixels (the mask must be honoured)."""
    path = make_toy_store(tmp_path_factory.mktemp("styles") / "s1.zarr", slide_id="s1", size=200, classes=CLASSES,
                          tile_size=TILE, mpp=0.5, levels=2)
    tissue = zarr.open_group(str(path), mode="r+")["labels/tissue/0"]
    mask = tissue[:]
    mask[40:90, 10:70] = 0
    tissue[:] = mask
    return SlideStore(path)


def test_lazy_view_matches_zarr_reads(store):
    levels = store.pyramid()
    assert [lv.mpp for lv in levels] == [0.5, 1.0]
    level0, level1 = levels
    assert level0.image.shape == (200, 200, 3) and level1.image.shape == (100, 100, 3)
    assert level0.image.dtype == np.uint8
    shard = store._array("0").shards  # (3, tile, tiles per shard * tile): one dask chunk per shard
    assert level0.image.chunksize == (shard[1], min(shard[2], 200), 3)
    assert np.array_equal(level0.image[13:77, 5:150].compute(), store.read_image(13, 5, 64, 145))
    assert np.array_equal(level1.image.compute(), store.read_image(0, 0, 100, 100, level=1))
    tissue = store.lazy_tissue()
    assert tissue.chunks[:2] == level0.image.chunks[:2]  # lined up with the image, not the mask's own shards
    assert np.array_equal(tissue.compute(), store.read_tissue(0, 0, 200, 200))
    assert np.array_equal(store.lazy_labels().compute(), store.read_labels(0, 0, 200, 200))
    with pytest.raises(InputError, match="level 2"):
        store.lazy(2)


def _reference(rgb: np.ndarray, mask: np.ndarray, tile: int) -> dict:
    """The statistics by plain numpy / skimage over the whole image at once."""
    tissue = mask.astype(bool) & (rgb.min(axis=-1) < 230)
    hed = rgb2hed(rgb)[tissue]
    hsv = rgb2hsv(rgb)[tissue]
    lap = ndimage.laplace(rgb2gray(rgb))
    yy, xx = np.indices(mask.shape)
    h, w = mask.shape
    inner = (yy % tile != 0) & (yy % tile != tile - 1) & (yy != h - 1) & (xx % tile != 0) & (xx % tile != tile - 1) \
        & (xx != w - 1)
    return {"n": int(tissue.sum()), "mean": hed.mean(axis=0), "cov": np.cov(hed.T, bias=True),
            "value": (hsv[:, 2].mean(), hsv[:, 2].std()), "sat": (hsv[:, 1].mean(), hsv[:, 1].std()),
            "lap_var": lap[tissue & inner].var()}


def test_slide_statistics_match_numpy(store):
    rgb, mask = store.read_image(0, 0, 200, 200), store.read_tissue(0, 0, 200, 200)
    ref = _reference(rgb, mask, TILE)
    got = style_stats(store.path, threads=2)
    assert got["kind"] == "slide" and got["slide_id"] == "s1" and got["mpp"] == 0.5
    assert got["tissue_pixels"] == ref["n"]
    assert np.allclose(got["od_mean"], ref["mean"], rtol=1e-10, atol=1e-12)
    assert np.allclose(got["od_cov"], ref["cov"], rtol=1e-7, atol=1e-12)
    assert got["brightness"]["mean"] == pytest.approx(ref["value"][0]) and got["brightness"]["std"] == pytest.approx(
        ref["value"][1])
    assert got["saturation"]["mean"] == pytest.approx(ref["sat"][0]) and got["saturation"]["std"] == pytest.approx(
        ref["sat"][1])
    assert got["sharpness"]["laplacian_var"] == pytest.approx(ref["lap_var"], rel=1e-9)
    assert got["tissue_mm2"] == pytest.approx(ref["n"] * 0.0005**2)
    assert list(got["features"]) == list(FEATURES)
    assert got["features"]["od_std_H"] == pytest.approx(math.sqrt(ref["cov"][0, 0]))
    # the hole in the mask is honoured: counting tissue by the pixel rule alone gives more pixels
    assert got["tissue_pixels"] < int((rgb.min(axis=-1) < 230).sum())
    # one path for HED: the accumulator of the synthesis stats agrees with tissue_hed
    acc = HedAccumulator()
    acc.add(rgb[None])
    assert acc.summary()["mean"] == pytest.approx(tissue_hed(rgb).mean(axis=0).tolist())


def test_statistics_without_tissue_are_null(tmp_path):
    path = make_toy_store(tmp_path / "g.zarr", slide_id="g", size=64, classes=CLASSES, tile_size=TILE)
    zarr.open_group(str(path), mode="r+")["labels/tissue/0"][:] = 0
    got = style_stats(path)
    assert got["tissue_pixels"] == 0 and got["od_mean"] is None and got["features"]["od_mean_H"] is None


def test_synthetic_store_statistics_match_numpy(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(60, 256, size=(5, 24, 24, 3), dtype=np.uint8)
    root = zarr.open_group(str(tmp_path / "syn.zarr"), mode="w", zarr_format=3)
    root.create_array("images", data=images, chunks=(1, 24, 24, 3), shards=(2, 24, 24, 3))
    root.attrs["sedm"] = {"slide_id": "u1", "mpp": 1.0}
    got = style_stats(tmp_path / "syn.zarr")
    tissue = images.min(axis=-1) < 230
    hed = np.concatenate([rgb2hed(img)[t] for img, t in zip(images, tissue)])
    laps = np.concatenate([ndimage.laplace(rgb2gray(img))[1:-1, 1:-1][t[1:-1, 1:-1]] for img, t in zip(images, tissue)])
    assert got["kind"] == "synthetic" and got["tissue_pixels"] == int(tissue.sum())
    assert np.allclose(got["od_mean"], hed.mean(axis=0)) and np.allclose(got["od_cov"], np.cov(hed.T, bias=True))
    assert got["sharpness"]["laplacian_var"] == pytest.approx(laps.var())


def test_spearman_matches_scipy_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=14)
    y = x + rng.normal(scale=0.8, size=14)
    y[3] = y[5]  # a tie
    res = spearman_bootstrap(x, y, n_boot=500, seed=4)
    ref = sps.spearmanr(x, y)
    assert res["rho"] == pytest.approx(ref.statistic) and res["p"] == pytest.approx(ref.pvalue)
    assert res["ci95"][0] <= res["rho"] <= res["ci95"][1] and res["n"] == 14 and not res["descriptive"]
    assert spearman_bootstrap(x, y, n_boot=500, seed=4)["ci95"] == res["ci95"]
    # the vectorised bootstrap rho of every resample is scipy's rho of that resample
    idx = np.random.default_rng(4).integers(0, 14, size=(500, 14))
    boot = [sps.spearmanr(x[i], y[i]).statistic for i in idx]
    boot = np.asarray([b for b in boot if np.isfinite(b)])
    assert res["n_boot_valid"] == len(boot)
    assert res["ci95"] == pytest.approx(np.percentile(boot, [2.5, 97.5]).tolist())
    # a decreasing relation is negative, a perfect one exactly -1
    assert spearman_bootstrap(x, -x, 100, 0)["rho"] == pytest.approx(-1.0)


def test_spearman_few_patients_descriptive_and_undefined():
    few = spearman_bootstrap([0.1, 0.4, 0.2, 0.9, 0.5], [0.6, 0.7, 0.5, 0.9, 0.8], 200, 1)
    assert few["descriptive"] and 5 < DESCRIPTIVE_BELOW and "descriptive" in few["note"]
    assert few["rho"] == pytest.approx(sps.spearmanr([0.1, 0.4, 0.2, 0.9, 0.5], [0.6, 0.7, 0.5, 0.9, 0.8]).statistic)
    flat = spearman_bootstrap([1, 2, 3], [0.5, 0.5, 0.5], 100, 0)
    assert math.isnan(flat["rho"]) and "constant" in flat["note"]
    nan_pair = spearman_bootstrap([1, 2, np.nan, 4], [1, 2, 3, 4], 100, 0)
    assert nan_pair["n"] == 3


def _table(samples_path, rows):
    """A cohort table from (slide, feature vector) with the remaining features zero."""
    from sedm.config import load_samples

    samples = load_samples(samples_path)
    stats = []
    for slide, values in rows:
        feats = dict.fromkeys(FEATURES, 0.0)
        feats.update(zip(FEATURES, values))
        stats.append({"slide_id": slide, "tissue_pixels": 1, "features": feats})
    return cohort_table(samples, stats)


def test_space_distances_and_map(tmp_path):
    samples = write_samples(tmp_path / "s.tsv", [("L1", "PL1", "labelled"), ("L2", "PL2", "labelled"),
                                                 ("T1", "P1", "test"), ("T2", "P2", "test"), ("T3", "P2", "test")])
    table = _table(samples, [("L1", [0, 0]), ("L2", [1, 0]), ("T1", [0, 1]), ("T2", [3, 1]), ("T3", [1, 1])])
    space = fit_space(table, "stain")
    assert space.columns == list(FEATURES[:2])  # constant features dropped
    x = table[list(FEATURES[:2])].to_numpy(float)
    z = (x - x.mean(0)) / x.std(0)
    dist = nearest_labelled(table, space)
    assert dist["T1"] == pytest.approx(np.linalg.norm(z[2] - z[0]))
    assert dist["T2"] == pytest.approx(np.linalg.norm(z[3] - z[1]))
    assert dist["L1"] == pytest.approx(np.linalg.norm(z[0] - z[1]))  # a labelled slide: the nearest other one
    pat = patient_distances(table, space, ["T1", "T2", "T3"])
    assert pat["P2"] == pytest.approx((dist["T2"] + dist["T3"]) / 2) and set(pat.index) == {"P1", "P2"}
    xy = space.project(table)
    assert xy.shape == (5, 2) and space.explained.sum() == pytest.approx(1.0)
    assert np.allclose(np.linalg.norm(xy, axis=1), np.linalg.norm(z, axis=1))  # 2 features: PCA is a rotation
    assert fit_space(table[table[KIND] != REAL], "stain") is None
    assert fit_space(table, "embedding") is None


def test_style_gain_rank_correlation(tmp_path):
    rows = [(f"L{i}", f"PL{i}", "labelled") for i in range(2)] + [(f"T{i}", f"P{i}", "test") for i in range(6)]
    samples = write_samples(tmp_path / "s.tsv", rows)
    table = _table(samples, [("L0", [0, 0]), ("L1", [0.5, 0])] + [(f"T{i}", [i + 1, 0.2 * (i % 2)]) for i in range(6)])
    base = [0.8, 0.75, 0.7, 0.6, 0.55, 0.5]
    gain = [0.0, 0.02, 0.01, 0.05, 0.08, 0.1]  # rises with distance (patients ordered by distance)
    per_patient = pd.DataFrame({"arm": ["real"] * 6 + ["stedm"] * 6, "patient_id": [f"P{i}" for i in range(6)] * 2,
                                "macro_dice": base + [b + g for b, g in zip(base, gain)]})
    out, dist = style_gain(per_patient, table, [f"T{i}" for i in range(6)], "real", 300, 0)
    entry = out["spaces"]["stain"]
    order = [f"P{i}" for i in range(6)]
    d = dist["stain"].reindex(order)
    assert entry["arms"]["stedm"]["gain"]["rho"] == pytest.approx(sps.spearmanr(d, gain).statistic)
    assert entry["arms"]["real"]["dice"]["rho"] == pytest.approx(sps.spearmanr(d, base).statistic)
    assert "gain" not in entry["arms"]["real"]
    assert entry["arms"]["stedm"]["gain"]["descriptive"]


def test_commands_write_stats_and_table(store, tmp_path, capsys):
    samples = write_samples(tmp_path / "s.tsv", [("s1", "P1", "test"), ("s2", "P2", "labelled")])
    other = make_toy_store(tmp_path / "s2.zarr", slide_id="s2", size=96, classes=CLASSES, tile_size=TILE, style=1)
    assert main(["style-stats", "--store", str(store.path), "--out", str(tmp_path / "s1.json"), "--threads", "2"]) == 0
    assert main(["style-stats", "--store", str(other), "--out", str(tmp_path / "s2.json")]) == 0
    assert json.loads((tmp_path / "s1.json").read_text())["tissue_pixels"] > 0
    out = tmp_path / "cohort.tsv"
    assert main(["style-table", "--samples", str(samples), "--stats", str(tmp_path / "s1.json"),
                 str(tmp_path / "s2.json"), "--out", str(out)]) == 0
    table = pd.read_csv(out, sep="\t")
    assert table["slide_id"].tolist() == ["s1", "s2"] and table["role"].tolist() == ["test", "labelled"]
    assert set(FEATURES) <= set(table.columns)
    assert table["flags"].isna().all()  # no synthetic set, nothing to flag (tests/test_flags.py flags one)
    # a slide that is not in the sample sheet: one clear error, nothing written
    bad = write_samples(tmp_path / "bad.tsv", [("s2", "P2", "labelled")])
    assert main(["style-table", "--samples", str(bad), "--stats", str(tmp_path / "s1.json"),
                 "--out", str(tmp_path / "bad.tsv.out")]) == 2
    assert "slide 's1' is not in the sample sheet" in capsys.readouterr().err
    assert not (tmp_path / "bad.tsv.out").exists()
    assert main(["style-stats", "--store", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert "not a Zarr store" in capsys.readouterr().err


def test_style_embedding_is_the_mean_of_the_models_style_vectors(tmp_path):
    """Mean and spread of the encoder's vectors over the drawn patches, seeded; two differently stained
    slides get different mean vectors; a model of other classes is one clear error."""
    from builders.synthesis import CLASSES as SYN_CLASSES, make_model, make_store
    from sedm.models.io import load_model
    from sedm.seeds import rng_for
    from sedm.styles.embedding import slide_embedding
    from sedm.synthesis.style_check import encoder_fn
    from sedm.synthesis.styles import StoreStyleSource

    model = make_model(tmp_path / "model")
    pink = make_store(tmp_path / "pink.zarr", "pink", tint=(220, 120, 190))
    blue = make_store(tmp_path / "blue.zarr", "blue", tint=(120, 140, 220))
    kw = dict(classes=SYN_CLASSES, n_patches=6, seed=3, min_tissue_fraction=0.5)
    got = slide_embedding(model, pink, **kw)
    patches, _ = StoreStyleSource(pink, size=32, mpp=1.0, min_tissue_fraction=0.5).draw(
        rng_for(3, "styles", "embedding", "pink"), 6)
    ref = encoder_fn(load_model(model))(patches).astype(np.float64)
    assert got["n_patches"] == 6 and got["dim"] == ref.shape[1]
    assert np.allclose(got["mean"], ref.mean(axis=0), atol=1e-6) and np.allclose(got["std"], ref.std(axis=0), atol=1e-6)
    assert got["spread"] == pytest.approx(float(ref.std(axis=0).mean()), abs=1e-6)
    assert slide_embedding(model, pink, **kw)["mean"] == got["mean"]
    other = slide_embedding(model, blue, **kw)
    assert np.linalg.norm(np.subtract(other["mean"], got["mean"])) > 1e-3
    with pytest.raises(InputError, match="classes"):
        slide_embedding(model, pink, **{**kw, "classes": ["x", "y"]})


def test_sparse_store_skips_unwritten_shards_exactly(tmp_path):
    """Only a few shards written (the rest absent, read as glass): the statistics equal numpy's over
    the whole slide, and the dask graph has tasks for the written shards only."""
    from sedm.styles.slide import slide_sums
    from sedm.tiling.store import create_store

    path = tmp_path / "sparse.zarr"
    root = create_store(path, slide_id="sp", height=512, width=1024, mpp=0.25, tile_size=64, levels=1, classes=CLASSES,
                        provenance={}, shard_tiles=4)
    rng = np.random.default_rng(1)
    patch = np.clip(rng.normal((200, 120, 180), 20, (64, 256, 3)), 0, 255).astype(np.uint8)
    for y, x in ((64, 256), (320, 768)):
        root["0"][:, y:y + 64, x:x + 256] = np.moveaxis(patch, -1, 0)
        root["labels/tissue/0"][y:y + 64, x:x + 256] = 1
    store = SlideStore(path)
    assert [s[1:] for s in store.written_shards("0")] == [(1, 1), (5, 3)]
    ref = _reference(store.read_image(0, 0, 512, 1024), store.read_tissue(0, 0, 512, 1024), 64)
    got = style_stats(path, threads=2)
    assert got["tissue_pixels"] == ref["n"] == 2 * 64 * 256
    assert np.allclose(got["od_mean"], ref["mean"]) and np.allclose(got["od_cov"], ref["cov"])
    lazy = slide_sums(store)
    assert sum(1 for k in dict(lazy.__dask_graph__()) if "_block" in str(k)) == 2
