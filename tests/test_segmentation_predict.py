"""Whole-slide prediction: the three outputs, zeros outside tissue, valid GeoJSON, µm/px check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
import zarr
from PIL import Image
from builders.segmentation import CLASSES, make_model_dir, make_store, tiny_config
from shapely.geometry import shape

from sedm.cli import main
from sedm.errors import InputError
from sedm.segmentation.outputs import PREDICTED_LABELS, PROBABILITIES
from sedm.segmentation.predict import mask_polygons, predict
from sedm.tiling.store import SlideStore


@pytest.fixture
def slide(tmp_path):
    # 320 px at 1 µm/px from a 0.5 µm/px scan; last 64 columns glass (no tissue, no tiles listed)
    return make_store(tmp_path / "t.zarr", "t", size=320, tile=64, seed=5, glass_cols=64, source_mpp=0.5)


def test_predict_writes_prediction_overlay_and_geojson(tmp_path, slide):
    cfg = tiny_config()
    model = make_model_dir(tmp_path / "model")
    out, png, gj = tmp_path / "p.zarr", tmp_path / "p.png", tmp_path / "p.geojson"
    predict(cfg, model_dir=model, store_path=slide, out=out, overlay=png, geojson=gj)

    store = SlideStore(slide)
    root = zarr.open_group(str(out), mode="r")
    labels = root[PREDICTED_LABELS][:]
    assert labels.shape == store.shape and labels.dtype == np.uint8
    tissue = store.read_tissue(0, 0, *store.shape).astype(bool)
    assert (labels[~tissue] == 0).all()
    assert labels[tissue].min() >= 1 and labels[tissue].max() <= len(CLASSES)
    assert root.attrs["sedm"]["slide_id"] == "t" and root.attrs["sedm"]["classes"] == CLASSES

    with Image.open(png) as im:  # longest side <= overlay_max_size (100): 320 px / 4, a class legend below
        assert im.width >= 80 and im.height > 80 and im.mode == "RGB"

    doc = json.loads(gj.read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"]
    for f in doc["features"]:
        cls = f["properties"]["classification"]
        assert cls["name"] in CLASSES and len(cls["color"]) == 3
        assert f["properties"]["objectType"] == "annotation"
        geom = shape(f["geometry"])
        assert geom.geom_type == "Polygon" and geom.is_valid
        # level-0 pixels of the 0.5 µm/px scan: tissue spans x < 256 µm = 512 px
        minx, miny, maxx, maxy = geom.bounds
        assert minx >= -1 and miny >= -1 and maxx <= 2 * 256 + 1 and maxy <= 2 * 320 + 1
    # the polygons cover (about) the tissue: 256 x 320 µm = 512 x 640 level-0 px
    area = sum(shape(f["geometry"]).area for f in doc["features"])
    assert area == pytest.approx(512 * 640, rel=0.1)


def test_probabilities_are_optional_and_sum_to_one(tmp_path, slide):
    cfg = tiny_config(inference={"save_probabilities": True, "block_size": 128})
    predict(cfg, model_dir=make_model_dir(tmp_path / "m"), store_path=slide, out=tmp_path / "p.zarr",
            overlay=tmp_path / "p.png", geojson=tmp_path / "p.geojson")
    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    probs = root[PROBABILITIES][:].astype(np.float32)
    assert probs.shape == (len(CLASSES), 320, 320)
    tissue = SlideStore(slide).read_tissue(0, 0, 320, 320).astype(bool)
    assert np.allclose(probs.sum(0)[tissue], 1.0, atol=1e-2) and (probs[:, ~tissue] == 0).all()
    # the label is the most probable class (up to float16 rounding of near ties)
    labels = root[PREDICTED_LABELS][:].astype(np.int64)
    chosen = np.take_along_axis(probs, np.clip(labels - 1, 0, None)[None], 0)[0]
    assert (chosen[tissue] >= probs.max(0)[tissue] - 2e-3).all()


def test_block_size_does_not_change_labels_much(tmp_path, slide):
    """Blocks are read with half a window of context, so the block grid leaves no visible seams."""
    model = make_model_dir(tmp_path / "m")
    res = {}
    for block in (64, 1024):
        cfg = tiny_config(inference={"block_size": block, "overlap": 0.5})
        predict(cfg, model_dir=model, store_path=slide, out=tmp_path / f"{block}.zarr",
                overlay=tmp_path / f"{block}.png", geojson=tmp_path / f"{block}.geojson")
        res[block] = zarr.open_group(str(tmp_path / f"{block}.zarr"), mode="r")[PREDICTED_LABELS][:]
    assert (res[64] == res[1024]).mean() > 0.97


def test_mpp_mismatch_is_an_input_error(tmp_path, slide):
    model = make_model_dir(tmp_path / "m", mpp=0.5)
    with pytest.raises(InputError, match="µm/px"):
        predict(tiny_config(), model_dir=model, store_path=slide, out=tmp_path / "p.zarr",
                overlay=tmp_path / "p.png", geojson=tmp_path / "p.geojson")
    assert not (tmp_path / "p.zarr").exists()


def test_cli_predict(tmp_path, slide, capsys):
    import yaml

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config()))
    model = make_model_dir(tmp_path / "m")
    args = ["predict", "--config", str(cfg_path), "--store", str(slide), "--out", str(tmp_path / "p.zarr"),
            "--overlay", str(tmp_path / "p.png"), "--geojson", str(tmp_path / "p.geojson"), "--threads", "1"]
    assert main([*args, "--model", str(model)]) == 0
    assert all((tmp_path / f"p.{ext}").exists() for ext in ("zarr", "png", "geojson"))
    assert main([*args, "--model", str(make_model_dir(tmp_path / "m2", mpp=2.0))]) == 2
    assert "µm/px" in capsys.readouterr().err
    (tmp_path / "t.tiles.parquet").rename(tmp_path / "moved.parquet")  # a store copied without its table
    assert main([*args, "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert "t.tiles.parquet: the tile table of t.zarr is missing" in err and "Traceback" not in err


def test_mask_polygons_trace_regions_with_holes():
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    mask[12:18, 12:18] = False  # a hole
    mask[14:16, 14:16] = True  # an island inside the hole
    mask[0:3, 27:30] = True  # touching the border
    polys = mask_polygons(mask)
    total = shapely.union_all(polys)
    # contours run through pixel-edge midpoints, cutting 1/8 px at each convex / concave corner
    assert total.area == pytest.approx(mask.sum(), abs=0.125 * 4 * 4 + 1e-6)
    ring = [p for p in polys if len(p.interiors) == 1]
    assert len(ring) == 1 and ring[0].interiors[0].coords  # the square with its hole
    assert sum(p.area for p in polys) == pytest.approx(total.area)  # faces do not overlap
    assert mask_polygons(np.zeros((4, 4), bool)) == []
