"""The stores sedm writes are OME-Zarr 0.5 as its reference models (ome-zarr-models) read it, strictly:
a slide's tile store is an image with label images of as many levels, a prediction a label image of
its slide at the slide's µm/px, with the class names and colours of sedm.labels."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from builders.segmentation import CLASSES, make_model_dir, tiny_config
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel
from ome_zarr_models.v05.labels import Labels

from sedm.config import validate_config
from sedm.demo.tiff import write_pyramidal_tiff
from sedm.labels import class_rgb, class_values
from sedm.segmentation.outputs import PREDICTED_LABELS
from sedm.segmentation.predict import predict
from sedm.tiling.command import tile_slide
from sedm.tiling.store import SlideStore

LEVELS = 3


def _slide(path: Path) -> Path:
    """600 x 700 px at 0.5 µm/px: glass with a tissue block."""
    rng = np.random.default_rng(0)
    rgb = (238 + rng.integers(0, 6, (600, 700, 3))).astype(np.uint8)
    rgb[100:500, 150:650] = np.clip(np.array([200, 110, 170]) + rng.integers(-40, 40, (400, 500, 1)), 0, 255)
    write_pyramidal_tiff(path, rgb, 0.5, tile=128)
    return path


def _annotation(path: Path) -> Path:
    def feature(cls, ring):
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": cls}}}

    feats = [feature("tumour", [[150, 100], [400, 100], [400, 500], [150, 500], [150, 100]]),
             feature("stroma", [[400, 100], [651, 100], [520, 497], [400, 100]])]  # slanted: every level differs
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """A slide tiled by `sedm tile` into results/tiles, and its prediction in results/predictions."""
    tmp = tmp_path_factory.mktemp("ome")
    config = validate_config({"classes": CLASSES, "tiling": {"mpp": 1.0, "tile_size": 64, "pyramid_levels": LEVELS,
                                                             "threads": 1}})
    tiles = tmp / "results" / "tiles"
    tile_slide(_slide(tmp / "s1.tif"), slide_id="s1", config=config, out=tiles / "s1.zarr",
               table=tiles / "s1.tiles.parquet", qc=tiles / "s1.qc.png", annotation=_annotation(tmp / "s1.geojson"),
               threads=1, progress=False)
    pred = tmp / "results" / "predictions" / "real" / "s1.zarr"
    predict(tiny_config(), model_dir=make_model_dir(tmp / "model"), store_path=tiles / "s1.zarr", out=pred,
            overlay=pred.with_suffix(".png"), geojson=pred.with_suffix(".geojson"))
    return {"store": tiles / "s1.zarr", "prediction": pred}


def _open(path: Path) -> zarr.Group:
    return zarr.open_group(str(path), mode="r", zarr_format=3)


def _assert_pyramid(group: zarr.Group, levels: int) -> None:
    """Every level is the level above at every other pixel."""
    full = group["0"][:]
    for k in range(1, levels):
        assert np.array_equal(group[str(k)][:], full[::2**k, ::2**k]), k


def test_tile_store_validates_as_an_image_with_its_labels(stores):
    root = _open(stores["store"])
    image = Image.from_zarr(root)  # also checks that every label image has the image's levels
    assert len(image.datasets[0]) == LEVELS
    assert image.labels is not None and image.labels.label_paths == ["annotation", "tissue"]
    Labels.from_zarr(root["labels"])
    for name in ("annotation", "tissue"):
        label = ImageLabel.from_zarr(root["labels"][name])
        assert [d.path for d in label.attributes.ome.multiscales[0].datasets] == [str(k) for k in range(LEVELS)]
        assert label.attributes.ome.image_label.source.image == "../../"
        _assert_pyramid(root["labels"][name], LEVELS)
    annotation = root["labels/annotation/0"][:]
    assert {1, 2} <= set(np.unique(annotation)) and root["labels/tissue/0"][:].any()


def test_prediction_is_a_label_image_of_its_slide(stores):
    root = _open(stores["prediction"])
    label = ImageLabel.from_zarr(root)
    store = SlideStore(stores["store"])
    slide = Image.from_zarr(_open(stores["store"]))
    # as many levels as the slide's image, at the same µm/px each
    assert [d.path for d in label.attributes.ome.multiscales[0].datasets] == [str(k) for k in range(store.levels)]
    assert [d.coordinateTransformations[0].scale for d in label.attributes.ome.multiscales[0].datasets] == \
        [d.coordinateTransformations[0].scale[1:] for d in slide.datasets[0]]
    assert [(a.name, a.unit) for a in label.attributes.ome.multiscales[0].axes] == [("y", "micrometer"),
                                                                                    ("x", "micrometer")]
    _assert_pyramid(root, store.levels)
    assert root[PREDICTED_LABELS].shape == store.shape
    # class names and colours of sedm.labels
    meta = label.attributes.ome.image_label
    values = class_values(CLASSES)
    assert {c.label_value: tuple(c.rgba) for c in meta.colors} == {v: (*class_rgb(v), 255) for v in values.values()}
    assert {p.label_value: p.model_dump()["class"] for p in meta.properties} == {v: c for c, v in values.items()}
    # linked to the slide's store by a relative path, which still holds when the results folder moves
    assert not os.path.isabs(meta.source.image)
    assert (stores["prediction"] / meta.source.image).resolve() == stores["store"].resolve()
    moved = stores["store"].parents[2] / "moved"
    shutil.copytree(stores["store"].parents[1], moved / "results")
    linked = moved / "results/predictions/real/s1.zarr" / meta.source.image
    Image.from_zarr(_open(linked))


def test_validation_is_strict(stores, tmp_path):
    """The check above can fail: label images with fewer levels than their image (what tile stores
    had before) are refused."""
    copy = shutil.copytree(stores["store"], tmp_path / "s1.zarr")
    group = zarr.open_group(str(copy / "labels" / "tissue"), mode="r+", zarr_format=3)
    ome = group.attrs["ome"]
    ome["multiscales"][0]["datasets"] = ome["multiscales"][0]["datasets"][:1]
    group.attrs["ome"] = ome
    with pytest.raises((RuntimeError, ValueError), match="levels"):
        Image.from_zarr(_open(copy))
