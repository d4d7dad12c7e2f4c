"""QuPath GeoJSON loading and window rasterisation against hand-computed masks."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon, box

from sedm.tiling.annotations import Annotation, AnnotationIndex, check_fit, class_areas, load_geojson, rasterize
from sedm.errors import InputError
from sedm.labels import IGNORE, UNANNOTATED, check_class_map, class_values

CLASSES = ["stroma", "tumor"]
STROMA, TUMOR = class_values(CLASSES)["stroma"], class_values(CLASSES)["tumor"]


# -- rasterisation --------------------------------------------------------------------------------
def test_square_with_hole_and_triangle_at_half_scale_with_offset():
    # Level-0 pixels; at scale 0.5 with offset (y0, x0) = (4, 2) the window sees
    #   square  x in [-2, 18), y in [-4, 16)  -> columns 0..17, all 16 rows
    #   hole    x in [4, 12),  y in [2, 10)   -> columns 4..11, rows 2..9
    #   triangle (20, 0), (28, 0), (20, 4): right edge x = 28 - 2y, so row i holds the centres
    #            j + 0.5 < 27 - 2i, i.e. columns 20 .. 26 - 2i for rows 0..3 (7, 5, 3, 1 pixels)
    square = Polygon([(0, 0), (40, 0), (40, 40), (0, 40)], [[(12, 12), (28, 12), (28, 28), (12, 28)]])
    triangle = Polygon([(44, 8), (60, 8), (44, 16)])
    got = rasterize([Annotation("tumor", square), Annotation("stroma", triangle)], CLASSES,
                    shape=(16, 28), scale=0.5, offset=(4, 2))
    expected = np.zeros((16, 28), dtype=np.uint8)
    expected[:, 0:18] = TUMOR
    expected[2:10, 4:12] = UNANNOTATED
    for i in range(4):
        expected[i, 20:27 - 2 * i] = STROMA
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    assert (got == TUMOR).sum() == 16 * 18 - 8 * 8 and (got == STROMA).sum() == 7 + 5 + 3 + 1


def test_multipolygon_and_class_values():
    parts = MultiPolygon([box(0, 0, 4, 4), box(6, 0, 10, 2)])
    got = rasterize([Annotation("stroma", parts), Annotation("tumor", box(0, 6, 10, 8))], CLASSES,
                    shape=(8, 10), scale=1.0)
    expected = np.zeros((8, 10), dtype=np.uint8)
    expected[0:4, 0:4] = STROMA
    expected[0:2, 6:10] = STROMA
    expected[6:8, :] = TUMOR
    np.testing.assert_array_equal(got, expected)


def test_nested_smaller_annotation_wins_regardless_of_order():
    inner, outer = Annotation("tumor", box(4, 4, 8, 8)), Annotation("stroma", box(0, 0, 12, 12))
    for anns in ([inner, outer], [outer, inner]):
        got = rasterize(anns, CLASSES, shape=(12, 12), scale=1.0)
        assert (got[4:8, 4:8] == TUMOR).all()
        assert (got == STROMA).sum() == 144 - 16


def test_hole_shows_the_annotation_beneath():
    ring = Annotation("tumor", Polygon(box(2, 2, 10, 10).exterior.coords, [box(4, 4, 8, 8).exterior.coords]))
    under = Annotation("stroma", box(0, 0, 12, 12))
    got = rasterize([ring, under], CLASSES, shape=(12, 12), scale=1.0)
    assert (got[4:8, 4:8] == STROMA).all() and (got == TUMOR).sum() == 64 - 16


def test_abutting_annotations_split_shared_pixels():
    """Centres on a shared edge belong to exactly one side (left/top closed, right/bottom open)."""
    left, right = box(0, 0, 5, 8), box(5, 0, 10, 8)
    got = rasterize([Annotation("stroma", left), Annotation("tumor", right)], CLASSES, shape=(4, 10),
                    scale=0.5, offset=(0, 0.5))  # edge x = 5 * 0.5 - 0.5 = 2 ... centres at 1.5 / 2.5: no tie
    assert (got[:, :2] == STROMA).all() and (got[:, 2:4] == TUMOR).all() and (got[:, 4:] == 0).all()
    tie = rasterize([Annotation("stroma", box(0, 0, 1.5, 2)), Annotation("tumor", box(1.5, 0, 3, 2))], CLASSES,
                    shape=(2, 3), scale=1.0)  # edge x = 1.5 passes through the centres of column 1
    assert tie[0].tolist() == [STROMA, TUMOR, TUMOR]


def test_windows_tile_the_full_raster():
    rng = np.random.default_rng(3)
    anns = []
    for k in range(40):
        cx, cy, r = rng.uniform(0, 400), rng.uniform(0, 400), rng.uniform(5, 60)
        t = np.sort(rng.uniform(0, 2 * np.pi, 12))
        anns.append(Annotation(CLASSES[k % 2], Polygon(np.c_[cx + r * np.cos(t), cy + r * np.sin(t)])))
    index = AnnotationIndex(anns, CLASSES)
    full = rasterize(index, CLASSES, shape=(240, 240), scale=0.6)
    assert len(np.unique(full)) == 3
    for y0 in range(0, 240, 64):
        for x0 in range(0, 240, 64):
            win = rasterize(index, CLASSES, shape=(64, 64), scale=0.6, offset=(y0, x0))
            np.testing.assert_array_equal(win[:240 - y0, :240 - x0], full[y0:y0 + 64, x0:x0 + 64])
    far = rasterize(index, CLASSES, shape=(32, 32), scale=0.6, offset=(5000, 5000))
    assert not far.any()


def test_pixel_centre_rule_matches_shapely():
    poly = Polygon([(3.3, 1.1), (40.7, 5.2), (30.1, 37.9), (12.4, 25.0), (2.2, 30.3)],
                   [[(15, 12), (22, 14), (18, 20)]])
    got = rasterize([Annotation("tumor", poly)], CLASSES, shape=(25, 30), scale=0.7, offset=(1.5, -2))
    jj, ii = np.meshgrid(np.arange(30), np.arange(25))
    from shapely import contains_xy

    inside = contains_xy(poly, (jj + 0.5 - 2) / 0.7, (ii + 0.5 + 1.5) / 0.7)
    np.testing.assert_array_equal(got == TUMOR, inside)


# -- GeoJSON --------------------------------------------------------------------------------------
def _feature(coords, cls=None, geom_type="Polygon", object_type="annotation"):
    props = {"objectType": object_type}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": {"type": geom_type, "coordinates": coords}, "properties": props}


SQUARE = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]
SQUARE_HOLE = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]]


def _write(tmp_path, obj, name="a.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_load_qupath_export(tmp_path, caplog):
    features = [
        _feature(SQUARE_HOLE, "tumor"),
        _feature([SQUARE, [[[20, 20], [30, 20], [30, 30], [20, 20]]]], "stroma", "MultiPolygon"),
        {"type": "Feature", "properties": {"classification": "stroma"},  # class as a string, no objectType
         "geometry": {"type": "GeometryCollection", "geometries": [
             {"type": "Polygon", "coordinates": [[[50, 50], [60, 50], [60, 60], [50, 50]]]},
             {"type": "LineString", "coordinates": [[0, 0], [5, 5]]}]}},
        _feature(SQUARE, None),  # unclassified: skipped, warned
        _feature(SQUARE, "tumor", object_type="detection"),  # a cell: skipped
        _feature([5, 5], "tumor", "Point"),  # no area: skipped
    ]
    path = _write(tmp_path, {"type": "FeatureCollection", "features": features})
    with caplog.at_level(logging.WARNING, logger="sedm.tiling.annotations"):
        anns = load_geojson(path, CLASSES)
    assert [a.class_name for a in anns] == ["tumor", "stroma", "stroma"]
    assert [a.geometry.area for a in anns] == [100 - 4, 100 + 50, 50]
    assert len(anns[0].geometry.interiors) == 1
    assert "unclassified" in caplog.text and "detection" in caplog.text
    # the same features as a bare list and a single feature
    assert len(load_geojson(_write(tmp_path, features, "list.json"), CLASSES)) == 3
    assert load_geojson(_write(tmp_path, features[0], "one.json"), CLASSES)[0].geometry.area == 96


def test_self_crossing_polygon_is_repaired(tmp_path):
    bowtie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]  # two triangles of area 25
    (ann,) = load_geojson(_write(tmp_path, [_feature(bowtie, "tumor")]), CLASSES)
    assert ann.geometry.is_valid and ann.geometry.area == pytest.approx(50)


def test_invalid_json(tmp_path):
    path = tmp_path / "bad.geojson"
    path.write_text('{"type": "FeatureCollection",\n "features": [}')
    with pytest.raises(InputError, match=r"bad\.geojson.*not valid JSON.*line 2, column"):
        load_geojson(path, CLASSES)


def test_no_polygons(tmp_path):
    path = _write(tmp_path, {"type": "FeatureCollection", "features": [_feature([1, 2], "tumor", "Point")]})
    with pytest.raises(InputError, match="no classified polygon"):
        load_geojson(path, CLASSES)
    with pytest.raises(InputError, match="no classified polygon"):
        load_geojson(_write(tmp_path, {"type": "FeatureCollection", "features": []}, "empty.json"), CLASSES)


def test_unknown_class_lists_known_ones(tmp_path):
    path = _write(tmp_path, [_feature(SQUARE, "Tumour"), _feature(SQUARE, "necrosis"), _feature(SQUARE, "tumor")])
    with pytest.raises(InputError) as e:
        load_geojson(path, CLASSES)
    msg = str(e.value)
    assert "'Tumour'" in msg and "'necrosis'" in msg and "['stroma', 'tumor']" in msg
    assert "classes" in e.value.fix and "QuPath" in e.value.fix


def test_degenerate_polygon(tmp_path):
    line_like = [[[0, 0], [10, 0], [20, 0], [0, 0]]]
    with pytest.raises(InputError, match=r"features\[0\]"):
        load_geojson(_write(tmp_path, [_feature(line_like, "tumor")]), CLASSES)


def test_not_geojson_and_missing(tmp_path):
    with pytest.raises(InputError, match="FeatureCollection"):
        load_geojson(_write(tmp_path, {"hello": 1}), CLASSES)
    with pytest.raises(InputError, match="not found"):
        load_geojson(tmp_path / "missing.geojson", CLASSES)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_coordinate_names_the_feature(tmp_path, bad):
    """shapely would repair around the NaN and drop part of the region with only a RuntimeWarning."""
    tumour = _feature([[[0, 0], [100, 0], [100, bad], [100, 100], [0, 100], [0, 0]]], "tumor")
    tumour["properties"]["name"] = "Tumor 1"
    with pytest.raises(InputError) as e:
        load_geojson(_write(tmp_path, [_feature(SQUARE, "stroma"), tumour]), CLASSES)
    assert e.value.field == "features[1].geometry"
    assert "the tumor annotation 'Tumor 1': 1 of its coordinates are not finite" in e.value.problem


# -- fit to the slide ----------------------------------------------------------------------------
TISSUE = np.zeros((100, 120), dtype=bool)  # a 1200 x 1000 px slide seen at 1/10 scale
TISSUE[20:80, 10:110] = True  # 6000 mask px of tissue


def test_annotations_of_another_slide_are_rejected():
    elsewhere = [Annotation("tumor", box(2000, 1500, 2600, 1900)), Annotation("stroma", box(1100, 100, 1300, 300))]
    with pytest.raises(InputError) as e:
        check_fit("other.geojson", elsewhere, CLASSES, (1200, 1000), TISSUE, 0.1, 0.005)
    assert e.value.file == "other.geojson"
    assert "93% of the annotated area lies outside the 1200 x 1000 px slide" in e.value.problem
    assert "another slide" in e.value.problem and "another scale" in e.value.problem


def test_annotations_that_barely_touch_the_tissue_are_rejected():
    speck = [Annotation("tumor", box(100, 200, 120, 220))]  # 2 x 2 mask px of 6000
    with pytest.raises(InputError) as e:
        check_fit("a.geojson", speck, CLASSES, (1200, 1000), TISSUE, 0.1, 0.005)
    assert "cover 0.07% of the slide's tissue, less than tiling.min_annotated_tissue (0.50%)" in e.value.problem
    assert check_fit("a.geojson", speck, CLASSES, (1200, 1000), TISSUE, 0.1, 0.0) == pytest.approx(4 / 6000)


def test_sparse_annotation_partly_beyond_the_edge_passes():
    """A few regions, one running past the slide's right edge (QuPath allows it): normal, accepted."""
    sparse = [Annotation("tumor", box(200, 300, 300, 400)), Annotation("stroma", box(1150, 300, 1250, 400))]
    share = check_fit("a.geojson", sparse, CLASSES, (1200, 1000), TISSUE, 0.1, 0.005)
    assert share == pytest.approx((100 + 0) / 6000)  # the second lies beyond the tissue (x < 1100)


