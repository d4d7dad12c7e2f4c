"""`sedm tile` and `sedm tiling-summary` on small synthetic slides.

The slide is 1100 x 1000 px at 0.5 µm/px with a textured tissue block touching its right edge, so at
the default 1 µm/px the grid has partial edge tiles (padding) and glass tiles (not written).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from sedm.cli import main
from sedm.config import validate_config
from sedm.demo.tiff import write_pyramidal_tiff
from sedm.tiling import blocks, geometry, workers
from sedm.tiling import store as store_module
from sedm.tiling.annotations import load_geojson, rasterize
from sedm.tiling.blocks import Block, TissueBand, shard_blocks, with_tissue_bands
from sedm.tiling.command import tile_slide
from sedm.tiling.geometry import Grid, nearest_index, tile_tissue_counts
from sedm.tiling.workers import run_bounded
from sedm.tiling.shards import ShardWriter, read_shard_index
from sedm.tiling.slides import open_slide
from sedm.tiling.store import SlideStore
from sedm.tiling.table import TILE_COLUMNS, fraction_columns, tile_table_path

CLASSES = ["tumour", "stroma", "necrosis"]
W0, H0, MPP0 = 1100, 1000, 0.5
TISSUE = (300, 900, 500, 1100)  # y0, y1, x0, x1 at level 0
TILE = 128


def _slide_rgb(seed: int = 0, tissue: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = (238 + rng.integers(0, 6, (H0, W0, 3))).astype(np.uint8)
    if tissue:
        y0, y1, x0, x1 = TISSUE
        shade = rng.integers(-40, 40, (y1 - y0, x1 - x0, 1))
        rgb[y0:y1, x0:x1] = np.clip(np.array([200, 110, 170]) + shade, 0, 255).astype(np.uint8)
    return rgb


def _feature(cls: str, ring: list[list[float]]) -> dict:
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": cls}}}


def _geojson(path: Path, classes: tuple[str, ...] = ("tumour", "stroma", "necrosis")) -> Path:
    feats = [
        _feature(classes[0], [[550, 320], [800, 320], [800, 600], [550, 600], [550, 320]]),
        _feature(classes[1], [[800, 600], [1000, 600], [900, 890], [800, 600]]),
        _feature(classes[2], [[950, 320], [1250, 320], [1250, 600], [950, 600], [950, 320]]),  # beyond the right edge
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def _config(**tiling_cfg) -> dict:
    return validate_config({"classes": CLASSES, "tiling": {"mpp": 1.0, "tile_size": TILE, "pyramid_levels": 3,
                                                           "threads": 2, **tiling_cfg}})


def _run(tmp: Path, slide: Path, ann: Path | None, config: dict | None = None, name: str = "s1"):
    return tile_slide(slide, slide_id=name, config=config or _config(), out=tmp / f"{name}.zarr",
                      table=tmp / f"{name}.tiles.parquet", qc=tmp / f"{name}.qc.png", annotation=ann,
                      threads=2, progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    write_pyramidal_tiff(d / "slide.tif", _slide_rgb(), MPP0, tile=128)
    write_pyramidal_tiff(d / "glass.tif", _slide_rgb(1, tissue=False), MPP0, tile=128)
    return {"slide": d / "slide.tif", "glass": d / "glass.tif", "ann": _geojson(d / "ann.geojson"),
            "bad_ann": _geojson(d / "bad.geojson", ("tumour", "stroma", "fat"))}


@pytest.fixture(scope="module")
def tiled(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiled")
    result = _run(out, inputs["slide"], inputs["ann"])
    return out / "s1.zarr", result


def _stored(store: Path, name: str) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """(tile cells whose chunk is stored, (row, shard) of every shard file) of array ``name``, read
    from the shard files and their indexes, not through zarr."""
    arr = zarr.open_array(str(store / name), mode="r")
    per = [s // c for s, c in zip(arr.shards, arr.chunks)]
    cells, shards = set(), set()
    for f in (store / name).glob("c.*"):  # chunk keys c.<i>.<j>... (sedm.tiling.store.CHUNK_KEYS)
        key = tuple(int(v) for v in f.name.split(".")[1:])
        shards.add(key[-2:])
        index = read_shard_index(f, math.prod(per))
        for flat in np.flatnonzero(index[:, 0] != np.uint64(2**64 - 1)):
            local = np.unravel_index(flat, per)
            cells.add(tuple(int(k * n + i) for k, n, i in zip(key, per, local))[-2:])
    return cells, shards


def test_store_metadata_and_provenance(tiled, inputs):
    path, result = tiled
    store = SlideStore(path)
    table = store.tiles()
    attrs = store.attrs
    assert attrs["source"] == str(inputs["slide"].resolve())
    assert attrs["annotation"] == str(inputs["ann"].resolve())
    assert attrs["has_annotations"] is True
    assert attrs["backend"] in ("openslide", "tiffslide")
    assert attrs["source_mpp"] == pytest.approx(MPP0)
    assert attrs["mpp"] == attrs["target_mpp"] == 1.0
    assert attrs["thumbnail_mpp"] == 8.0
    assert attrs["tissue"] == {"min_object_um2": 5000.0, "min_hole_um2": 5000.0}
    assert attrs["n_tiles"] == len(table) > 0
    assert (attrs["height"], attrs["width"]) == (500, 550)
    assert store.shape == (4 * TILE, 5 * TILE)  # padded to whole tiles
    root = zarr.open_group(str(path), mode="r")
    ms = root.attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [[1.0, 1.0, 1.0], [1.0, 2.0, 2.0],
                                                                                   [1.0, 4.0, 4.0]]
    assert root.attrs["ome"]["version"] == "0.5"
    assert root["labels"].attrs["ome"]["labels"] == ["annotation", "tissue"]
    assert [root[str(k)].shape for k in range(3)] == [(3, 512, 640), (3, 256, 320), (3, 128, 160)]
    assert result.fast_read and result.direct_write  # level 1 of a tiled TIFF, plain local store


def test_image_and_labels_match_direct_reads(tiled, inputs):
    path, _ = tiled
    store = SlideStore(path)
    table = store.tiles()
    annotations = load_geojson(inputs["ann"], CLASSES)
    with open_slide(inputs["slide"]) as slide:
        for _, t in table.iterrows():
            y, x = int(t.y), int(t.x)
            h, w = min(TILE, 500 - y), min(TILE, 550 - x)
            img = store.read_image(y, x, TILE, TILE)
            ref = slide.read(x, y, w, h, 1.0)
            assert np.abs(img[:h, :w].astype(int) - ref).mean() < 0.5
            assert (img[h:] == 255).all() and (img[:, w:] == 255).all()  # padding is glass
            labels = rasterize(annotations, CLASSES, shape=(h, w), scale=MPP0 / 1.0, offset=(y, x))
            stored = store.read_labels(y, x, TILE, TILE)
            np.testing.assert_array_equal(stored[:h, :w], labels)
            assert not stored[h:].any() and not stored[:, w:].any()
    assert (table["frac_necrosis"] > 0).any()  # the polygon crossing the right edge was rasterised


def test_pyramid_levels_are_2x2_means(tiled):
    path, _ = tiled
    store = SlideStore(path)
    t = store.tiles().iloc[0]
    a = store.read_image(int(t.y), int(t.x), TILE, TILE).astype(np.uint16)
    mean = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4
    l1 = store.read_image(int(t.y) // 2, int(t.x) // 2, TILE // 2, TILE // 2, level=1)
    np.testing.assert_array_equal(l1, mean)
    m = mean.astype(np.uint16)
    mean2 = (m[0::2, 0::2] + m[1::2, 0::2] + m[0::2, 1::2] + m[1::2, 1::2] + 2) // 4
    np.testing.assert_array_equal(store.read_image(int(t.y) // 4, int(t.x) // 4, TILE // 4, TILE // 4, level=2), mean2)


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_mean2x2_rounds_half_up(monkeypatch, byteorder):
    monkeypatch.setattr(geometry.sys, "byteorder", byteorder)  # the uint16-view path and the plain one
    rng = np.random.default_rng(0)
    chw = rng.integers(0, 256, (3, 64, 96), dtype=np.uint8)
    chw[:, :2, :2] = 255  # sums at the top of uint16's byte range
    a = chw.astype(np.int64)
    expected = (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2] + 2) // 4
    np.testing.assert_array_equal(geometry.mean2x2(chw), expected)
    np.testing.assert_array_equal(geometry.mean2x2(chw[:, :, :48]), expected[:, :, :24])  # a non-contiguous view


def test_only_tissue_tiles_are_written(tiled):
    path, _ = tiled
    table = SlideStore(path).tiles()
    cells = set(zip(table["row"], table["col"]))
    assert len(cells) < 4 * 5  # some glass tiles were skipped
    rows_with_tissue = {(r, 0) for r, _ in cells}  # 5 tile columns: one shard per tile row
    for k in range(3):
        assert _stored(path, str(k)) == (cells, rows_with_tissue)
    assert _stored(path, "labels/tissue/0") == (cells, {(0, 0)})  # 4 x 5 tiles: one band
    assert _stored(path, "labels/annotation/0")[0] <= cells
    # geometry: tissue spans level-0 y 300..900, x 500..1100 -> target y 150..450, x 250..550
    assert (2, 2) in cells and (0, 0) not in cells and (3, 4) in cells
    assert table.set_index(["row", "col"]).loc[(2, 2), "tissue_fraction"] == pytest.approx(1.0)
    assert (table["tissue_fraction"] >= 0.05).all()


def test_small_shards_read_back_identically(tiled, inputs, tmp_path, monkeypatch):
    """Shards of 2 tiles: several shards per row, the last one reaching past the array's edge;
    tissue bands of 2 tile rows, the last one reaching past the array's bottom."""
    path, _ = tiled
    monkeypatch.setattr(store_module, "SHARD_TILES", 2)
    monkeypatch.setattr(store_module, "TISSUE_SHARD_CHUNKS", 12)  # 5 tiles per row -> 2 rows per band
    _run(tmp_path, inputs["slide"], inputs["ann"])
    small = tmp_path / "s1.zarr"
    a, b = zarr.open_group(str(path), mode="r"), zarr.open_group(str(small), mode="r")
    assert b["0"].shards == (3, TILE, 2 * TILE) and b["labels/annotation/0"].shards == (TILE, 2 * TILE)
    assert a["labels/tissue/0"].shards == (4 * TILE, 5 * TILE) and b["labels/tissue/0"].shards == (2 * TILE, 5 * TILE)
    for name in ("0", "1", "2", "labels/annotation/0", "labels/tissue/0"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    cells = set(zip(SlideStore(small).tiles()["row"], SlideStore(small).tiles()["col"]))
    assert _stored(small, "0") == (cells, {(r, c // 2) for r, c in cells})
    assert _stored(small, "labels/tissue/0") == (cells, {(r // 2, 0) for r, _ in cells})


def test_tissue_bands_come_before_their_first_block():
    cells = [(0, 1), (0, 2), (1, 0), (3, 4), (4, 0)]
    items = list(with_tissue_bands(shard_blocks(cells, 2), cells, band_rows=2))
    assert items == [TissueBand(((0, 1), (0, 2), (1, 0))), Block(0, (1,)), Block(0, (2,)), Block(1, (0,)),
                     TissueBand(((3, 4),)), Block(3, (4,)), TissueBand(((4, 0),)), Block(4, (0,))]


def test_shard_blocks_group_cells_by_shard():
    cells = [(0, 1), (0, 2), (0, 3), (0, 4), (2, 0), (2, 1)]
    assert list(shard_blocks(cells, 2)) == [Block(0, (1,)), Block(0, (2, 3)), Block(0, (4,)), Block(2, (0, 1))]
    assert list(shard_blocks(cells, 32)) == [Block(0, (1, 2, 3, 4)), Block(2, (0, 1))]
    assert list(shard_blocks([], 4)) == []


def test_tile_table_fractions_match_store(tiled):
    path, _ = tiled
    store = SlideStore(path)
    table = store.tiles()
    assert list(table.columns) == [*TILE_COLUMNS, *fraction_columns(CLASSES)]
    assert table["row"].dtype == np.int32 and table["tissue_fraction"].dtype == np.float32
    assert list(zip(table["row"], table["col"])) == sorted(zip(table["row"], table["col"]))
    fr = table[fraction_columns(CLASSES)].to_numpy(np.float64)
    np.testing.assert_allclose(fr.sum(axis=1), 1.0, atol=1e-5)
    for _, t in table.iterrows():
        assert (t.y, t.x) == (t.row * TILE, t.col * TILE)
        labels = store.read_labels(int(t.y), int(t.x), TILE, TILE)
        counts = np.bincount(labels.ravel(), minlength=len(CLASSES) + 1) / TILE**2
        np.testing.assert_allclose(t[fraction_columns(CLASSES)].to_numpy(np.float64), counts, atol=1e-6)
        tissue = store.read_tissue(int(t.y), int(t.x), TILE, TILE)
        assert t.tissue_fraction == pytest.approx(tissue.mean(), abs=1e-6)
    assert tile_table_path(path).is_file() and (path.parent / "s1.qc.png").is_file()


def _files(store: Path) -> dict[str, bytes]:
    return {str(f.relative_to(store)): f.read_bytes() for f in sorted(store.rglob("*")) if f.is_file()}


def test_worker_processes_write_what_threads_write(tiled, inputs, tmp_path):
    """Two workers are forked processes where they can be (Linux, a directly decoded level); the
    store is byte for byte the one two threads write, the tile table the same."""
    path, by_processes = tiled
    assert by_processes.processes and by_processes.fast_read
    by_threads = tile_slide(inputs["slide"], slide_id="s1", config=_config(), out=tmp_path / "s1.zarr",
                            table=tmp_path / "s1.tiles.parquet", qc=tmp_path / "s1.qc.png", annotation=inputs["ann"],
                            threads=2, progress=False, processes=False)
    assert not by_threads.processes
    assert _files(tmp_path / "s1.zarr") == _files(path)
    pd.testing.assert_frame_equal(by_threads.table, by_processes.table)


def test_input_error_survives_pickling():
    """An InputError raised in a worker process reaches the parent whole (file, field, problem, fix)."""
    import pickle

    from sedm.errors import InputError

    err = pickle.loads(pickle.dumps(InputError("a.tif", "tiling.mpp", "too small", "use more")))
    assert (err.file, err.field, err.problem, err.fix) == ("a.tif", "tiling.mpp", "too small", "use more")
    assert str(err) == "a.tif [tiling.mpp]: too small. Fix: use more"


def test_resampled_target_matches_slide_read(inputs, tmp_path):
    """A target µm/px that is no pyramid level goes through the backend's resampling (in threads:
    slide library handles are not shared with forked workers)."""
    result = _run(tmp_path, inputs["slide"], None, _config(mpp=0.8, tile_size=64, pyramid_levels=1))
    assert not result.fast_read and not result.processes
    store = SlideStore(tmp_path / "s1.zarr")
    assert (store.attrs["height"], store.attrs["width"]) == (625, 687)  # floor(1000 * 0.5 / 0.8), ...
    t = store.tiles().iloc[len(store.tiles()) // 2]
    with open_slide(inputs["slide"]) as slide:
        ref = slide.read(int(t.x), int(t.y), 64, 64, 0.8)
    np.testing.assert_array_equal(store.read_image(int(t.y), int(t.x), 64, 64), ref)
    assert store.attrs["has_annotations"] is False and not store.read_labels(0, 0, 625, 687).any()


def test_empty_tissue_gives_empty_outputs(inputs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sedm.tiling.command"):
        result = _run(tmp_path, inputs["glass"], None)
    assert any("no tile has tissue" in r.message for r in caplog.records)
    table = pd.read_parquet(tmp_path / "s1.tiles.parquet")
    assert table.empty and list(table.columns) == [*TILE_COLUMNS, *fraction_columns(CLASSES)]
    assert table["tissue_fraction"].dtype == np.float32
    store = SlideStore(tmp_path / "s1.zarr")
    assert store.attrs["n_tiles"] == 0 and result.table.empty
    store_files = [p.relative_to(tmp_path / "s1.zarr") for p in (tmp_path / "s1.zarr").rglob("*") if p.is_file()]
    assert store_files and all(p.name == "zarr.json" for p in store_files)  # metadata only, no shard


def test_failure_midway_leaves_no_output(inputs, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = blocks.mean2x2

    def flaky(chw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(chw)

    monkeypatch.setattr(blocks, "mean2x2", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _run(tmp_path, inputs["slide"], inputs["ann"])
    assert list(tmp_path.iterdir()) == []  # no store, table, QC image nor temporaries


def test_rerun_after_kill_removes_the_killed_runs_temporaries(inputs, tmp_path):
    """kill -9 mid-tiling leaves `.s1.zarr.tmp-<host>-<pid>` (and the table's); the next run removes them."""
    import subprocess
    import sys

    from sedm import atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = [tmp_path / f".{name}.tmp-{atomic._HOST}-{dead.pid}" for name in ("s1.zarr", "s1.tiles.parquet")]
    (left[0] / "0").mkdir(parents=True)
    left[1].write_bytes(b"PAR1")
    _run(tmp_path, inputs["slide"], None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.qc.png", "s1.tiles.parquet", "s1.zarr"]


def test_bad_geojson_class_fails_before_output(inputs, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"classes": CLASSES}))
    out = tmp_path / "out"
    rc = main(["tile", "--config", str(cfg), "--slide-id", "s1", "--slide", str(inputs["slide"]),
               "--annotation", str(inputs["bad_ann"]), "--threads", "1", "--out", str(out / "s1.zarr"),
               "--table", str(out / "s1.tiles.parquet"), "--qc", str(out / "s1.qc.png")])
    assert rc == 2
    assert "fat" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("scale", "problem"), [(3.0, "lies outside the 1100 x 1000 px slide"),
                                                 (0.1, "of the slide's tissue, less than tiling.min_annotated_tissue")])
def test_annotations_of_another_scale_fail_with_no_output(inputs, tmp_path, capsys, scale, problem):
    """A QuPath export at another scale: all labels would be 0 (or nearly), and tiling exit 0 without a word."""
    doc = json.loads(inputs["ann"].read_text())
    for feat in doc["features"]:
        feat["geometry"]["coordinates"] = [[[x * scale, y * scale] for x, y in ring]
                                           for ring in feat["geometry"]["coordinates"]]
    ann = tmp_path / "scaled.geojson"
    ann.write_text(json.dumps(doc))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"classes": CLASSES, "tiling": {"tile_size": TILE}}))
    out = tmp_path / "out"
    rc = main(["tile", "--config", str(cfg), "--slide-id", "s1", "--slide", str(inputs["slide"]), "--annotation",
               str(ann), "--out", str(out / "s1.zarr"), "--table", str(out / "s1.tiles.parquet"),
               "--qc", str(out / "s1.qc.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{ann} [features]" in err and problem in err and "another scale" in err
    assert not out.exists() or not list(out.iterdir())


def test_missing_slide_is_input_error(inputs, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"classes": CLASSES}))
    rc = main(["tile", "--config", str(cfg), "--slide-id", "s1", "--slide", str(tmp_path / "nope.tif"),
               "--out", str(tmp_path / "o.zarr"), "--table", str(tmp_path / "o.parquet"), "--qc", str(tmp_path / "o.png")])
    assert rc == 2 and "not found" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json"]


def test_rerun_is_identical(tiled, inputs, tmp_path):
    path, first = tiled
    copy = tmp_path / "first.zarr"
    shutil.copytree(path, copy)
    _run(path.parent, inputs["slide"], inputs["ann"])  # overwrites the module's store in place
    a, b = zarr.open_group(str(copy), mode="r"), zarr.open_group(str(path), mode="r")
    assert dict(a.attrs) == dict(b.attrs)
    for name in ("0", "1", "2", "labels/annotation/0", "labels/tissue/0"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    pd.testing.assert_frame_equal(first.table, SlideStore(path).tiles())


def test_shard_writer_bytes_equal_zarr(tmp_path):
    from sedm.tiling.store import create_store

    def store(name: str):
        return create_store(tmp_path / name, slide_id="a", height=64, width=128, mpp=1.0, tile_size=32, levels=1,
                            classes=CLASSES, provenance={}, shard_tiles=2)

    root, ref = store("a.zarr"), store("b.zarr")
    rng = np.random.default_rng(0)
    chunks = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    glass = np.full((3, 32, 32), 255, np.uint8)
    writer = ShardWriter(root["0"], tmp_path / "a.zarr")
    assert writer.direct and writer.per_shard == (1, 1, 2)
    # shard (row 1, shard 0): both chunks; shard (row 0, shard 1): second chunk only, first is glass
    assert writer.write({(0, 1, 0): chunks[0], (0, 1, 1): chunks[1]}) == 2
    assert writer.write({(0, 0, 2): glass, (0, 0, 3): chunks[2]}) == 1
    assert writer.write({(0, 0, 0): glass}) == 0  # only the fill value: no shard file
    ref["0"][:, 32:64, 0:64] = np.concatenate([chunks[0], chunks[1]], axis=2)
    ref["0"][:, 0:32, 64:128] = np.concatenate([glass, chunks[2]], axis=2)
    for key in ("1.0", "0.1"):
        assert (tmp_path / f"a.zarr/0/c.0.{key}").read_bytes() == (tmp_path / f"b.zarr/0/c.0.{key}").read_bytes()
    assert not (tmp_path / "a.zarr/0/c.0.0.0").exists()
    got = zarr.open_array(str(tmp_path / "a.zarr/0"), mode="r")
    np.testing.assert_array_equal(got[:], ref["0"][:])
    assert (read_shard_index(tmp_path / "a.zarr/0/c.0.0.1", 2)[0] == np.uint64(2**64 - 1)).all()  # empty chunk
    with pytest.raises(ValueError, match="different shards"):
        writer.write({(0, 0, 0): chunks[0], (0, 0, 2): chunks[1]})
    labels = ShardWriter(root["labels/tissue/0"], tmp_path / "a.zarr")
    assert labels.per_shard == (2, 4)  # the tissue mask: one band of both tile rows
    # a known-constant chunk is given by its value; one equal to the fill value is not stored
    assert labels.write({(0, 2): np.ones((32, 32), np.uint8)}, constants={(0, 3): 1, (1, 0): 0}) == 2
    ref["labels/tissue/0"][0:32, 64:128] = 1
    assert (tmp_path / "a.zarr/labels/tissue/0/c.0.0").read_bytes() == \
        (tmp_path / "b.zarr/labels/tissue/0/c.0.0").read_bytes()


def test_unpacked_chunks_are_blosc_frames_every_reader_decodes(tmp_path):
    from sedm.tiling.store import create_store

    root = create_store(tmp_path / "a.zarr", slide_id="a", height=32, width=64, mpp=1.0, tile_size=32, levels=1,
                        classes=CLASSES, provenance={}, shard_tiles=2)
    smooth = np.broadcast_to(np.arange(32, dtype=np.uint8)[None, None, :], (3, 32, 32)).copy()  # lz4 packs it
    writer = ShardWriter(root["0"], tmp_path / "a.zarr")
    with writer.open((0, 0, 0)) as shard:
        shard.add((0, 0, 0), smooth)
        shard.add((0, 0, 1), smooth, unpacked=True)
    assert shard.stored == 2
    path = tmp_path / "a.zarr/0/c.0.0.0"
    (o0, n0), (o1, n1) = read_shard_index(path, 2).astype(int)
    raw = path.read_bytes()
    memcpyed = 0x02  # Blosc header byte 2: flags
    assert not raw[o0 + 2] & memcpyed and n0 < smooth.nbytes  # packed
    assert raw[o1 + 2] & memcpyed and n1 == smooth.nbytes + 16  # stored: header + the bytes
    assert raw[o1:o1 + n1] == bytes(writer._store(smooth))  # byte for byte the frame Blosc writes at clevel 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr/0"), mode="r")[:],
                                  np.concatenate([smooth, smooth], axis=2))


def test_short_writes_are_completed(tmp_path, monkeypatch):
    import os

    from sedm.tiling import shards as zarr_shards

    real = os.write  # short writes: at most 5 bytes of what was asked for, as a signal may cause
    monkeypatch.setattr(zarr_shards.os, "writev", lambda fd, views: real(fd, b"".join(map(bytes, views))[:5]))
    monkeypatch.setattr(zarr_shards, "_WRITE_BYTES", 7)  # and pieces larger than one write
    pieces = [b"abcdefgh", b"", b"ij", memoryview(np.arange(20, dtype=np.uint8).reshape(4, 5)), b"klmnopqrstuvwxyz"]
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        zarr_shards._write_all(fd, pieces)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


def test_shard_writer_falls_back_to_zarr_for_other_codecs(tmp_path):
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    arr = root.create_array("x", shape=(40, 100), chunks=(20, 20), shards=(20, 60), dtype="uint8", fill_value=0,
                            compressors=None)  # no blosc: not the layout the fast path writes
    writer = ShardWriter(arr, tmp_path / "g.zarr")
    assert not writer.direct
    rng = np.random.default_rng(1)
    a, b = rng.integers(1, 256, (2, 20, 20), dtype=np.uint8)
    assert writer.write({(1, 3): a, (1, 4): b}) == 2  # the edge shard: columns 60..120 of a 100 wide array
    expected = np.zeros((40, 100), np.uint8)
    expected[20:40, 60:80], expected[20:40, 80:100] = a, b
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "g.zarr/x"), mode="r")[:], expected)


def test_tile_tissue_counts_equal_upsampled_mask():
    rng = np.random.default_rng(3)
    mask = rng.random((23, 31)) > 0.6
    height, width, t = 150, 205, 32
    iy, ix = nearest_index(height, 1.0, 6.5, 23), nearest_index(width, 1.0, 6.5, 31)
    full = np.zeros((Grid(height, width, t).padded_height, Grid(height, width, t).padded_width), bool)
    full[:height, :width] = mask[iy[:, None], ix[None, :]]
    expected = full.reshape(5, t, 7, t).sum(axis=(1, 3))
    np.testing.assert_array_equal(tile_tissue_counts(mask, iy, ix, t, 5, 7), expected)


def test_tile_tissue_counts_random_geometries():
    """The banded integer sums against the upsampled mask, over random sizes and scales (up- and
    downsampling, partial last tiles, empty and full masks)."""
    rng = np.random.default_rng(11)
    for _ in range(100):
        th, tw = (int(v) for v in rng.integers(1, 40, 2))
        t = int(rng.choice([4, 8, 16]))
        mask = rng.random((th, tw)) < rng.choice([0.0, rng.random(), 1.0])
        target, thumb = rng.uniform(0.2, 3.0), rng.uniform(0.5, 8.0)
        height, width = (int(v) for v in rng.integers(1, 300, 2))
        iy, ix = nearest_index(height, target, thumb, th), nearest_index(width, target, thumb, tw)
        grid = Grid(height, width, t)
        full = np.zeros((grid.padded_height, grid.padded_width), np.int64)
        full[:height, :width] = mask[iy[:, None], ix[None, :]]
        expected = full.reshape(grid.rows, t, grid.cols, t).sum(axis=(1, 3))
        got = tile_tissue_counts(mask, iy, ix, t, grid.rows, grid.cols)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)


def test_in_flight_work_is_bounded():
    state = {"yielded": 0, "done": 0, "max": 0}

    def batches():
        for i in range(50):
            state["yielded"] += 1
            state["max"] = max(state["max"], state["yielded"] - state["done"])
            yield i

    def done(_):
        state["done"] += 1

    run_bounded(lambda i: i * i, batches(), threads=3, on_result=done)
    assert state["done"] == 50 and state["max"] <= 2 * 3


@pytest.mark.skipif(not workers.can_fork_workers(), reason="worker processes are forked (Linux)")
def test_forked_workers_run_an_unpicklable_function_in_order():
    import os

    parent = os.getpid()
    out = []
    used = run_bounded(lambda i: (i * i, os.getpid()), iter(range(20)), threads=2, on_result=out.append,
                        processes=True)
    assert used and [v for v, _ in out] == [i * i for i in range(20)]
    assert parent not in {pid for _, pid in out}  # the lambda ran in the (forked) workers


def test_failed_fork_falls_back_to_threads(monkeypatch):
    import concurrent.futures

    class NoFork:
        def __init__(self, *args, **kwargs):
            raise OSError("fork: resource temporarily unavailable")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", NoFork)
    out = []
    assert run_bounded(lambda i: i + 1, iter(range(5)), threads=2, on_result=out.append, processes=True) is False
    assert out == [1, 2, 3, 4, 5]


def test_tiling_summary_matches_hand_computation(tiled, inputs, tmp_path):
    path, _ = tiled
    glass_dir = tmp_path / "glass"
    _run(glass_dir, inputs["glass"], None, name="g1")
    samples = tmp_path / "samples.tsv"
    samples.write_text("slide_id\tpatient_id\tslide_path\tannotation_path\trole\n"
                       f"g1\tp2\t{inputs['glass']}\t\tunlabelled\n"
                       f"s1\tp1\t{inputs['slide']}\t{inputs['ann']}\tlabelled\n")
    out = tmp_path / "summary.tsv"
    assert main(["tiling-summary", "--samples", str(samples), "--tables", str(tile_table_path(path)),
                 str(glass_dir / "g1.tiles.parquet"), "--out", str(out)]) == 0
    summary = pd.read_csv(out, sep="\t").set_index("slide_id")
    assert list(summary.index) == ["g1", "s1"]  # sample-sheet order
    store = SlideStore(path)
    table = store.tiles()
    tissue_px = sum(int(store.read_tissue(int(t.y), int(t.x), TILE, TILE).sum()) for _, t in table.iterrows())
    s1 = summary.loc["s1"]
    assert (s1.patient_id, s1.role, s1.n_tiles, s1.width, s1.height) == ("p1", "labelled", len(table), 550, 500)
    assert s1.source_mpp == pytest.approx(0.5) and s1.target_mpp == 1.0
    assert s1.tissue_area_mm2 == pytest.approx(tissue_px * 1.0**2 / 1e6, rel=1e-5)
    for col in fraction_columns(CLASSES):
        assert s1[f"mean_{col}"] == pytest.approx(table[col].astype(float).mean(), abs=1e-5)
    g1 = summary.loc["g1"]
    assert g1.n_tiles == 0 and g1.tissue_area_mm2 == 0 and np.isnan(g1.mean_frac_tumour)


def test_corrupt_tile_is_input_error_without_output(inputs, tmp_path, capsys):
    import tifffile

    slide = tmp_path / "corrupt.tif"
    shutil.copy(inputs["slide"], slide)
    with tifffile.TiffFile(slide) as tif:  # level 1 (550 x 500) is the 1 µm/px level; tile (2, 2) is tissue
        page = tif.pages[1]
        offset = page.dataoffsets[2 * 5 + 2]
    with open(slide, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * 16)  # no JPEG start-of-image marker any more
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"classes": CLASSES, "tiling": {"tile_size": TILE}}))
    out = tmp_path / "out"
    rc = main(["tile", "--config", str(cfg), "--slide-id", "s1", "--slide", str(slide), "--threads", "2",
               "--out", str(out / "s1.zarr"), "--table", str(out / "s1.tiles.parquet"), "--qc", str(out / "s1.qc.png")])
    assert rc == 2 and "damaged" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_store_label_colours_are_the_palette(tiled):
    from sedm.labels import class_rgb

    path, _ = tiled
    colors = zarr.open_group(str(path / "labels" / "annotation"), mode="r").attrs["ome"]["image-label"]["colors"]
    assert [(c["label-value"], c["rgba"]) for c in colors] == [(v, [*class_rgb(v), 255]) for v in (1, 2, 3)]