# -- class_map: QuPath names to classes or "ignore" --------------------------------------------------
def test_class_map_maps_qupath_names_to_classes(tmp_path):
    path = _write(tmp_path, [_feature(SQUARE, "Tumor"), _feature(SQUARE, "Stroma"), _feature(SQUARE, "stroma")])
    anns = load_geojson(path, CLASSES, {"Tumor": "tumor", "Stroma": "stroma"})
    assert [a.class_name for a in anns] == ["tumor", "stroma", "stroma"]


def test_class_map_patterns_with_exact_keys_and_classes_first(tmp_path):
    names = ["Tumor: positive", "Tumor: negative", "Tumor: stroma-like", "Ignore*", "Ignore (pen mark)", "stroma"]
    path = _write(tmp_path, [_feature(SQUARE, n) for n in names])
    class_map = {"Tumor*": "tumor", "Tumor: stroma-like": "stroma", "Ignore*": "ignore", "*itive": "stroma"}
    with pytest.raises(InputError) as e:  # "Tumor: positive": "Tumor*" or "*itive"? Neither is more specific
        load_geojson(path, CLASSES, class_map)
    assert e.value.field == "class_map" and "'Tumor: positive'" in e.value.problem
    assert "['*itive', 'Tumor*']" in e.value.problem and "exact class_map entry for 'Tumor: positive'" in e.value.fix
    del class_map["*itive"]
    anns = load_geojson(path, CLASSES, class_map)
    assert [a.class_name for a in anns] == ["tumor", "tumor", "stroma", IGNORE, IGNORE, "stroma"]
    # the more specific pattern wins over a catch-all; a name that is a class stays that class
    assert [a.class_name for a in load_geojson(path, CLASSES, {"*": "tumor", "Ignore*": "ignore"})] == \
        ["tumor", "tumor", "tumor", IGNORE, IGNORE, "stroma"]


def test_ignore_region_takes_out_the_class_regions_it_overlaps(tmp_path):
    """An Ignore* region larger than the tumour it lies over is still drawn on top of it."""
    tumour = [[[0, 0], [6, 0], [6, 6], [0, 6], [0, 0]]]  # 36 px
    ignore = [[[3, 0], [12, 0], [12, 8], [3, 8], [3, 0]]]  # 72 px, over the tumour's right half
    path = _write(tmp_path, [_feature(tumour, "tumor"), _feature(ignore, "Ignore*")])
    anns = load_geojson(path, CLASSES, {"Ignore*": "ignore"})
    got = rasterize(anns, CLASSES, shape=(10, 14), scale=1.0)
    expected = np.full((10, 14), UNANNOTATED, dtype=np.uint8)
    expected[0:6, 0:3] = TUMOR
    np.testing.assert_array_equal(got, expected)
    # the tissue share counts what is labelled, not what is ignored: 18 of the 60 tissue px
    tissue = np.zeros((10, 14), dtype=bool)
    tissue[0:6, 0:10] = True
    assert check_fit(path, anns, CLASSES, (14, 10), tissue, 1.0, 0.0) == pytest.approx(18 / 60)


def test_only_ignored_regions_label_nothing(tmp_path):
    path = _write(tmp_path, [_feature(SQUARE, "Ignore*")])
    with pytest.raises(InputError, match="mapped to ignore"):
        load_geojson(path, CLASSES, {"Ignore*": "ignore"})


def test_unknown_class_offers_classes_and_class_map(tmp_path):
    path = _write(tmp_path, [_feature(SQUARE, "stroma"), _feature(SQUARE, "necrosis"), _feature(SQUARE, "Ignore*")])
    with pytest.raises(InputError) as e:
        load_geojson(path, CLASSES)
    assert e.value.field == "properties.classification.name"
    assert "['Ignore*', 'necrosis']" in e.value.problem and "['stroma', 'tumor']" in e.value.problem
    fix = e.value.fix
    assert fix.startswith('in the config, set class_map: {"Ignore*": ignore}')
    assert "`classes`" in fix and "class_map to one of the classes or to ignore" in fix


def test_misspelt_class_gets_a_did_you_mean(tmp_path):
    classes = ["tumour", "stroma"]
    path = _write(tmp_path, [_feature(SQUARE, "Tumor"), _feature(SQUARE, "ignore pen"), _feature(SQUARE, "fat")])
    with pytest.raises(InputError) as e:
        load_geojson(path, classes, {"Necrosis": "ignore"})
    assert "'Tumor': did you mean 'tumour'?" in e.value.problem and "'fat'" in e.value.problem
    assert "did you mean" not in e.value.problem.split("'Tumor': did you mean")[1]  # no guess for "fat"
    assert e.value.fix.startswith('add these entries to the config\'s class_map: {"ignore pen": ignore, '
                                  '"Tumor": "tumour"}')


def test_class_map_targets_must_be_classes_or_ignore(tmp_path):
    with pytest.raises(InputError) as e:
        check_class_map({"Ignore*": "ignore", "Tumor": "tumour"}, CLASSES, "config.yaml")
    assert e.value.file == "config.yaml" and e.value.field == "class_map.Tumor"
    assert "'tumour'" in e.value.problem and "did you mean 'tumor'?" in e.value.problem
    with pytest.raises(InputError, match=r"class_map\.Tumor"):
        load_geojson(_write(tmp_path, [_feature(SQUARE, "Tumor")]), CLASSES, {"Tumor": "tumour"})
    with pytest.raises(InputError) as e:
        check_class_map({}, ["tumor", "ignore"], "config.yaml")
    assert e.value.field == "classes" and "reserved" in e.value.problem


def test_class_areas_are_per_exported_name(tmp_path):
    path = _write(tmp_path, [_feature(SQUARE, "Ignore*"), _feature(SQUARE_HOLE, "Tumor"), _feature(SQUARE, "Tumor")])
    assert class_areas(path) == {"Ignore*": 100, "Tumor": 96 + 100}
